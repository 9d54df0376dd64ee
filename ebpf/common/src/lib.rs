//! Map keys and values shared by Plumb's eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding, and addresses and ports are kept as bytes
//! in network order, so the layout is identical on both sides and no byte-order conversion can
//! be forgotten. The agent enables the `user` feature to get `aya::Pod` impls.

#![no_std]

/// Names of the maps (as pinned under the agent's bpffs directory).
pub mod maps {
    pub const AGENT: &str = "PLUMB_AGENT";
    pub const CAPTURE_V4: &str = "PLUMB_CAPTURE_V4";
    pub const CAPTURE_V6: &str = "PLUMB_CAPTURE_V6";
    pub const ORIG_BY_COOKIE: &str = "PLUMB_ORIG_BY_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "PLUMB_ORIG_BY_TUPLE";
    pub const SOCKETS: &str = "PLUMB_SOCKETS";
    pub const COUNTERS: &str = "PLUMB_COUNTERS";
    /// Every map, for pinning, cleanup and layout checks.
    pub const ALL: [&str; 7] = [
        AGENT,
        CAPTURE_V4,
        CAPTURE_V6,
        ORIG_BY_COOKIE,
        ORIG_BY_TUPLE,
        SOCKETS,
        COUNTERS,
    ];
}

/// Program names in the object.
pub mod programs {
    pub const CONNECT4: &str = "plumb_connect4";
    pub const CONNECT6: &str = "plumb_connect6";
    pub const SOCKOPS: &str = "plumb_sockops";
    pub const SK_MSG: &str = "plumb_sk_msg";
}

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// `CaptureRule::action` values.
pub const ACTION_REDIRECT: u32 = 1;
/// Never capture (an exception inside a broader rule; longest prefix wins).
pub const ACTION_EXCLUDE: u32 = 2;

/// `AgentState::flags` bits.
pub const FLAG_SK_MSG: u32 = 1;

/// Data of an IPv4 capture key: destination port then address, both network order, so the
/// LPM prefix covers the port first (16 bits) and then the address. Port 0 means any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureV4 {
    pub port: [u8; 2],
    pub addr: [u8; 4],
}

/// IPv6 counterpart of `CaptureV4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureV6 {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureRule {
    pub action: u32,
}

/// The agent's registration (index 0 of an array map). Redirection happens only while the
/// heartbeat is fresh: a dead agent stops capturing within `max_staleness_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// `bpf_ktime_get_ns()` clock (CLOCK_MONOTONIC) at the last heartbeat; 0: not registered.
    pub heartbeat_ns: u64,
    pub max_staleness_ns: u64,
    pub proxy_addr4: [u8; 4],
    pub proxy_port4: [u8; 2],
    pub proxy_port6: [u8; 2],
    pub proxy_addr6: [u8; 16],
    pub flags: u32,
    pub _pad: u32,
    /// The agent's own cgroup (its cgroup2 directory inode): connects from it are never
    /// captured, so the agent may run inside an enrolled subtree without looping.
    pub agent_cgroup_id: u64,
    /// The cgroup of the agent this one took over from (0: none): while it drains, its
    /// upstream connects must not be captured either.
    pub prev_agent_cgroup_id: u64,
}

/// An original destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub family: u32,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// A TCP connection as seen from one socket: local → remote.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub family: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
}

impl Tuple {
    pub fn reversed(&self) -> Self {
        Self {
            family: self.family,
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Indices of the per-CPU counter array.
pub mod counters {
    /// A captured connect rewritten to the proxy.
    pub const CONNECT_REDIRECTED: u32 = 0;
    /// A connect to a destination no rule captures.
    pub const CONNECT_NOT_CAPTURED: u32 = 1;
    /// A captured destination left alone because the agent is not alive (fail open).
    pub const CONNECT_NO_AGENT: u32 = 2;
    /// A connect matched by an exclude rule.
    pub const CONNECT_EXCLUDED: u32 = 3;
    /// Original destination recorded by 4-tuple at establishment.
    pub const ORIG_RECORDED: u32 = 4;
    /// Map update failures (maps full, …).
    pub const MAP_ERRORS: u32 = 5;
    /// Sockets added to the sockhash for sk_msg.
    pub const SOCKHASH_INSERTED: u32 = 6;
    /// Messages redirected socket to socket by sk_msg.
    pub const SKMSG_REDIRECTED: u32 = 7;
    /// Messages sk_msg could not redirect (peer not in the sockhash): passed normally.
    pub const SKMSG_PASSED: u32 = 8;
    pub const COUNT: u32 = 9;

    /// Stat names (under `redirect.`) in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_redirected",
        "connect_not_captured",
        "connect_no_agent",
        "connect_excluded",
        "orig_dst_recorded",
        "map_errors",
        "sockhash_inserted",
        "sk_msg_redirected",
        "sk_msg_passed",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::CaptureV4 {}
    unsafe impl aya::Pod for super::CaptureV6 {}
    unsafe impl aya::Pod for super::CaptureRule {}
    unsafe impl aya::Pod for super::AgentState {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::Tuple {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CaptureV4>(), 6);
        assert_eq!(size_of::<CaptureV6>(), 18);
        assert_eq!(size_of::<AgentState>(), 64);
        assert_eq!(size_of::<OrigDst>(), 24);
        assert_eq!(size_of::<Tuple>(), 40);
    }
}

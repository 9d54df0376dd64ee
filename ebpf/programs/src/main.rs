//! Plumb's eBPF programs.
//!
//! - `plumb_connect4` / `plumb_connect6` (cgroup/connect4, connect6): a connect to a captured
//!   destination, while the agent's heartbeat is fresh, is rewritten to the agent's proxy
//!   address; the original destination is remembered by socket cookie. Anything else is left
//!   alone: fail open.
//! - `plumb_sockops` (sockops): at establishment, moves the original destination from the
//!   cookie map to a map keyed by the connection's 4-tuple, which the agent reads at accept;
//!   with sk_msg on, adds both local ends of a proxied connection to the sockhash.
//! - `plumb_sk_msg` (sk_msg on the sockhash): moves a message straight into the peer socket's
//!   receive queue when the peer is local, skipping the TCP/IP stack.
//!
//! Per-packet facts go to per-CPU counters; only rare failures (a full map) log, through
//! aya-log.

#![no_std]
#![no_main]

use aya_ebpf::bindings::{sk_action, BPF_F_INGRESS, BPF_NOEXIST};
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns};
use aya_ebpf::macros::{cgroup_sock_addr, map, sk_msg, sock_ops};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie, LruHashMap, PerCpuArray, SockHash};
use aya_ebpf::programs::{SkMsgContext, SockAddrContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use aya_log_ebpf::error;
use plumb_ebpf_common::{
    counters, AgentState, CaptureRule, CaptureV4, CaptureV6, OrigDst, Tuple, ACTION_EXCLUDE,
    ACTION_REDIRECT, AF_INET, AF_INET6, FLAG_SK_MSG,
};

const CONNECTIONS: u32 = 65_536;

#[map(name = "PLUMB_AGENT")]
static AGENT: Array<AgentState> = Array::pinned(1, 0);

#[map(name = "PLUMB_CAPTURE_V4")]
static CAPTURE_V4: LpmTrie<CaptureV4, CaptureRule> = LpmTrie::pinned(4096, 0);

#[map(name = "PLUMB_CAPTURE_V6")]
static CAPTURE_V6: LpmTrie<CaptureV6, CaptureRule> = LpmTrie::pinned(4096, 0);

#[map(name = "PLUMB_ORIG_BY_COOKIE")]
static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(CONNECTIONS, 0);

#[map(name = "PLUMB_ORIG_BY_TUPLE")]
static ORIG_BY_TUPLE: LruHashMap<Tuple, OrigDst> = LruHashMap::pinned(CONNECTIONS, 0);

#[map(name = "PLUMB_SOCKETS")]
static SOCKETS: SockHash<Tuple> = SockHash::pinned(CONNECTIONS, 0);

#[map(name = "PLUMB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// The agent's state, if it is alive (heartbeat fresh).
#[inline(always)]
fn live_agent() -> Option<&'static AgentState> {
    let a = AGENT.get(0)?;
    if a.heartbeat_ns == 0 {
        return None;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(a.heartbeat_ns) > a.max_staleness_ns {
        return None;
    }
    Some(a)
}

/// Whether the connecting task is the agent itself, or the agent it took over from (by cgroup).
#[inline(always)]
fn from_agent(agent: &AgentState) -> bool {
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_cgroup_id() };
    (agent.agent_cgroup_id != 0 && current == agent.agent_cgroup_id)
        || (agent.prev_agent_cgroup_id != 0 && current == agent.prev_agent_cgroup_id)
}

#[inline(always)]
fn capture_v4(addr: [u8; 4], port: [u8; 2]) -> Option<u32> {
    let rule = CAPTURE_V4
        .get(Key::new(48, CaptureV4 { port, addr }))
        .or_else(|| CAPTURE_V4.get(Key::new(48, CaptureV4 { port: [0, 0], addr })))?;
    Some(rule.action)
}

#[inline(always)]
fn capture_v6(addr: [u8; 16], port: [u8; 2]) -> Option<u32> {
    let rule = CAPTURE_V6
        .get(Key::new(144, CaptureV6 { port, addr }))
        .or_else(|| CAPTURE_V6.get(Key::new(144, CaptureV6 { port: [0, 0], addr })))?;
    Some(rule.action)
}

/// What a connect should do: `None` to leave it alone.
#[inline(always)]
fn decide(action: Option<u32>) -> Option<&'static AgentState> {
    match action {
        None => {
            count(counters::CONNECT_NOT_CAPTURED);
            None
        }
        Some(ACTION_EXCLUDE) => {
            count(counters::CONNECT_EXCLUDED);
            None
        }
        Some(ACTION_REDIRECT) => match live_agent() {
            Some(a) => Some(a),
            None => {
                count(counters::CONNECT_NO_AGENT);
                None
            }
        },
        Some(_) => None,
    }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    // SAFETY: the context pointer is valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(&cookie, orig, 0).is_err() {
        count(counters::MAP_ERRORS);
        error!(ctx, "plumb: cannot record an original destination; connect left unredirected");
        return false;
    }
    true
}

#[cgroup_sock_addr(connect4)]
pub fn plumb_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context pointer; fields are readable and user_ip4/user_port writable here.
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4.to_ne_bytes();
    let port = (sa.user_port as u16).to_ne_bytes();
    let Some(agent) = decide(capture_v4(addr, port)) else {
        return 1;
    };
    if addr == agent.proxy_addr4 && port == agent.proxy_port4 || from_agent(agent) {
        return 1; // already addressed to the proxy, or the agent's own connect: never loop
    }
    let mut orig = OrigDst {
        family: AF_INET,
        port,
        ..OrigDst::default()
    };
    orig.addr[..4].copy_from_slice(&addr);
    if remember(&ctx, &orig) {
        sa.user_ip4 = u32::from_ne_bytes(agent.proxy_addr4);
        sa.user_port = u16::from_ne_bytes(agent.proxy_port4) as u32;
        count(counters::CONNECT_REDIRECTED);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn plumb_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let w = sa.user_ip6;
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    let port = (sa.user_port as u16).to_ne_bytes();
    // A v4-mapped address (::ffff:a.b.c.d) on a dual-stack socket follows the IPv4 rules.
    let mapped = w[0] == 0 && w[1] == 0 && addr[8..12] == [0, 0, 0xff, 0xff];
    let action = if mapped {
        capture_v4([addr[12], addr[13], addr[14], addr[15]], port)
    } else {
        capture_v6(addr, port)
    };
    let Some(agent) = decide(action) else {
        return 1;
    };
    if from_agent(agent) {
        return 1;
    }
    let mut orig = OrigDst {
        family: if mapped { AF_INET } else { AF_INET6 },
        port,
        ..OrigDst::default()
    };
    if mapped {
        if agent.proxy_addr4 == [0; 4] {
            return 1;
        }
        orig.addr[..4].copy_from_slice(&addr[12..16]);
        if remember(&ctx, &orig) {
            let p = agent.proxy_addr4;
            sa.user_ip6[3] = u32::from_ne_bytes(p);
            sa.user_port = u16::from_ne_bytes(agent.proxy_port4) as u32;
            count(counters::CONNECT_REDIRECTED);
        }
        return 1;
    }
    if agent.proxy_addr6 == [0; 16] || (addr == agent.proxy_addr6 && port == agent.proxy_port6) {
        return 1;
    }
    orig.addr = addr;
    if remember(&ctx, &orig) {
        let p = agent.proxy_addr6;
        sa.user_ip6 = [
            u32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
            u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_ne_bytes([p[8], p[9], p[10], p[11]]),
            u32::from_ne_bytes([p[12], p[13], p[14], p[15]]),
        ];
        sa.user_port = u16::from_ne_bytes(agent.proxy_port6) as u32;
        count(counters::CONNECT_REDIRECTED);
    }
    1
}

/// `remote_port` of sock_ops/sk_msg contexts holds the network-order port in its upper 16
/// bits on little-endian kernels (older ones: lower); take whichever half is set.
#[inline(always)]
fn remote_port_bytes(raw: u32) -> [u8; 2] {
    let b = raw.to_ne_bytes();
    if b[2] != 0 || b[3] != 0 {
        [b[2], b[3]]
    } else {
        [b[0], b[1]]
    }
}

#[inline(always)]
fn ip6_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&w[0].to_ne_bytes());
    a[4..8].copy_from_slice(&w[1].to_ne_bytes());
    a[8..12].copy_from_slice(&w[2].to_ne_bytes());
    a[12..16].copy_from_slice(&w[3].to_ne_bytes());
    a
}

const SOCK_OPS_ACTIVE_ESTABLISHED: u32 = 4;
const SOCK_OPS_PASSIVE_ESTABLISHED: u32 = 5;

#[sock_ops]
pub fn plumb_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != SOCK_OPS_ACTIVE_ESTABLISHED && op != SOCK_OPS_PASSIVE_ESTABLISHED {
        return 0;
    }
    let family = ctx.family();
    let mut t = Tuple {
        family,
        src_port: (ctx.local_port() as u16).to_be_bytes(),
        dst_port: remote_port_bytes(ctx.remote_port()),
        ..Tuple::default()
    };
    if family == AF_INET {
        t.src_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        t.dst_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else if family == AF_INET6 {
        t.src_addr = ip6_bytes(ctx.local_ip6());
        t.dst_addr = ip6_bytes(ctx.remote_ip6());
    } else {
        return 0;
    }
    let sk_msg = AGENT.get(0).is_some_and(|a| a.flags & FLAG_SK_MSG != 0);
    if op == SOCK_OPS_ACTIVE_ESTABLISHED {
        // SAFETY: valid context pointer.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied out before the entry is removed.
        let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
            return 0;
        };
        let _ = ORIG_BY_COOKIE.remove(&cookie);
        if ORIG_BY_TUPLE.insert(&t, &orig, 0).is_err() {
            count(counters::MAP_ERRORS);
            error!(&ctx, "plumb: cannot record an original destination by 4-tuple");
            return 0;
        }
        count(counters::ORIG_RECORDED);
        if sk_msg {
            insert_socket(&ctx, t);
        }
    } else if sk_msg {
        // The agent's side of a captured connection: the client recorded its tuple first.
        let Some(a) = AGENT.get(0) else { return 0 };
        let to_proxy = (family == AF_INET && t.src_addr[..4] == a.proxy_addr4 && t.src_port == a.proxy_port4)
            || (family == AF_INET6 && t.src_addr == a.proxy_addr6 && t.src_port == a.proxy_port6);
        // SAFETY: read-only lookup.
        if to_proxy && unsafe { ORIG_BY_TUPLE.get(&t.reversed()) }.is_some() {
            insert_socket(&ctx, t);
        }
    }
    0
}

#[inline(always)]
fn insert_socket(ctx: &SockOpsContext, mut t: Tuple) {
    // SAFETY: the sock_ops pointer is valid for the program's duration.
    let ops = unsafe { &mut *ctx.ops };
    if SOCKETS.update(&mut t, ops, BPF_NOEXIST as u64).is_ok() {
        count(counters::SOCKHASH_INSERTED);
    } else {
        count(counters::MAP_ERRORS);
        error!(ctx, "plumb: cannot add a socket to the sockhash; it stays on the TCP path");
    }
}

#[sk_msg]
pub fn plumb_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: valid context pointer, read-only fields.
    let md = unsafe { &*ctx.msg };
    let mut peer = Tuple {
        family: md.family,
        src_port: remote_port_bytes(md.remote_port),
        dst_port: (md.local_port as u16).to_be_bytes(),
        ..Tuple::default()
    };
    if md.family == AF_INET {
        peer.src_addr[..4].copy_from_slice(&md.remote_ip4.to_ne_bytes());
        peer.dst_addr[..4].copy_from_slice(&md.local_ip4.to_ne_bytes());
    } else {
        peer.src_addr = ip6_bytes(md.remote_ip6);
        peer.dst_addr = ip6_bytes(md.local_ip6);
    }
    // On failure the helper leaves the message untouched; passing it keeps the bytes flowing
    // through the normal stack instead of dropping them.
    if SOCKETS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == sk_action::SK_PASS as i64 {
        count(counters::SKMSG_REDIRECTED);
    } else {
        count(counters::SKMSG_PASSED);
    }
    sk_action::SK_PASS
}

/// GPL-compatible, as the kernel requires of programs that use the sockmap helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

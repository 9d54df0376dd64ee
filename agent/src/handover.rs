//! Hand-over between a running agent and its successor (upgrade without drops), in the manner
//! of Envoy's hot restart and Pingora's graceful upgrade.
//!
//! The running agent listens on a unix socket (`--upgrade-socket`). A new agent started with
//! `--takeover` connects to it and receives, as file descriptors (SCM_RIGHTS), the admin
//! socket, every listening socket and the eBPF links that attach the redirection programs to
//! the enrolled cgroups. The old agent stops serving admin at once (so probes see the new
//! agent) but keeps accepting and capturing. When the new agent has its configuration, it
//! says `Ready`; the old agent stops accepting and stops its heartbeat — without deregistering
//! or detaching — and answers `Released`. The new agent then swaps its programs into the links
//! (BPF_LINK_UPDATE, atomic), takes over the heartbeat and accepts on the same sockets: the
//! listen queues never close and capture never lapses. The old agent drains its established
//! connections and exits (or, under a supervisor that would restart it, waits for SIGTERM).
//!
//! If the new agent goes away before `Ready`, the old one resumes admin and carries on.
//!
//! Wire format: a SOCK_SEQPACKET unix socket (message boundaries kept); each message is one
//! JSON value, with its file descriptors attached in the order the message lists them.

use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bumped when the messages change incompatibly.
pub const PROTOCOL: u32 = 1;

/// File descriptors per message (the kernel's SCM_MAX_FD is 253).
const FDS_PER_MESSAGE: usize = 200;
const MAX_MESSAGE: usize = 1 << 20;

/// Which agent in a line of hand-overs this is (Envoy's hot-restart epoch and generation).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Epoch {
    /// 0 for an agent that started fresh; its successor's is 1, and so on.
    pub generation: u64,
    /// When generation 0 started (Unix milliseconds): `uptime_all_epochs`.
    pub first_started_unix_ms: u64,
}

/// A listening socket offered by the old agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfferedSocket {
    /// Listener name; `None` for the admin socket.
    pub name: Option<String>,
    /// The configured address (may have port 0) and the bound one.
    pub configured: SocketAddr,
    pub bound: SocketAddr,
}

/// An eBPF link offered by the old agent: `program` attached to `cgroup`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfferedLink {
    pub program: String,
    pub cgroup: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → old: asks for the sockets.
    Hello {
        protocol: u32,
        pid: u32,
        version: String,
        /// The successor's cgroup id: the old agent excludes it from capture at once, so
        /// the successor's own connects (to its control plane) are never proxied.
        agent_cgroup_id: u64,
        /// How long the successor may take to be ready (its initial xDS fetch timeout plus
        /// a margin); the old agent gives up and refuses after that.
        ready_within_ms: u64,
    },
    /// Old → new, possibly in several parts (`last` marks the final one); the file
    /// descriptors of `sockets` then `links` are attached in order.
    Offer {
        protocol: u32,
        pid: u32,
        version: String,
        /// The old agent's cgroup id, excluded from capture while it drains.
        agent_cgroup_id: u64,
        epoch: Epoch,
        sockets: Vec<OfferedSocket>,
        links: Vec<OfferedLink>,
        last: bool,
    },
    /// Old → new: no hand-over (another one is in progress, protocol mismatch, draining).
    Refused { reason: String },
    /// New → old: configuration in, about to take over. `capture`: the new agent takes over
    /// eBPF capture; if not (its configuration has no redirection, or redirection could not
    /// start), the old agent deregisters so captured connects go direct instead of to a
    /// port nobody serves.
    Ready { capture: bool },
    /// Old → new: stopped accepting and heartbeating; the sockets and links are the new
    /// agent's. `hosts`: what the old agent knew of its hosts' health (active checks, outlier
    /// ejections), so the successor does not send traffic back to a bad host.
    Released {
        #[serde(default)]
        hosts: Vec<HostState>,
    },
}

/// One host's health as the old agent saw it at the hand-over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    pub cluster: String,
    pub address: SocketAddr,
    /// The active health check's verdict (`None`: not checked, or not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// An outlier ejection: ms since it began, and ejections in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected: Option<(u64, u32)>,
}

/// A connected hand-over socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path {} is longer than {} bytes",
                path.display(),
                sa.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((sa, len as libc::socklen_t))
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor we own, or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a freshly created, owned descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable (or `deadline` passes).
fn wait_readable(fd: RawFd, deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the other agent did not answer in time",
                    ));
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Channel {
    /// Connects to the agent serving `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let (sa, len) = sockaddr_un(path)?;
        // SAFETY: valid socket and sockaddr_un of `len` bytes.
        cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        Ok(Self { fd })
    }

    /// Sends one message with `fds` attached.
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        let payload = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        if !fds.is_empty() {
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes, aligned for cmsghdr.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        // SAFETY: valid socket and msghdr.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one message and the descriptors attached to it. `Ok(None)`: the other side
    /// closed the connection.
    pub fn recv(&self, deadline: Option<Instant>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        wait_readable(self.fd.as_raw_fd(), deadline)?;
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut iov = libc::iovec {
            iov_base: body.as_mut_ptr().cast(),
            iov_len: body.len(),
        };
        // SAFETY: pure computation.
        let space =
            unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
                as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: plain old data; pointers outlive the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: valid socket and msghdr.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // Take ownership of every received descriptor first, so none leaks on an error below.
        let mut fds = Vec::new();
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        if n == 0 {
            return Ok(None);
        }
        if hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-over message truncated",
            ));
        }
        let msg = serde_json::from_slice(&body[..n as usize]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad hand-over message: {e}"),
            )
        })?;
        Ok(Some((msg, fds)))
    }

    /// Sends an offer, split so no message carries more than the kernel allows.
    pub fn send_offer(
        &self,
        agent_cgroup_id: u64,
        epoch: Epoch,
        sockets: &[(OfferedSocket, BorrowedFd<'_>)],
        links: &[(OfferedLink, BorrowedFd<'_>)],
    ) -> io::Result<()> {
        let mut s = sockets;
        let mut l = links;
        loop {
            let ns = s.len().min(FDS_PER_MESSAGE);
            let nl = l.len().min(FDS_PER_MESSAGE - ns);
            let (sp, srest) = s.split_at(ns);
            let (lp, lrest) = l.split_at(nl);
            let last = srest.is_empty() && lrest.is_empty();
            let msg = Message::Offer {
                protocol: PROTOCOL,
                pid: std::process::id(),
                version: crate::VERSION.into(),
                agent_cgroup_id,
                epoch,
                sockets: sp.iter().map(|(o, _)| o.clone()).collect(),
                links: lp.iter().map(|(o, _)| o.clone()).collect(),
                last,
            };
            let fds: Vec<BorrowedFd<'_>> = sp
                .iter()
                .map(|(_, f)| *f)
                .chain(lp.iter().map(|(_, f)| *f))
                .collect();
            self.send(&msg, &fds)?;
            if last {
                return Ok(());
            }
            s = srest;
            l = lrest;
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a new agent received from the old one.
#[derive(Debug)]
pub struct Inherited {
    pub channel: Channel,
    pub old_pid: u32,
    pub old_version: String,
    pub old_cgroup_id: u64,
    pub old_epoch: Epoch,
    pub admin: Option<(OfferedSocket, std::net::TcpListener)>,
    pub listeners: Vec<(OfferedSocket, std::net::TcpListener)>,
    pub links: Vec<(OfferedLink, OwnedFd)>,
}

/// How a takeover ended.
#[derive(Debug, PartialEq)]
pub enum Finish {
    /// The old agent stopped accepting and capturing: everything is this agent's, and so
    /// is what it knew of its hosts' health.
    Released(Vec<HostState>),
    /// The old agent carries on (it gave up waiting, or is draining): this agent must not
    /// serve, and stops.
    Refused(String),
    /// The old agent went away (or hung) without answering: nobody else serves, take over.
    Gone(String),
}

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Nothing is serving the upgrade socket: start normally.
    #[error("no agent serves {0}")]
    NoAgent(PathBuf),
    #[error("takeover through {path}: {reason}")]
    Failed { path: PathBuf, reason: String },
}

/// Connects to the agent serving `path` and receives its sockets and links.
pub fn take_over(
    path: &Path,
    timeout: Duration,
    agent_cgroup_id: u64,
    ready_within: Duration,
) -> Result<Inherited, TakeoverError> {
    let failed = |reason: String| TakeoverError::Failed {
        path: path.to_path_buf(),
        reason,
    };
    let channel = match Channel::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(TakeoverError::NoAgent(path.to_path_buf()));
        }
        Err(e) => return Err(failed(format!("cannot connect: {e}"))),
    };
    channel
        .send(
            &Message::Hello {
                protocol: PROTOCOL,
                pid: std::process::id(),
                version: crate::VERSION.into(),
                agent_cgroup_id,
                ready_within_ms: ready_within.as_millis() as u64,
            },
            &[],
        )
        .map_err(|e| failed(format!("cannot send hello: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut inherited = Inherited {
        channel,
        old_pid: 0,
        old_version: String::new(),
        old_cgroup_id: 0,
        old_epoch: Epoch::default(),
        admin: None,
        listeners: Vec::new(),
        links: Vec::new(),
    };
    loop {
        let (msg, fds) = match inherited.channel.recv(Some(deadline)) {
            Ok(Some(m)) => m,
            Ok(None) => return Err(failed("the old agent closed the connection".into())),
            Err(e) => return Err(failed(e.to_string())),
        };
        match msg {
            Message::Offer {
                protocol,
                pid,
                version,
                agent_cgroup_id,
                epoch,
                sockets,
                links,
                last,
            } => {
                if protocol != PROTOCOL {
                    return Err(failed(format!(
                        "the old agent speaks hand-over protocol {protocol}, this one {PROTOCOL}"
                    )));
                }
                if fds.len() != sockets.len() + links.len() {
                    return Err(failed(format!(
                        "offer lists {} sockets and {} links but carries {} descriptors",
                        sockets.len(),
                        links.len(),
                        fds.len()
                    )));
                }
                inherited.old_pid = pid;
                inherited.old_version = version;
                inherited.old_cgroup_id = agent_cgroup_id;
                inherited.old_epoch = epoch;
                let mut fds = fds.into_iter();
                for s in sockets {
                    let fd = fds.next().expect("counted above");
                    let l = std::net::TcpListener::from(fd);
                    l.set_nonblocking(true)
                        .map_err(|e| failed(format!("socket {}: {e}", s.bound)))?;
                    if s.name.is_none() {
                        inherited.admin = Some((s, l));
                    } else {
                        inherited.listeners.push((s, l));
                    }
                }
                for l in links {
                    inherited
                        .links
                        .push((l, fds.next().expect("counted above")));
                }
                if last {
                    return Ok(inherited);
                }
            }
            Message::Refused { reason } => {
                return Err(failed(format!("the old agent refused: {reason}")))
            }
            other => return Err(failed(format!("unexpected message {other:?}"))),
        }
    }
}

impl Inherited {
    /// Tells the old agent this one is ready and waits until it has stopped accepting and
    /// heartbeating.
    pub fn finish(&self, capture: bool, timeout: Duration) -> Finish {
        // Even if the send fails, a refusal the old agent sent before closing is still
        // waiting to be read.
        let sent = self.channel.send(&Message::Ready { capture }, &[]);
        match self.channel.recv(Some(Instant::now() + timeout)) {
            Ok(Some((Message::Released { hosts }, _))) => Finish::Released(hosts),
            Ok(Some((Message::Refused { reason }, _))) => Finish::Refused(reason),
            Ok(Some((other, _))) => Finish::Gone(format!("unexpected answer to ready: {other:?}")),
            Ok(None) => Finish::Gone(match sent {
                Err(e) => format!("cannot send ready: {e}"),
                Ok(()) => "the old agent closed the connection".into(),
            }),
            Err(e) => Finish::Gone(e.to_string()),
        }
    }

    /// Takes the inherited listening socket for a listener, if one matches: same name and
    /// configured address, or the same concrete bound address.
    pub fn take_listener(
        list: &mut Vec<(OfferedSocket, std::net::TcpListener)>,
        name: &str,
        configured: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let i = list.iter().position(|(o, _)| {
            (o.name.as_deref() == Some(name) && o.configured == configured)
                || (configured.port() != 0 && o.bound == configured)
        })?;
        Some(list.swap_remove(i).1)
    }
}

/// The running agent's end: a listening SOCK_SEQPACKET socket at `path`.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    pub path: PathBuf,
    /// Inode of the socket file this listener created.
    inode: u64,
}

impl Listener {
    /// Binds `path` (a stale socket file there is replaced), owner-only. The file appears
    /// only once the socket listens (bound under a temporary name, then renamed): a
    /// successor that finds it can hand-shake, never meets a refused connect and mistakes
    /// it for "no agent running".
    pub fn bind(path: &Path) -> io::Result<Self> {
        Self::bind_then(path, || {})
    }

    /// `bind`, calling `listening` once the socket listens, before its file appears.
    pub fn bind_then(path: &Path, listening: impl FnOnce()) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A name of its own (agents in other PID namespaces may share the directory). A
        // path too long for the suffix is bound directly: its file then exists a moment
        // before the socket listens.
        let tmp = Some(temporary_name(path)).filter(|t| sockaddr_un(t).is_ok());
        let at = match &tmp {
            Some(t) => t.as_path(),
            None => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                path
            }
        };
        let fd = seqpacket()?;
        let (sa, len) = sockaddr_un(at)?;
        // SAFETY: valid socket and address.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        let placed = (|| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600))?;
            // SAFETY: valid bound socket.
            cvt(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
            listening();
            // Replaces a file at `path` (a predecessor's, or a stale one) in one step.
            match &tmp {
                Some(t) => std::fs::rename(t, path),
                None => Ok(()),
            }
        })();
        if let Err(e) = placed {
            let _ = std::fs::remove_file(at);
            return Err(e);
        }
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(path)?.ino();
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            inode,
        })
    }

    /// Accepts one connection; `Ok(None)` if none came before `deadline`.
    pub fn accept(&self, deadline: Instant) -> io::Result<Option<Channel>> {
        match wait_readable(self.fd.as_raw_fd(), Some(deadline)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e),
        }
        // SAFETY: valid listening socket; no peer address wanted.
        let fd = cvt(unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: accept4 returned a new descriptor we own.
        Ok(Some(Channel {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// Whether `path` still names this socket (a successor replaces it with its own).
    pub fn still_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode)
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/handover_message.rs`): a message body as received on the
/// upgrade socket. What decodes must encode and decode back to itself.
#[doc(hidden)]
pub fn fuzz_message(data: &[u8]) {
    if data.len() > MAX_MESSAGE {
        return;
    }
    if let Ok(msg) = serde_json::from_slice::<Message>(data) {
        let again = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: Message = serde_json::from_slice(&again).expect("an encoded message decodes");
        assert_eq!(back, msg);
    }
}

/// `path` with a suffix of this process and a random part, in the same directory.
fn temporary_name(path: &Path) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut t = path.as_os_str().to_owned();
    t.push(format!(".{}.{:08x}", std::process::id(), random as u32));
    PathBuf::from(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_descriptors_in_order() {
        let dir = std::env::temp_dir().join(format!("plumb-handover-{}", std::process::id()));
        let path = dir.join("u.sock");
        let server = Listener::bind(&path).unwrap();
        let client = Channel::connect(&path).unwrap();
        let peer = server
            .accept(Instant::now() + Duration::from_secs(5))
            .unwrap()
            .unwrap();
        // 250 sockets: more than one message can carry.
        let socks: Vec<std::net::TcpListener> = (0..250)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let offered: Vec<(OfferedSocket, BorrowedFd<'_>)> = socks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let a = s.local_addr().unwrap();
                (
                    OfferedSocket {
                        name: (i > 0).then(|| format!("l{i}")),
                        configured: "127.0.0.1:0".parse().unwrap(),
                        bound: a,
                    },
                    s.as_fd(),
                )
            })
            .collect();
        let link_file = std::fs::File::open("/dev/null").unwrap();
        let links = [(
            OfferedLink {
                program: "p".into(),
                cgroup: "/sys/fs/cgroup/x".into(),
            },
            link_file.as_fd(),
        )];
        std::thread::scope(|s| {
            s.spawn(|| {
                let (hello, _) = peer.recv(None).unwrap().unwrap();
                assert!(matches!(hello, Message::Hello { .. }));
                let epoch = Epoch {
                    generation: 3,
                    first_started_unix_ms: 1,
                };
                peer.send_offer(7, epoch, &offered, &links).unwrap();
            });
            client
                .send(
                    &Message::Hello {
                        protocol: PROTOCOL,
                        pid: 1,
                        version: "t".into(),
                        agent_cgroup_id: 0,
                        ready_within_ms: 0,
                    },
                    &[],
                )
                .unwrap();
            let mut got = Vec::new();
            let mut got_links = 0;
            loop {
                let (m, fds) = client
                    .recv(Some(Instant::now() + Duration::from_secs(5)))
                    .unwrap()
                    .unwrap();
                let Message::Offer {
                    sockets,
                    links,
                    last,
                    agent_cgroup_id,
                    epoch,
                    ..
                } = m
                else {
                    panic!("{m:?}")
                };
                assert_eq!(agent_cgroup_id, 7);
                assert_eq!(epoch.generation, 3);
                assert_eq!(fds.len(), sockets.len() + links.len());
                assert!(fds.len() <= FDS_PER_MESSAGE);
                for (o, fd) in sockets.into_iter().zip(fds) {
                    // The received descriptor is the same socket: same bound address.
                    let l = std::net::TcpListener::from(fd);
                    assert_eq!(l.local_addr().unwrap(), o.bound);
                    got.push(o);
                }
                got_links += links.len();
                if last {
                    break;
                }
            }
            assert_eq!(got.len(), 250);
            assert_eq!(got_links, 1);
        });
        assert!(server.still_ours());
        // A successor binding the same path replaces the file.
        let successor = Listener::bind(&path).unwrap();
        assert!(!server.still_ours());
        assert!(successor.still_ours());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The socket's file appears only once it listens (a successor that finds it never
    /// meets a refused connect), and it replaces a stale file in one step.
    #[test]
    fn the_socket_file_appears_once_it_listens() {
        let dir = std::env::temp_dir().join(format!("plumb-appears-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.sock");
        std::fs::write(&path, b"stale").unwrap();
        let stale = std::fs::metadata(&path).unwrap();
        let l = Listener::bind_then(&path, || {
            // Listening now; the path still names the old file.
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), stale.ino());
        })
        .unwrap();
        assert!(l.still_ours());
        let _client = Channel::connect(&path).expect("a connect right after bind");
        assert!(l
            .accept(Instant::now() + Duration::from_secs(5))
            .unwrap()
            .is_some());
        // Nothing left behind but the socket itself.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["u.sock"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn taking_over_nothing_is_not_an_error() {
        let path = std::env::temp_dir().join(format!("plumb-none-{}.sock", std::process::id()));
        assert!(matches!(
            take_over(&path, Duration::from_secs(1), 0, Duration::ZERO),
            Err(TakeoverError::NoAgent(_))
        ));
    }

    #[test]
    fn listeners_match_by_name_or_concrete_address() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut list = vec![
            (
                OfferedSocket {
                    name: Some("a".into()),
                    configured: "127.0.0.1:0".parse().unwrap(),
                    bound: aa,
                },
                a,
            ),
            (
                OfferedSocket {
                    name: Some("b".into()),
                    configured: ba,
                    bound: ba,
                },
                b,
            ),
        ];
        // Another name at port 0 does not match "a".
        assert!(Inherited::take_listener(&mut list, "c", "127.0.0.1:0".parse().unwrap()).is_none());
        // Renamed but the same concrete address: matches.
        let got = Inherited::take_listener(&mut list, "renamed", ba).unwrap();
        assert_eq!(got.local_addr().unwrap(), ba);
        let got = Inherited::take_listener(&mut list, "a", "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(got.local_addr().unwrap(), aa);
        assert!(list.is_empty());
    }
}

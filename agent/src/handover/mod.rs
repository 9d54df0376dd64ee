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

mod channel;
pub use channel::{Channel, Listener};

/// Bumped when the messages change incompatibly.
pub const PROTOCOL: u32 = 1;

/// File descriptors per message (the kernel's SCM_MAX_FD is 253).
pub(crate) const FDS_PER_MESSAGE: usize = 200;
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

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

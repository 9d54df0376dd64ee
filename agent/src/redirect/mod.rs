//! eBPF socket redirection: loads Plumb's programs (aya), fills their maps from the config,
//! attaches them to the enrolled cgroups, keeps the agent's heartbeat fresh, answers
//! original-destination lookups at accept, exports the programs' counters as stats, and
//! detaches and unpins on a clean exit.
//!
//! Fail open: programs redirect only while the heartbeat is younger than `fail_open_after`;
//! a clean exit clears it at once, and a killed agent's links close with its file
//! descriptors, detaching the programs.

use crate::config::{CaptureRule, Listener, RedirectConfig};
use crate::handover::OfferedLink;
use crate::stats::{Counter, Gauge, Store};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, SockHash};
use aya::programs::SkMsg;
use aya::{Ebpf, EbpfLoader};
use plumb_ebpf_common::{
    counters, maps, programs, AgentState, CaptureRule as RawRule, CaptureV4, CaptureV6, OrigDst,
    Tuple, ACTION_EXCLUDE, ACTION_REDIRECT, AF_INET, AF_INET6, FLAG_SK_MSG,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod cgroup;
mod rules;
mod sys;

pub use cgroup::{cgroup2_root, own_cgroup, own_cgroup_id};
pub use rules::capture_rules;
pub use sys::so_original_dst;
#[allow(unused_imports)]
use {cgroup::*, rules::*, sys::*};

/// Why redirection is not running.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("eBPF object not found (looked in: {0}); build it with `cargo xtask build-ebpf` or set bpf_object")]
    NoObject(String),
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RedirectError + '_ {
    move |e| RedirectError::Setup(format!("{what}: {e}"))
}

/// `redirect.*` stats.
struct RedirectStats {
    active: Arc<Gauge>,
    conflicting_programs: Arc<Gauge>,
    kernel: Vec<Arc<Counter>>,
    orig_dst_found: Arc<Counter>,
    orig_dst_missing: Arc<Counter>,
}

/// Running redirection. Dropping it without `shutdown` still detaches (links close) but
/// leaves the maps pinned.
pub struct Redirector {
    config: RedirectConfig,
    ebpf: Mutex<Option<Ebpf>>,
    orig_by_tuple: HashMap<MapData, Tuple, OrigDst>,
    counters: PerCpuArray<MapData, u64>,
    agent: Mutex<Array<MapData, AgentState>>,
    capture: Mutex<CaptureMaps>,
    state: AgentState,
    stats: RedirectStats,
    stop: Arc<AtomicBool>,
    /// Set by `activate` once the proxy serves; heartbeats run only while set.
    active: AtomicBool,
    pinned: Vec<PathBuf>,
    /// The cgroup attachments (bpf_link fds); dropping one detaches its program unless a
    /// successor holds a duplicate.
    links: Mutex<Vec<CgroupLink>>,
    /// Handed over to a successor (or a takeover abandoned): stop without writing the shared
    /// maps, deregistering, detaching or unpinning.
    released: AtomicBool,
    /// Capture rules to write at `activate` (taking over: until then the previous agent's
    /// rules stay in force); `None` once written directly.
    deferred_rules: Mutex<Option<Vec<CaptureRule>>>,
    /// A successor's cgroup, excluded from capture while it starts.
    successor_cgroup_id: AtomicU64,
    /// Link descriptors were offered to a successor that has not answered yet: a shutdown
    /// meanwhile must not unpin the maps it is loading.
    offered: AtomicBool,
    /// Held so its fd stays open while programs that use it load and run.
    _sockets: Option<SockHash<MapData, Tuple>>,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One program attached to one cgroup through a bpf_link.
#[derive(Debug)]
struct CgroupLink {
    program: &'static str,
    cgroup: PathBuf,
    fd: OwnedFd,
    /// Received from the agent this one took over; still runs that agent's program until
    /// `activate` swaps this one's in.
    inherited: bool,
}

/// What a new agent takes over from the old one's redirection.
#[derive(Debug, Default)]
pub struct InheritedRedirect {
    pub links: Vec<(OfferedLink, OwnedFd)>,
    /// The old agent's cgroup id: its connects stay uncaptured while it drains.
    pub agent_cgroup_id: u64,
}

/// Default places to look for the object: next to the binary's target dir (development
/// builds), then the system location of packages.
pub fn default_object_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("PLUMB_BPF_OBJECT") {
        v.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join("plumb.bpf.o"));
            // target/<profile>/plumb → target/bpf/plumb.bpf.o
            if let Some(target) = dir.parent() {
                v.push(target.join("bpf/plumb.bpf.o"));
            }
        }
    }
    v.push(PathBuf::from("/usr/lib/plumb/plumb.bpf.o"));
    v
}

impl Redirector {
    /// Loads, fills and attaches everything. `proxy_port` is the redirect listener's port.
    pub fn start(
        cfg: &RedirectConfig,
        listeners: &[Arc<Listener>],
        proxy_port: u16,
        store: &Store,
        mut inherited: Option<InheritedRedirect>,
    ) -> Result<Arc<Self>, RedirectError> {
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(RedirectError::Setup(format!(
                "missing capabilities {}: loading eBPF programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
                missing.join(", ")
            )));
        }
        let object = match &cfg.bpf_object {
            Some(p) => p.clone(),
            None => {
                let candidates = default_object_paths();
                candidates
                    .iter()
                    .find(|p| p.is_file())
                    .cloned()
                    .ok_or_else(|| {
                        RedirectError::NoObject(
                            candidates
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                        )
                    })?
            }
        };
        let root = cgroup2_root()
            .ok_or_else(|| RedirectError::Setup("no cgroup2 hierarchy is mounted".into()))?;
        for cg in &cfg.cgroups {
            if !cg.starts_with(&root) {
                return Err(RedirectError::Setup(format!(
                    "{} is not inside the cgroup2 hierarchy mounted at {}",
                    cg.display(),
                    root.display()
                )));
            }
            if !cg.is_dir() {
                return Err(RedirectError::Setup(format!(
                    "cgroup {} does not exist",
                    cg.display()
                )));
            }
        }
        // The agent's own connections must never be captured: the programs skip its cgroup
        // (by id), which must therefore be its own — not shared with workloads.
        let own = own_cgroup();
        let agent_cgroup_id = own.as_deref().map(cgroup_id).unwrap_or(0);
        if own.is_none() {
            return Err(RedirectError::Setup(format!(
                "cannot find this agent's own cgroup under {} (from /proc/self/cgroup, or by searching for its pid): its own connects could be captured; mount the host's cgroup2 hierarchy",
                root.display()
            )));
        }
        if let Some(own) = &own {
            if let Some(cg) = cfg.cgroups.iter().find(|cg| *cg == own) {
                return Err(RedirectError::Setup(format!(
                    "the agent runs in enrolled cgroup {} itself, together with the workloads it captures; run it in a cgroup of its own",
                    cg.display()
                )));
            }
            if agent_cgroup_id == 0 {
                if let Some(cg) = cfg.cgroups.iter().find(|cg| own.starts_with(cg)) {
                    return Err(RedirectError::Setup(format!(
                        "the agent runs in {}, inside enrolled cgroup {}, and its cgroup id is unknown: its own connections would be captured",
                        own.display(),
                        cg.display()
                    )));
                }
            }
        }
        ensure_bpffs()?;
        // Taking over capture: the previous agent's links (and programs) are handed to this
        // agent; its registration and capture rules stay in force until `activate`.
        let taking_capture = inherited.as_ref().is_some_and(|i| !i.links.is_empty());
        // The previous agent's programs are not a conflict: their links are being handed over.
        let ours: &[&str] = if taking_capture {
            &[programs::CONNECT4, programs::CONNECT6]
        } else {
            &[]
        };
        let conflicts = conflicting_programs(&cfg.cgroups, ours);
        for c in &conflicts {
            tracing::warn!(
                "another {c} is in effect: it runs alongside Plumb's and may rewrite destinations first \
                 (a CNI socket load balancer, another agent); see docs/redirection.md"
            );
        }
        std::fs::create_dir_all(&cfg.pin_path).map_err(setup("create pin directory"))?;
        remove_incompatible_pins(&cfg.pin_path);
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: valid rlimit struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.pin_path)
            .load_file(&object)
            .map_err(setup(&format!("load {}", object.display())))?;

        // Must exist before the programs load: it owns the log ring buffer they write to.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| RedirectError::Setup(format!("map {name} missing from the object")))
        };
        let mut capture4: LpmTrie<MapData, CaptureV4, RawRule> =
            LpmTrie::try_from(take(&mut ebpf, maps::CAPTURE_V4)?).map_err(setup("capture map"))?;
        let mut capture6: LpmTrie<MapData, CaptureV6, RawRule> =
            LpmTrie::try_from(take(&mut ebpf, maps::CAPTURE_V6)?).map_err(setup("capture map"))?;
        // Pinned maps outlive agents: the rule set is rewritten from this config.
        let rules = capture_rules(cfg, listeners);
        if !taking_capture {
            write_rules(&mut capture4, &mut capture6, &rules)?;
        }

        let mut state = AgentState {
            // Not registered until `activate`: programs attached before the proxy serves
            // must not capture anything.
            heartbeat_ns: 0,
            max_staleness_ns: cfg.fail_open_after.as_nanos() as u64,
            flags: if cfg.sk_msg { FLAG_SK_MSG } else { 0 },
            agent_cgroup_id,
            prev_agent_cgroup_id: inherited
                .as_ref()
                .map(|i| i.agent_cgroup_id)
                .filter(|id| *id != agent_cgroup_id)
                .unwrap_or(0),
            ..AgentState::default()
        };
        if let Some(ip) = cfg.proxy_v4 {
            state.proxy_addr4 = v4_bytes(ip);
            state.proxy_port4 = proxy_port.to_be_bytes();
        }
        if let Some(ip) = cfg.proxy_v6 {
            state.proxy_addr6 = ip.octets();
            state.proxy_port6 = proxy_port.to_be_bytes();
        }
        let mut agent: Array<MapData, AgentState> =
            Array::try_from(take(&mut ebpf, maps::AGENT)?).map_err(setup("agent map"))?;
        if !taking_capture {
            // Clear whatever an agent that died left in the pinned map. When taking over, the
            // old agent's registration stays in force until `activate`.
            agent
                .set(0, state, 0)
                .map_err(setup("register the agent"))?;
        }
        let orig_by_tuple: HashMap<MapData, Tuple, OrigDst> =
            HashMap::try_from(take(&mut ebpf, maps::ORIG_BY_TUPLE)?)
                .map_err(setup("original destination map"))?;
        let counters_map: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
                .map_err(setup("counters map"))?;

        // sk_msg must be attached to the sockhash before sockops inserts any socket.
        let mut sockets_map = None;
        if cfg.sk_msg {
            let sockets: SockHash<MapData, Tuple> =
                SockHash::try_from(take(&mut ebpf, maps::SOCKETS)?).map_err(setup("sockhash"))?;
            let fd = sockets.fd().try_clone().map_err(setup("sockhash fd"))?;
            let prog: &mut SkMsg = ebpf
                .program_mut(programs::SK_MSG)
                .ok_or_else(|| RedirectError::Setup("sk_msg program missing".into()))?
                .try_into()
                .map_err(setup("sk_msg program"))?;
            prog.load().map_err(setup("load sk_msg"))?;
            prog.attach(&fd).map_err(setup("attach sk_msg"))?;
            sockets_map = Some(sockets);
        }
        let mut sockops_cgroups = cfg.cgroups.clone();
        if cfg.sk_msg {
            // The agent's accepted sockets join the sockhash from its own cgroup.
            if let Some(own) = own_cgroup() {
                sockops_cgroups.push(own);
            }
        }
        // Links the agent owns (raw bpf_link fds, so they can be handed to a successor).
        // A link inherited from the agent this one takes over keeps running the old program
        // until `activate` swaps this one in; elsewhere a new link is created now.
        let mut inherited_links = inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.links))
            .unwrap_or_default();
        let mut links = Vec::new();
        let plan = [
            (programs::CONNECT4, BPF_CGROUP_INET4_CONNECT, &cfg.cgroups),
            (programs::CONNECT6, BPF_CGROUP_INET6_CONNECT, &cfg.cgroups),
            (programs::SOCKOPS, BPF_CGROUP_SOCK_OPS, &sockops_cgroups),
        ];
        for (name, attach_type, cgroups) in plan {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| RedirectError::Setup(format!("program {name} missing")))?;
            match prog {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                _ => {
                    return Err(RedirectError::Setup(format!(
                        "program {name} has an unexpected type"
                    )))
                }
            }
            .map_err(setup(&format!("load {name}")))?;
            let prog_fd = prog.fd().map_err(setup(name))?;
            for cg in cgroups.iter() {
                if let Some(i) = inherited_links
                    .iter()
                    .position(|(o, _)| o.program == name && o.cgroup == *cg)
                {
                    let (_, fd) = inherited_links.swap_remove(i);
                    links.push(CgroupLink {
                        program: name,
                        cgroup: cg.clone(),
                        fd,
                        inherited: true,
                    });
                    continue;
                }
                let f =
                    std::fs::File::open(cg).map_err(setup(&format!("open {}", cg.display())))?;
                let fd = link_create(prog_fd.as_fd(), f.as_fd(), attach_type)
                    .map_err(setup(&format!("attach {name} to {}", cg.display())))?;
                links.push(CgroupLink {
                    program: name,
                    cgroup: cg.clone(),
                    fd,
                    inherited: false,
                });
            }
        }
        // Inherited links for cgroups this configuration does not enroll close with these
        // descriptors (and detach once the old agent closes its own).
        drop(inherited_links);

        let scope = store.root_scope("redirect");
        let stats = RedirectStats {
            active: scope.gauge("active"),
            conflicting_programs: scope.gauge("conflicting_programs"),
            kernel: counters::NAMES.iter().map(|n| scope.counter(n)).collect(),
            orig_dst_found: scope.counter("orig_dst_found"),
            orig_dst_missing: scope.counter("orig_dst_missing"),
        };
        stats.active.set(1);
        stats.conflicting_programs.set(conflicts.len() as i64);
        let pinned = maps::ALL.iter().map(|m| cfg.pin_path.join(m)).collect();
        let r = Arc::new(Self {
            config: cfg.clone(),
            ebpf: Mutex::new(Some(ebpf)),
            orig_by_tuple,
            counters: counters_map,
            agent: Mutex::new(agent),
            capture: Mutex::new((capture4, capture6)),
            deferred_rules: Mutex::new(taking_capture.then(|| rules.clone())),
            successor_cgroup_id: AtomicU64::new(0),
            offered: AtomicBool::new(false),
            state,
            stats,
            stop: Arc::new(AtomicBool::new(false)),
            active: AtomicBool::new(false),
            pinned,
            links: Mutex::new(links),
            released: AtomicBool::new(false),
            _sockets: sockets_map,
        });
        tracing::info!(
            cgroups = ?cfg.cgroups,
            rules = rules.len(),
            proxy_v4 = ?cfg.proxy_v4,
            proxy_v6 = ?cfg.proxy_v6,
            port = proxy_port,
            sk_msg = cfg.sk_msg,
            object = %object.display(),
            "eBPF redirection active"
        );
        let hb = r.clone();
        std::thread::Builder::new()
            .name("plumb-heartbeat".into())
            .spawn(move || hb.heartbeat_loop())
            .map_err(setup("start heartbeat thread"))?;
        if let Some(logger) = logger {
            let stop = r.stop.clone();
            std::thread::Builder::new()
                .name("plumb-bpf-log".into())
                .spawn(move || forward_logs(logger, &stop))
                .map_err(setup("start eBPF log thread"))?;
        }
        Ok(r)
    }

    fn heartbeat_loop(&self) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(self.config.heartbeat_interval);
            self.beat();
        }
    }

    /// Refreshes the registration. `stop` is checked under the map lock, so a heartbeat can
    /// never overwrite `deregister`'s.
    fn beat(&self) {
        let mut agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop.load(Ordering::Acquire) || !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state;
        st.heartbeat_ns = monotonic_ns();
        let successor = self.successor_cgroup_id.load(Ordering::Acquire);
        if successor != 0 && successor != st.agent_cgroup_id {
            st.prev_agent_cgroup_id = successor;
        }
        if let Err(e) = agent.set(0, st, 0) {
            tracing::warn!(error = %e, "heartbeat update failed");
        }
    }

    /// Starts capturing: called once listeners accept and the initial configuration is in.
    /// Links inherited from the previous agent switch to this agent's programs first (each
    /// swap is atomic: a connect runs either the old program or the new one).
    pub fn activate(&self) {
        if self.released.load(Ordering::Acquire) {
            return;
        }
        {
            // Taking over: this agent's rules replace the previous agent's now.
            let mut deferred = self
                .deferred_rules
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(rules) = deferred.take() {
                let mut maps = self.capture.lock().unwrap_or_else(|p| p.into_inner());
                let (v4, v6) = &mut *maps;
                if let Err(e) = write_rules(v4, v6, &rules) {
                    tracing::error!(error = %e, "cannot write capture rules");
                }
            }
        }
        {
            let ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            for l in links.iter_mut().filter(|l| l.inherited) {
                let prog = ebpf
                    .as_ref()
                    .and_then(|e| e.program(l.program))
                    .map(|p| p.fd());
                let result = match prog {
                    Some(Ok(fd)) => link_update(l.fd.as_fd(), fd.as_fd()),
                    _ => Err(std::io::Error::other("program not loaded")),
                };
                match result {
                    Ok(()) => l.inherited = false,
                    Err(e) => {
                        tracing::error!(program = l.program, cgroup = %l.cgroup.display(), error = %e, "cannot switch an inherited link to this agent's program; it keeps the previous one")
                    }
                }
            }
        }
        self.active.store(true, Ordering::Release);
        self.beat();
        tracing::info!("eBPF capture active");
    }

    /// Duplicates of the link descriptors, for a successor.
    pub fn offer_links(&self) -> Vec<(OfferedLink, OwnedFd)> {
        self.offered.store(true, Ordering::Release);
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .filter_map(|l| {
                let fd = l.fd.try_clone().ok()?;
                Some((
                    OfferedLink {
                        program: l.program.to_string(),
                        cgroup: l.cgroup.clone(),
                    },
                    fd,
                ))
            })
            .collect()
    }

    /// The cgroup id the programs treat as this agent's.
    pub fn agent_cgroup_id(&self) -> u64 {
        self.state.agent_cgroup_id
    }

    /// Hands capture to a successor: the heartbeat stops without clearing the registration
    /// (the successor's first heartbeat follows within milliseconds), and `shutdown` will
    /// neither deregister, detach nor unpin.
    pub fn release(&self) {
        {
            let _agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
            self.released.store(true, Ordering::Release);
            self.stop.store(true, Ordering::Release);
        }
        // The successor holds duplicates: closing ours now means that, should it crash,
        // its links close with it and capture fails open at once.
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.stats.active.set(0);
        tracing::info!("eBPF redirection handed over to the new agent");
    }

    /// Gives up a takeover before `activate` (this agent is stopping): the previous agent
    /// keeps capture, so nothing shared is written — no registration, no rules, no unpin.
    pub fn abandon(&self) {
        {
            let _agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
            self.released.store(true, Ordering::Release);
            self.stop.store(true, Ordering::Release);
        }
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.stats.active.set(0);
        tracing::info!("takeover abandoned: the running agent keeps eBPF capture");
    }

    /// Whether this agent took capture over from a previous one and has not activated yet.
    pub fn taking_over(&self) -> bool {
        self.deferred_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// A hand-over did not happen: the successor's exclusion ends and maps may be unpinned
    /// again at shutdown.
    pub fn handover_aborted(&self) {
        self.withdraw_offer();
        self.exclude_successor(0);
    }

    /// The successor does not use the offered links and maps: a shutdown may unpin again.
    pub fn withdraw_offer(&self) {
        self.offered.store(false, Ordering::Release);
    }

    /// Excludes a successor's cgroup from capture while it starts (its own connects, e.g. to
    /// the control plane, must not be proxied by this agent, which is about to drain).
    pub fn exclude_successor(&self, cgroup_id: u64) {
        self.successor_cgroup_id.store(cgroup_id, Ordering::Release);
        self.beat();
    }

    /// The destination a redirected connection was meant for (recorded by sockops at
    /// establishment). `None` when the connection was not redirected by eBPF.
    pub fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        let t = tuple(peer, local)?;
        // No delete: the entry is keyed by the 4-tuple, rewritten by the next connection
        // that reuses it, and the LRU map bounds memory; this keeps lookups lock-free.
        match self.orig_by_tuple.get(&t, 0) {
            Ok(o) => {
                self.stats.orig_dst_found.inc();
                orig_to_addr(&o)
            }
            Err(_) => {
                self.stats.orig_dst_missing.inc();
                None
            }
        }
    }

    /// Re-derives the capture rules after the listener set changed (a `bind_to_port: false`
    /// listener added, moved or removed).
    pub fn set_listener_destinations(&self, listeners: &[Arc<Listener>]) {
        if self.released.load(Ordering::Acquire) {
            return; // the rules are another agent's now
        }
        let rules = capture_rules(&self.config, listeners);
        let mut deferred = self
            .deferred_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = deferred.as_mut() {
            *pending = rules;
            return;
        }
        let mut maps = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        let (v4, v6) = &mut *maps;
        if let Err(e) = write_rules(v4, v6, &rules) {
            tracing::error!(error = %e, "cannot update capture rules");
        }
    }

    /// Copies the programs' per-CPU counters into `redirect.*` stats.
    pub fn sync_stats(&self) {
        for (i, c) in self.stats.kernel.iter().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                c.set_total(per_cpu_total(&values));
            }
        }
    }

    /// Stop capturing now (new connects go to their original destinations); used when the
    /// drain starts, so no workload connect is refused by a closing listener.
    pub fn deregister(&self) {
        let mut agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if self.released.load(Ordering::Acquire) {
            // Capture belongs to another agent now: never overwrite its registration.
            return;
        }
        self.stop.store(true, Ordering::Release);
        let mut st = self.state;
        st.heartbeat_ns = 0;
        let _ = agent.set(0, st, 0);
        self.stats.active.set(0);
        tracing::info!(
            "eBPF redirection deregistered: captured destinations are reached directly again"
        );
    }

    /// Deregisters, detaches every program and removes the pinned maps. After `release`,
    /// only closes this agent's descriptors: the successor's duplicates keep everything.
    pub fn shutdown(&self) {
        if self.released.load(Ordering::Acquire) {
            self.stop.store(true, Ordering::Release);
            self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.ebpf.lock().unwrap_or_else(|p| p.into_inner()).take();
            return;
        }
        self.deregister();
        self.sync_stats();
        // Links close: programs detach.
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(ebpf) = self.ebpf.lock().unwrap_or_else(|p| p.into_inner()).take() {
            drop(ebpf);
        }
        if self.offered.load(Ordering::Acquire) {
            // A successor holds duplicates of the links and is loading the pinned maps.
            tracing::info!(
                "eBPF programs detached here; maps stay pinned for the successor taking over"
            );
            return;
        }
        for p in &self.pinned {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir(&self.config.pin_path);
        tracing::info!(pin_path = %self.config.pin_path.display(), "eBPF programs detached, maps unpinned");
    }

    pub fn pin_path(&self) -> &Path {
        &self.config.pin_path
    }
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/ebpf_values.rs`): the map values the agent reads back
/// from the kernel — original destinations and the registration record — from arbitrary
/// bytes, as a corrupted or foreign pinned map could hold them.
#[doc(hidden)]
pub fn fuzz_map_values(data: &[u8]) {
    fn read<T: Copy + Default>(data: &[u8]) -> T {
        let mut v = T::default();
        let n = data.len().min(std::mem::size_of::<T>());
        // SAFETY: T is a plain-old-data map value (integers and byte arrays, any bit pattern
        // valid); at most size_of::<T>() bytes are copied into it.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (&mut v as *mut T).cast::<u8>(), n);
        }
        v
    }
    let o: OrigDst = read(data);
    let _ = rules::orig_to_addr(&o);
    let per_cpu: Vec<u64> = data
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect();
    let _ = per_cpu_total(&per_cpu);
}

/// The total of a per-CPU counter (wrapping, as the kernel's own counters do: a corrupted
/// value must not stop the agent).
fn per_cpu_total(values: &[u64]) -> u64 {
    values.iter().fold(0u64, |a, v| a.wrapping_add(*v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_the_prefix() {
        let mut a = [10, 213, 255, 255];
        mask(&mut a, 12);
        assert_eq!(a, [10, 208, 0, 0]);
        let mut a = [1, 2, 3, 4];
        mask(&mut a, 32);
        assert_eq!(a, [1, 2, 3, 4]);
        mask(&mut a, 0);
        assert_eq!(a, [0, 0, 0, 0]);
    }

    #[test]
    fn tuples_match_what_sockops_records() {
        let t = tuple(
            "10.213.1.6:40000".parse().unwrap(),
            "10.213.1.1:15001".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(t.family, AF_INET);
        assert_eq!(&t.src_addr[..4], &[10, 213, 1, 6]);
        assert_eq!(t.src_port, 40000u16.to_be_bytes());
        assert_eq!(t.dst_port, 15001u16.to_be_bytes());
        let o = OrigDst {
            family: AF_INET,
            port: 80u16.to_be_bytes(),
            _pad: [0; 2],
            addr: [10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(orig_to_addr(&o), Some("10.96.0.10:80".parse().unwrap()));
    }
}

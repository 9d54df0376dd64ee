//! Raw bpf(2) calls aya does not cover (link create/update, program queries), capability
//! checks, bpffs, and SO_ORIGINAL_DST.

use super::*;

pub(super) const BPF_LINK_CREATE: libc::c_long = 28;
pub(super) const BPF_LINK_UPDATE: libc::c_long = 29;
pub(super) const BPF_CGROUP_SOCK_OPS: u32 = 3;

pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u32; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with a zero-padded attr buffer of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Attaches `prog` to `cgroup` with a new bpf_link (the kernel runs every link-attached program
/// of the attach type, in attach order).
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    // link_create: prog_fd, target_fd, attach_type, flags.
    let mut attr = [0u32; 16];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = cgroup.as_raw_fd() as u32;
    attr[2] = attach_type;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program a link runs.
pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    // link_update: link_fd, new_prog_fd, flags, old_prog_fd.
    let mut attr = [0u32; 16];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Capabilities redirection needs that this process lacks (from /proc/self/status CapEff).
pub(super) fn missing_capabilities() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    const NET_ADMIN: u32 = 12;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let mut missing = Vec::new();
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN");
    }
    // CAP_SYS_ADMIN implies what CAP_BPF grants on kernels that have CAP_BPF.
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    missing
}

pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mounts bpffs at /sys/fs/bpf if nothing (or something else) is mounted there.
pub(super) fn ensure_bpffs() -> Result<(), RedirectError> {
    let path = std::ffi::CString::new("/sys/fs/bpf").expect("static path");
    // SAFETY: statfs with a valid path and an out-parameter struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("static");
    // SAFETY: mount(2) with valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(RedirectError::Setup(format!(
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Pinned maps outlive agents, and aya reuses a pin without checking its layout: maps
/// pinned by a build with another layout (after an upgrade) are removed, to be recreated.
pub(super) fn remove_incompatible_pins(dir: &Path) {
    let agent = dir.join(maps::AGENT);
    let Ok(data) = MapData::from_pin(&agent) else {
        return;
    };
    let compatible = data
        .info()
        .map(|i| i.value_size() as usize == std::mem::size_of::<AgentState>())
        .unwrap_or(false);
    drop(data);
    if compatible {
        return;
    }
    tracing::warn!(pin_path = %dir.display(), "pinned maps have another layout (an older Plumb?): recreating them");
    for name in maps::ALL {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

pub(super) const BPF_PROG_QUERY: libc::c_long = 16;
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub(super) const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub(super) const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// IDs of the programs of `attach_type` in effect for `cgroup` (attached to it or inherited).
pub(super) fn effective_programs(
    cgroup: &std::fs::File,
    attach_type: u32,
) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut ids = [0u32; 64];
    // union bpf_attr, query variant: target_fd, attach_type, query_flags, attach_flags,
    // prog_ids (u64 pointer), prog_cnt; the rest must be zero.
    let mut attr = [0u64; 16];
    let words = attr.as_mut_ptr().cast::<u32>();
    // SAFETY: writes inside the 128-byte zeroed buffer at the kernel's field offsets.
    unsafe {
        *words.add(0) = cgroup.as_raw_fd() as u32;
        *words.add(1) = attach_type;
        *words.add(2) = BPF_F_QUERY_EFFECTIVE;
        attr[2] = ids.as_mut_ptr() as u64;
        *words.add(6) = ids.len() as u32;
    }
    // SAFETY: bpf(2) with a valid attr buffer of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prog_cnt was written by the kernel.
    let n = unsafe { *words.add(6) } as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

/// Other connect4/connect6 programs already in effect on the enrolled cgroups (a CNI's socket
/// load balancer, another agent): they run too and can rewrite destinations first.
pub(super) fn conflicting_programs(cgroups: &[PathBuf], ignore: &[&str]) -> Vec<String> {
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect();
    let mut found = Vec::new();
    for cg in cgroups {
        let Ok(f) = std::fs::File::open(cg) else {
            continue;
        };
        for (kind, t) in [
            ("connect4", BPF_CGROUP_INET4_CONNECT),
            ("connect6", BPF_CGROUP_INET6_CONNECT),
        ] {
            match effective_programs(&f, t) {
                Ok(ids) => found.extend(
                    ids.iter()
                        .filter(|id| !names.get(id).is_some_and(|n| ignore.contains(&n.as_str())))
                        .map(|id| {
                            format!(
                                "{kind} program {id} ({}) on {}",
                                names.get(id).map(String::as_str).unwrap_or("?"),
                                cg.display()
                            )
                        }),
                ),
                Err(e) => {
                    tracing::debug!(cgroup = %cg.display(), error = %e, "cannot query attached programs")
                }
            }
        }
    }
    found
}

/// Forwards the programs' aya-log records (rare errors) into the agent's log until `stop`.
pub(super) fn forward_logs(
    mut logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    stop: &AtomicBool,
) {
    use std::os::fd::{AsFd, AsRawFd};
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: logger.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a timeout bounds each wait so `stop` is seen.
        let n = unsafe { libc::poll(&mut pfd, 1, 250) };
        if n > 0 {
            logger.flush();
        }
    }
}

/// `SO_ORIGINAL_DST` of an accepted socket (iptables REDIRECT / TPROXY-less NAT capture).
pub fn so_original_dst(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = stream.as_raw_fd();
    let local = stream.local_addr().ok()?;
    if local.is_ipv4() {
        // SAFETY: getsockopt with a correctly sized sockaddr_in out-parameter.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        let addr = SocketAddr::from((
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        ));
        (addr != local).then_some(addr)
    } else {
        // SAFETY: as above, IPv6 (IP6T_SO_ORIGINAL_DST has the same value).
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&mut sa as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        let addr = SocketAddr::from((
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
        ));
        (addr != local).then_some(addr)
    }
}

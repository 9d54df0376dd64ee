//! The hand-over's transport: a SOCK_SEQPACKET unix socket, the running agent's listening end
//! (`Listener`) and a connected end on each side (`Channel`) carrying one JSON message per
//! packet with its file descriptors attached (SCM_RIGHTS).

use super::*;

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
}

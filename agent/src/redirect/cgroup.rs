//! cgroup2: the root, the agent's own cgroup (also under a private cgroup namespace), ids.

use super::*;

/// The cgroup2 mount point.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// This process's cgroup id (the inode of its cgroup2 directory, what
/// `bpf_get_current_cgroup_id` returns); 0 when unknown.
pub fn own_cgroup_id() -> u64 {
    own_cgroup().as_deref().map(cgroup_id).unwrap_or(0)
}

/// A cgroup's id: the inode of its cgroup2 directory; 0 when it cannot be read.
pub(super) fn cgroup_id(dir: &Path) -> u64 {
    std::fs::metadata(dir)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0)
}

/// This process's cgroup2 directory. `/proc/self/cgroup` names it relative to the cgroup
/// namespace's root, which in a container (a private cgroup namespace, the default on cgroup
/// v2) is the container's own cgroup, shown as `/`: then the mounted hierarchy is searched
/// for the directory that lists this process.
pub fn own_cgroup() -> Option<PathBuf> {
    let root = cgroup2_root()?;
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    let pid = std::process::id();
    let named = root.join(rel.trim_start_matches('/'));
    if lists_pid(&named, pid) {
        return Some(named);
    }
    let found = find_cgroup_of(&root, pid);
    match &found {
        Some(p) => {
            tracing::debug!(cgroup = %p.display(), shown_as = rel, "found this process's cgroup by search (private cgroup namespace)")
        }
        None => {
            tracing::warn!(
                shown_as = rel,
                "cannot find this process's cgroup in the mounted hierarchy"
            )
        }
    }
    found
}

/// Whether `dir/cgroup.procs` lists `pid`.
pub(super) fn lists_pid(dir: &Path, pid: u32) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|procs| procs.lines().any(|l| l.trim().parse::<u32>() == Ok(pid)))
}

/// Breadth-first search below `root` for the cgroup listing `pid` (bounded).
pub(super) fn find_cgroup_of(root: &Path, pid: u32) -> Option<PathBuf> {
    const MAX_DIRS: usize = 200_000;
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DIRS {
            return None;
        }
        if lists_pid(&dir, pid) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}

//! `cargo xtask image [--release]`: the agent's container image, built offline with podman —
//! no registry base image: a scratch root filesystem holding the agent binary, the shared
//! libraries it links (from this machine's Debian), the eBPF object and the bundled config,
//! imported as `localhost/plumb:test` (`--release`: `localhost/plumb:dev`, from the release
//! binary). `deploy/Containerfile` stays the recipe for machines that can pull base images.

use crate::util::{root_dir, run, which};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TEST_IMAGE: &str = "localhost/plumb:test";

/// The shared libraries `bin` loads, as absolute paths (from `ldd`).
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", bin.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Builds and imports the image; returns its name.
pub fn build(release: bool) -> Result<&'static str> {
    if which("podman").is_none() {
        bail!("podman is not installed (apt-get install podman runc)");
    }
    let root = root_dir();
    let (bin, tag) = if release {
        run(crate::util::cargo().args(["build", "--release", "-p", "plumb"]))?;
        (root.join("target/release/plumb"), "localhost/plumb:dev")
    } else {
        (root.join("target/debug/plumb"), TEST_IMAGE)
    };
    let object = root.join("target/bpf/plumb.bpf.o");
    if !bin.is_file() {
        bail!("{} is missing (cargo build -p plumb)", bin.display());
    }
    if !object.is_file() {
        bail!("{} is missing (cargo xtask build-ebpf)", object.display());
    }
    let rootfs = root.join("target/image/rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let put = |from: &Path, to: &str| -> Result<()> {
        let dest = rootfs.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("absolute path"))?;
        // Follows symlinks: the image holds the files themselves.
        std::fs::copy(from, &dest)
            .with_context(|| format!("copy {} into the image", from.display()))?;
        Ok(())
    };
    put(&bin, "/usr/bin/plumb")?;
    put(&object, "/usr/lib/plumb/plumb.bpf.o")?;
    put(
        &root.join("agent/config/default.yaml"),
        "/etc/plumb/plumb.yaml",
    )?;
    for lib in shared_libraries(&bin)? {
        put(&lib, &lib.display().to_string())?;
    }
    // Mount points of the DaemonSet's volumes (the root filesystem is read-only).
    for dir in [
        "sys/fs/bpf",
        "sys/fs/cgroup",
        "var/lib/plumb",
        "run/plumb",
        "tmp",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let tar = root.join("target/image/rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    run(Command::new("podman").args([
        "import",
        "--quiet",
        "--change",
        r#"ENTRYPOINT ["/usr/bin/plumb"]"#,
        "--change",
        r#"CMD ["run", "--config", "/etc/plumb/plumb.yaml"]"#,
        "--change",
        "USER 0:0",
        tar.to_str().context("UTF-8 path")?,
        tag,
    ]))?;
    eprintln!("xtask: built image {tag}");
    Ok(tag)
}

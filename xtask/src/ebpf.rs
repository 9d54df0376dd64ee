//! `cargo xtask build-ebpf`: builds `ebpf/programs` into `target/bpf/plumb.bpf.o` with whatever
//! eBPF-capable toolchain is present, installing what is missing on Debian when run as root:
//!
//! 1. a rustup nightly that has `rust-src` (`cargo +nightly … -Z build-std=core`), else
//! 2. Debian's `rustc-web` + `rust-web-src` (rustc 1.96 on LLVM 22) driven by this cargo with
//!    `RUSTC_BOOTSTRAP=1`, installed if missing;
//!
//! and `bpf-linker` 0.13 (built against Debian's LLVM 22 when it has to be installed).

use crate::util::{self, root_dir, run};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";

/// Where the built object lands; the agent looks here by default.
pub fn object_path() -> PathBuf {
    root_dir().join("target/bpf/plumb.bpf.o")
}

enum Toolchain {
    RustupNightly,
    Debian,
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn debian_toolchain_present() -> bool {
    std::path::Path::new(DEBIAN_RUSTC).exists() && std::path::Path::new(DEBIAN_RUST_SRC).exists()
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn pick_toolchain() -> Result<Toolchain> {
    if nightly_has_rust_src() {
        return Ok(Toolchain::RustupNightly);
    }
    if !debian_toolchain_present() {
        util::ensure_debian_packages_named(&["rustc-web", "rust-web-src"])
            .context("no eBPF-capable Rust toolchain: need a rustup nightly with rust-src, or Debian's rustc-web + rust-web-src")?;
    }
    if debian_toolchain_present() {
        Ok(Toolchain::Debian)
    } else {
        bail!("rustc-web is installed but {DEBIAN_RUSTC} or {DEBIAN_RUST_SRC} is missing")
    }
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    util::ensure_debian_packages_named(&[
        "llvm-22-dev",
        "libpolly-22-dev",
        "zlib1g-dev",
        "libzstd-dev",
    ])
    .context("bpf-linker needs LLVM 22 development files")?;
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but is not on PATH (add ~/.cargo/bin to PATH)");
    }
    Ok(())
}

pub fn build() -> Result<PathBuf> {
    let toolchain = pick_toolchain()?;
    ensure_bpf_linker()?;
    let crate_dir = root_dir().join("ebpf/programs");
    let target_dir = root_dir().join("target/ebpf");
    let mut cmd = match toolchain {
        Toolchain::RustupNightly => {
            let mut c = Command::new("cargo");
            c.arg("+nightly");
            c
        }
        Toolchain::Debian => {
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.env("RUSTC_BOOTSTRAP", "1").env("RUSTC", DEBIAN_RUSTC);
            c
        }
    };
    cmd.current_dir(&crate_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        // The host toolchain's flags (e.g. from the environment) must not leak into the BPF build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut cmd)?;
    let built = target_dir.join("bpfel-unknown-none/release/plumb");
    let out = object_path();
    std::fs::create_dir_all(out.parent().expect("parent"))?;
    std::fs::copy(&built, &out)
        .with_context(|| format!("copy {} to {}", built.display(), out.display()))?;
    eprintln!("xtask: eBPF object at {}", out.display());
    Ok(out)
}

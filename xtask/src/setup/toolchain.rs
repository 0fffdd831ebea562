//! The Rust side: the nightly toolchain with rust-src, and bpf-linker built against rustc's own
//! LLVM.
use anyhow::{Result, anyhow};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::*;

pub(super) fn nightly_sysroot() -> Option<PathBuf> {
    capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
}

pub(super) fn nightly_rust_src(report: &mut Report) -> Result<()> {
    let sysroot = nightly_sysroot();
    match &sysroot {
        Some(sysroot) => {
            let src = sysroot.join("lib/rustlib/src/rust/library");
            if src.is_dir() {
                report.add(
                    "nightly rust-src",
                    Outcome::Present(src.display().to_string()),
                );
                return Ok(());
            }
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
            report.add("nightly rust-src", Outcome::Installed("rust-src".into()));
        }
        None => {
            run_cmd(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            report.add(
                "nightly rust-src",
                Outcome::Installed("nightly toolchain with rust-src".into()),
            );
        }
    }
    Ok(())
}

/// The persistent folder whose `lib/` points at rustc's libLLVM; bpf-linker's rpath names it,
/// so it must outlive the build (a /tmp folder breaks the linker after a reboot).
pub(super) fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".local/share/guard-llvm"))
}

pub(super) fn bpf_linker(force: bool, report: &mut Report) -> Result<()> {
    if !force && let Ok(version) = capture(Command::new("bpf-linker").arg("--version")) {
        report.add("bpf-linker", Outcome::Present(version.trim().to_string()));
        return Ok(());
    }
    let sysroot = nightly_sysroot().ok_or_else(|| {
        anyhow!("`rustc +nightly --print sysroot` failed: the nightly toolchain is missing")
    })?;
    let sys_lib = sysroot.join("lib");
    // rustc ships its LLVM as libLLVM.so.<major>.<minor>-rust-<version>-nightly.
    let llvm_lib = fs::read_dir(&sys_lib)
        .with_context(|| format!("reading {}", sys_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.22"))
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM.so.22* in {}: bpf-linker 0.13 needs the nightly's LLVM 22",
                sys_lib.display()
            )
        })?;
    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // Two names: libLLVM.so for the build's linker, the versioned one for the run-time loader.
    for name in ["libLLVM.so", llvm_lib.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sys_lib.join(&llvm_lib), &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    println!(
        "setup: bpf-linker: building against {} (about a minute)",
        sys_lib.join(&llvm_lib).display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    let version = capture(Command::new("bpf-linker").arg("--version")).context(
        "bpf-linker was installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)",
    )?;
    report.add("bpf-linker", Outcome::Installed(version.trim().to_string()));
    Ok(())
}

/// rust-vmm's vhost-user vsock device: the harness's guest ↔ host vsock bridge, as the micro-VM
/// monitors map a guest's vsock connection to a host Unix socket (this host has no
/// /dev/vhost-vsock). Built with the stable toolchain from crates.io, about a minute.
pub(super) fn vhost_device_vsock(report: &mut Report) -> Result<()> {
    if let Ok(version) = capture(Command::new("vhost-device-vsock").arg("--version")) {
        report.add(
            "vhost-device-vsock",
            Outcome::Present(version.trim().to_string()),
        );
        return Ok(());
    }
    run_cmd(Command::new("cargo").args([
        "install",
        "vhost-device-vsock",
        "--version",
        VHOST_DEVICE_VSOCK_VERSION,
        "--locked",
    ]))?;
    let version = capture(Command::new("vhost-device-vsock").arg("--version")).context(
        "vhost-device-vsock was installed but `vhost-device-vsock --version` fails (is \
         ~/.cargo/bin on PATH?)",
    )?;
    report.add(
        "vhost-device-vsock",
        Outcome::Installed(version.trim().to_string()),
    );
    Ok(())
}

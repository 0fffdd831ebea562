//! `cargo xtask setup`: install what the build and the guest tests need, idempotently.
//!
//! Every step first checks cheaply whether its thing is already there, so a second run only
//! reports and takes seconds. Steps that must change the system (apt, rustup, cargo install)
//! print the exact command they run.

use anyhow::{Context as _, Result};
use std::time::Instant;
use xtask::paths;

mod apt;
mod debian_kernels;
mod lean_kernels;
mod process;
mod python;
mod toolchain;
mod vsock_modules;

use apt::{Apt, apt_packages};
use debian_kernels::guest_kernel;
use lean_kernels::lean_kernels;
use process::{capture, run_cmd};
use python::python_packages;
use toolchain::{bpf_linker, nightly_rust_src, vhost_device_vsock};
use vsock_modules::add_vsock_modules;

/// Debian packages the guest harness and the peers need.
/// xz-utils and zstd unpack the kernels inside Debian's vmlinuz (6.1 is xz, 6.12 zstd) into a
/// vmlinux that QEMU boots directly (PVH), seconds faster under TCG.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "cpio",
    "busybox-static",
    "bpftrace",
    "xz-utils",
    "zstd",
    // The font `guard log timeline` draws its text with.
    "fonts-dejavu-core",
    // libcontainer's seccomp (its `libseccomp` feature) links the C library; the guest gets
    // libseccomp.so.2 with the binaries (ldd).
    "libseccomp-dev",
    // The dependent check: an agent's start must open no vmlinux BTF.
    "strace",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// `Default` is a full setup, for commands that call [`run`] before their own work.
#[derive(clap::Args, Debug, Default)]
#[command(
    about = "Install the toolchain and test assets: apt packages, nightly rust-src, bpf-linker, Debian guest kernels (idempotent)",
    long_about = "Install everything the build and the tests need on a fresh Debian 12 machine, \
idempotently:\n\
  1. apt packages: qemu-system-x86 cpio busybox-static bpftrace xz-utils zstd fonts-dejavu-core \
libseccomp-dev strace (apt-get update only if one is missing), \
and the Python package prometheus-client (its OpenMetrics parser checks guard's metrics)\n\
  2. the nightly toolchain with rust-src (for -Z build-std=core on bpfel-unknown-none)\n\
  3. bpf-linker 0.13 built against rustc's own LLVM 22 (no system LLVM needed); its LLVM \
symlink folder lives in ~/.local/share/guard-llvm and must stay there; and rust-vmm's \
vhost-device-vsock 0.3, the guest tests' vsock bridge\n\
  4. Debian guest kernels 6.1 and 6.12 (package names resolved with apt-cache, 6.12 prefers \
-unsigned), unpacked into <target>/guest-kernels/<series>/ with a guard-kernel.txt manifest\n\
  5. the lean guest kernels `lean` (libkrunfw's config plus what the harness needs) and \
`lean-guard` (plus kernels/guard.config), built from Debian's linux-source-6.12 (about 6 \
minutes each on 2 cores, with progress lines) and cached by a hash of the source version and \
the configs in $GUARD_KERNEL_CACHE (default ~/.cache/guard/kernels): a second run installs \
them from there at once\n\n\
Each step says whether it installed something or found it already there; a second run changes \
nothing. Needs root for apt (sudo is used when not root and available).\n\n\
Environment: CARGO_TARGET_DIR (kernels go to $CARGO_TARGET_DIR/guest-kernels), \
GUARD_KERNELS_DIR (overrides the kernel folder), GUARD_KERNEL_CACHE (the lean kernels' \
build cache)."
)]
pub struct SetupArgs {
    /// Skip the apt packages.
    #[arg(long)]
    pub skip_apt: bool,
    /// Skip the nightly toolchain, rust-src and bpf-linker.
    #[arg(long)]
    pub skip_rust: bool,
    /// Skip downloading guest kernels.
    #[arg(long)]
    pub skip_kernels: bool,
    /// Re-resolve the kernel packages and replace a cached kernel when apt offers a newer one.
    #[arg(long)]
    pub refresh_kernels: bool,
    /// Rebuild bpf-linker even when `bpf-linker --version` works.
    #[arg(long)]
    pub force_bpf_linker: bool,
    /// Skip building the lean kernels (the Debian ones are still fetched).
    #[arg(long)]
    pub skip_lean_kernels: bool,
    /// Rebuild the lean kernels even when a build with the same configs is cached.
    #[arg(long)]
    pub rebuild_lean_kernels: bool,
}

/// What a step did, for the summary.
enum Outcome {
    Present(String),
    Installed(String),
}

struct Report {
    lines: Vec<(String, Outcome)>,
}

impl Report {
    fn add(&mut self, step: &str, outcome: Outcome) {
        match &outcome {
            Outcome::Present(what) => println!("setup: {step}: already there ({what})"),
            Outcome::Installed(what) => println!("setup: {step}: installed {what}"),
        }
        self.lines.push((step.to_string(), outcome));
    }
}

pub fn run(args: SetupArgs) -> Result<()> {
    let started = Instant::now();
    let mut report = Report { lines: Vec::new() };
    let mut apt = Apt::default();
    if !args.skip_apt {
        apt_packages(&mut apt, &mut report)?;
        python_packages(&mut report)?;
    }
    if !args.skip_rust {
        nightly_rust_src(&mut report)?;
        bpf_linker(args.force_bpf_linker, &mut report)?;
        vhost_device_vsock(&mut report)?;
    }
    if !args.skip_kernels {
        for series in paths::KERNEL_SERIES {
            guest_kernel(&mut apt, series, args.refresh_kernels, &mut report)?;
        }
        if !args.skip_lean_kernels {
            lean_kernels(&mut apt, args.rebuild_lean_kernels, &mut report)?;
        }
    }
    let installed = report
        .lines
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Installed(_)))
        .count();
    if installed == 0 {
        println!(
            "setup: nothing to do, everything was already there ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "setup: done, {installed} step(s) installed something, {} already there ({:.1} s)",
            report.lines.len() - installed,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

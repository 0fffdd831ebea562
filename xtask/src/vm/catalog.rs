//! Which guest kernels this machine has (the `cargo xtask setup` cache, or a path), and
//! whether a guest can boot here at all.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::{image, qemu};
use crate::paths;

/// Kernels the setup cache holds, as (name, vmlinuz).
pub fn available_kernels() -> Vec<(String, PathBuf)> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in paths::kernel_search_dirs() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || found.contains_key(&name) {
                continue;
            }
            if let Some(vmlinuz) = kernel_in(&entry.path()) {
                found.insert(name, vmlinuz);
            }
        }
    }
    found.into_iter().collect()
}

/// The kernel image of a kernel folder: by its manifest the uncompressed `vmlinux` (PVH
/// boot, seconds faster under TCG; see [`kernel`]) else the `vmlinuz`; without a manifest
/// the last boot/vmlinuz-*.
fn kernel_in(dir: &Path) -> Option<PathBuf> {
    if let Ok(text) = fs::read_to_string(dir.join(paths::KERNEL_MANIFEST)) {
        for key in ["vmlinux=", "vmlinuz="] {
            if let Some(rel) = text.lines().find_map(|l| l.strip_prefix(key)) {
                let path = dir.join(rel.trim());
                if path.is_file() {
                    return Some(path);
                }
            }
        }
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

/// The QEMU machine a kernel boots on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// The standard PC (PCI, ACPI): Debian's kernels.
    Pc,
    /// `-M microvm,acpi=off`, as the micro-VM runtimes boot their guests: virtio-mmio, no PCI,
    /// no ACPI (so no ACPI power-off: the harness reboots the guest to end it). guard's lean
    /// kernels (libkrunfw's config) have neither PCI nor ACPI.
    Microvm,
}

/// A kernel image and how to boot it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub image: PathBuf,
    pub machine: Machine,
    /// Modules a vsock guest loads first, in order (Debian's kernels; the manifest's
    /// `vsock_modules=` line). Empty where vsock is built in.
    pub vsock_modules: Vec<PathBuf>,
}

/// Resolves a kernel name or path and the machine its manifest asks for (`machine=microvm`;
/// the standard PC otherwise).
pub fn resolve(kernel: &str) -> Result<GuestKernel> {
    let image = resolve_kernel(kernel)?;
    let (folder, manifest) = image
        .parent()
        .into_iter()
        .flat_map(|dir| [dir.to_path_buf(), dir.join("..")])
        .find_map(|dir| {
            fs::read_to_string(dir.join(paths::KERNEL_MANIFEST))
                .ok()
                .map(|text| (dir, text))
        })
        .unwrap_or_default();
    let vsock_modules = manifest
        .lines()
        .find_map(|line| line.strip_prefix("vsock_modules="))
        .map(|names| {
            names
                .split_whitespace()
                .map(|name| folder.join("modules").join(name))
                .collect()
        })
        .unwrap_or_default();
    let machine = if manifest
        .lines()
        .any(|line| line.trim() == "machine=microvm")
    {
        Machine::Microvm
    } else {
        Machine::Pc
    };
    Ok(GuestKernel {
        image,
        machine,
        vsock_modules,
    })
}

/// Resolves "6.1", "6.12", "lean", "lean-guard" (setup cache) or a path to a kernel image.
pub fn resolve_kernel(kernel: &str) -> Result<PathBuf> {
    let available = available_kernels();
    if let Some((_, path)) = available.iter().find(|(name, _)| name == kernel) {
        return Ok(path.clone());
    }
    let as_path = Path::new(kernel);
    if kernel.contains('/') || as_path.is_file() {
        if as_path.is_file() {
            return Ok(as_path.to_path_buf());
        }
        bail!("kernel image {kernel} does not exist");
    }
    let names: Vec<&str> = available.iter().map(|(n, _)| n.as_str()).collect();
    let searched: Vec<String> = paths::kernel_search_dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    if names.is_empty() {
        bail!(
            "unknown kernel {kernel:?}: no guest kernels installed (searched {}); run `cargo xtask setup`",
            searched.join(", ")
        );
    }
    bail!(
        "unknown kernel {kernel:?}: available are {} (in {}), or give a path to a kernel image",
        names.join(", "),
        searched.join(", ")
    )
}

/// Checks that a guest with `kernel` can be booted here: the kernel resolves, a static
/// busybox and QEMU are installed. The error says what is missing and how to get it.
pub fn check_prerequisites(kernel: &str) -> Result<PathBuf> {
    let path = resolve_kernel(kernel)?;
    image::find_busybox()?;
    let qemu = qemu::qemu_binary();
    std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .with_context(|| format!("{qemu} is not installed; run `cargo xtask setup`"))?;
    Ok(path)
}

/// Whether we run under CI: `CI` set to anything but empty, `false` or `0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// For tests: `Some(kernel)` when a guest can boot; otherwise a printed skip (None) outside
/// CI, and a panic naming what is missing under CI, where the guest suite must never skip.
#[track_caller]
pub fn kernel_or_skip(kernel: &str) -> Option<String> {
    match check_prerequisites(kernel) {
        Ok(_) => Some(kernel.to_string()),
        Err(e) if in_ci() => panic!("guest VM test cannot run under CI: {e:#}"),
        Err(e) => {
            eprintln!("SKIPPED (not under CI): {e:#}");
            None
        }
    }
}

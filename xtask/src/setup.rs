//! `cargo xtask setup`: install what the build and the guest tests need, idempotently.
//!
//! Every step first checks cheaply whether its thing is already there, so a second run only
//! reports and takes seconds. Steps that must change the system (apt, rustup, cargo install)
//! print the exact command they run.

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use xtask::paths;

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
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `Default` is a full setup, for commands that call [`run`] before their own work.
#[derive(clap::Args, Debug, Default)]
#[command(
    about = "Install the toolchain and test assets: apt packages, nightly rust-src, bpf-linker, Debian guest kernels (idempotent)",
    long_about = "Install everything the build and the tests need on a fresh Debian 12 machine, \
idempotently:\n\
  1. apt packages: qemu-system-x86 cpio busybox-static bpftrace (apt-get update only if one is missing)\n\
  2. the nightly toolchain with rust-src (for -Z build-std=core on bpfel-unknown-none)\n\
  3. bpf-linker 0.13 built against rustc's own LLVM 22 (no system LLVM needed); its LLVM \
symlink folder lives in ~/.local/share/guard-llvm and must stay there\n\
  4. Debian guest kernels 6.1 and 6.12 (package names resolved with apt-cache, 6.12 prefers \
-unsigned), unpacked into <target>/guest-kernels/<series>/ with a guard-kernel.txt manifest\n\n\
Each step says whether it installed something or found it already there; a second run changes \
nothing. Needs root for apt (sudo is used when not root and available).\n\n\
Environment: CARGO_TARGET_DIR (kernels go to $CARGO_TARGET_DIR/guest-kernels), \
GUARD_KERNELS_DIR (overrides the kernel folder)."
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
    }
    if !args.skip_rust {
        nightly_rust_src(&mut report)?;
        bpf_linker(args.force_bpf_linker, &mut report)?;
    }
    if !args.skip_kernels {
        for series in paths::KERNEL_SERIES {
            guest_kernel(&mut apt, series, args.refresh_kernels, &mut report)?;
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

// ---------------------------------------------------------------------------------------------
// apt

#[derive(Default)]
struct Apt {
    /// `apt-get update` runs at most once per setup, and only when something is missing.
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            run_root(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

/// Runs a command that needs root, through sudo when we are not root.
fn run_root(cmd: &mut Command) -> Result<()> {
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    if is_root() {
        return run_cmd(cmd);
    }
    let mut sudo = Command::new("sudo");
    sudo.arg("-E")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(&mut sudo).context("needs root: run setup as root or with sudo available")
}

fn dpkg_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|status| status.trim() == "install ok installed")
        .unwrap_or(false)
}

fn apt_packages(apt: &mut Apt, report: &mut Report) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        report.add("apt", Outcome::Present(APT_PACKAGES.join(" ")));
        return Ok(());
    }
    println!("setup: apt: missing {}", missing.join(" "));
    apt.update()?;
    run_root(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    report.add("apt", Outcome::Installed(missing.join(" ")));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rust: nightly + rust-src, bpf-linker

fn nightly_sysroot() -> Option<PathBuf> {
    capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
}

fn nightly_rust_src(report: &mut Report) -> Result<()> {
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
fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".local/share/guard-llvm"))
}

fn bpf_linker(force: bool, report: &mut Report) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Guest kernels

/// Reads a kernel folder's manifest, if it is complete and its vmlinuz exists.
pub fn read_manifest(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(dir.join(paths::KERNEL_MANIFEST)).ok()?;
    let map: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let vmlinuz = map.get("vmlinuz")?;
    dir.join(vmlinuz).is_file().then_some(map)
}

/// The dependency of a meta package (`linux-image-amd64` → `linux-image-6.1.0-57-amd64`).
fn meta_dependency(meta: &str) -> Option<String> {
    let out = capture(Command::new("apt-cache").args(["depends", meta])).ok()?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().to_string())
        .find(|d| d.starts_with("linux-image-"))
}

fn apt_candidate(package: &str) -> Option<String> {
    let out = capture(Command::new("apt-cache").args(["policy", package])).ok()?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .find(|v| v != "(none)")
}

/// Resolves a series to a concrete package and version: the meta package's current target,
/// preferring its `-unsigned` twin (same kernel, no shim/signing dependencies).
fn resolve_kernel(series: &str) -> Option<(String, String)> {
    let image = match series {
        // On Debian 12 the default kernel is the 6.1 series.
        "6.1" => {
            meta_dependency("linux-image-amd64").filter(|d| d.starts_with("linux-image-6.1."))?
        }
        other => meta_dependency(&format!("linux-image-{other}-amd64"))?,
    };
    let unsigned = format!("{image}-unsigned");
    if let Some(version) = apt_candidate(&unsigned) {
        return Some((unsigned, version));
    }
    apt_candidate(&image).map(|version| (image, version))
}

fn guest_kernel(apt: &mut Apt, series: &str, refresh: bool, report: &mut Report) -> Result<()> {
    let root = paths::kernels_dir();
    let dir = root.join(series);
    let step = format!("guest kernel {series}");
    let present = read_manifest(&dir);
    if let Some(manifest) = &present
        && !refresh
    {
        let what = format!(
            "{} {} in {}",
            manifest.get("package").map(String::as_str).unwrap_or("?"),
            manifest.get("version").map(String::as_str).unwrap_or("?"),
            dir.display()
        );
        // Caches from before the vmlinux extraction existed get it now.
        if !manifest.contains_key("vmlinux") && add_vmlinux(&dir, manifest)? {
            report.add(
                &step,
                Outcome::Installed(format!("a PVH vmlinux for {what}")),
            );
        } else {
            report.add(&step, Outcome::Present(what));
        }
        return Ok(());
    }
    // The package lists may be absent on a fresh machine: update once, then resolve again.
    let resolved = match resolve_kernel(series) {
        Some(r) => r,
        None => {
            apt.update()?;
            resolve_kernel(series).ok_or_else(|| {
                anyhow!(
                    "cannot resolve a Debian linux-image package for kernel {series} with apt-cache"
                )
            })?
        }
    };
    let (package, version) = resolved;
    if let Some(manifest) = &present
        && manifest.get("package") == Some(&package)
        && manifest.get("version") == Some(&version)
    {
        if !manifest.contains_key("vmlinux") && add_vmlinux(&dir, manifest)? {
            report.add(
                &step,
                Outcome::Installed(format!("a PVH vmlinux for {package} {version}")),
            );
        } else {
            report.add(
                &step,
                Outcome::Present(format!("{package} {version} (newest)")),
            );
        }
        return Ok(());
    }
    let debs = root.join(".debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let deb = download_deb(apt, &debs, &package, &version)?;
    // Only boot/ is needed: an initramfs guest loads no modules, and they are ~400 MB unpacked.
    let staging = root.join(format!(".{series}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let fsys = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&staging)
        .args(["--wildcards", "./boot/*"])
        .stdin(fsys.stdout.ok_or_else(|| anyhow!("dpkg-deb stdout"))?)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("unpacking boot/ from {} failed ({status})", deb.display());
    }
    let vmlinuz = fs::read_dir(staging.join("boot"))
        .with_context(|| format!("{} has no boot/ folder", deb.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| anyhow!("{} contains no boot/vmlinuz-*", deb.display()))?;
    fs::write(
        staging.join(paths::KERNEL_MANIFEST),
        format!(
            "# written by `cargo xtask setup`\nseries={series}\npackage={package}\nversion={version}\nvmlinuz=boot/{vmlinuz}\ndeb={}\n",
            deb.file_name().unwrap_or_default().to_string_lossy()
        ),
    )?;
    if let Some(manifest) = read_manifest(&staging) {
        add_vmlinux(&staging, &manifest)?;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    report.add(
        &step,
        Outcome::Installed(format!("{package} {version} into {}", dir.display())),
    );
    Ok(())
}

/// Extracts the uncompressed, PVH-bootable vmlinux next to the vmlinuz and records it in the
/// manifest. A kernel without PVH keeps working from its vmlinuz: a warning, not an error.
fn add_vmlinux(dir: &Path, manifest: &BTreeMap<String, String>) -> Result<bool> {
    let Some(vmlinuz) = manifest.get("vmlinuz") else {
        return Ok(false);
    };
    let bzimage = dir.join(vmlinuz);
    let elf = match xtask::vm::kernel::extract_vmlinux(&bzimage) {
        Ok(elf) => elf,
        Err(e) => {
            println!("setup: warning: {e:#}; guests boot the slower vmlinuz");
            return Ok(false);
        }
    };
    let rel = vmlinuz.replacen("vmlinuz-", "vmlinux-", 1);
    let tmp = dir.join(format!("{rel}.partial"));
    fs::write(&tmp, &elf).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(&rel))?;
    let manifest_path = dir.join(paths::KERNEL_MANIFEST);
    let mut text = fs::read_to_string(&manifest_path)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("vmlinux={rel}\n"));
    fs::write(&manifest_path, text)?;
    println!(
        "setup: extracted {} ({} MiB) for a direct PVH boot",
        dir.join(&rel).display(),
        elf.len() >> 20
    );
    Ok(true)
}

fn download_deb(apt: &mut Apt, debs: &Path, package: &str, version: &str) -> Result<PathBuf> {
    // apt-get download names files <package>_<version with ':' as %3a>_<arch>.deb.
    let find = || -> Option<PathBuf> {
        let quoted = version.replace(':', "%3a");
        let prefix = format!("{package}_{quoted}_");
        fs::read_dir(debs)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        println!("setup: using cached {}", deb.display());
        return Ok(deb);
    }
    let download = |dir: &Path| {
        run_cmd(
            Command::new("apt-get")
                // Downloading into a root-owned folder: without this apt warns that its
                // unprivileged `_apt` user cannot write there.
                .args(["-o", "APT::Sandbox::User=root"])
                .args(["download", "-q", &format!("{package}={version}")])
                .current_dir(dir),
        )
    };
    if download(debs).is_err() {
        // Stale lists give 404s: refresh once and retry.
        apt.update()?;
        download(debs)?;
    }
    find().ok_or_else(|| {
        anyhow!(
            "apt-get download {package} left no .deb in {}",
            debs.display()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// process helpers

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited output, failing on a non-zero exit.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("setup: $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, failing on a non-zero exit.
fn capture(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

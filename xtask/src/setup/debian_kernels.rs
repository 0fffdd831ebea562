//! Debian guest kernels: resolved with apt-cache, downloaded, unpacked, a PVH vmlinux
//! extracted, described by a manifest.
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

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
pub(super) fn meta_dependency(meta: &str) -> Option<String> {
    let out = capture(Command::new("apt-cache").args(["depends", meta])).ok()?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().to_string())
        .find(|d| d.starts_with("linux-image-"))
}

pub(super) fn apt_candidate(package: &str) -> Option<String> {
    let out = capture(Command::new("apt-cache").args(["policy", package])).ok()?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .find(|v| v != "(none)")
}

/// Resolves a series to a concrete package and version: the meta package's current target,
/// preferring its `-unsigned` twin (same kernel, no shim/signing dependencies).
pub(super) fn resolve_kernel(series: &str) -> Option<(String, String)> {
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

pub(super) fn guest_kernel(
    apt: &mut Apt,
    series: &str,
    refresh: bool,
    report: &mut Report,
) -> Result<()> {
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
        // Caches from before the vmlinux extraction (or the vsock modules) existed get it now.
        if !manifest.contains_key("vmlinux") && add_vmlinux(&dir, manifest)? {
            report.add(
                &step,
                Outcome::Installed(format!("a PVH vmlinux for {what}")),
            );
        } else if add_vsock_modules(&root, &dir, manifest)? {
            report.add(
                &step,
                Outcome::Installed(format!("the vsock modules for {what}")),
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
        } else if add_vsock_modules(&root, &dir, manifest)? {
            report.add(
                &step,
                Outcome::Installed(format!("the vsock modules for {package} {version}")),
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
    // Only boot/ is needed here (the modules are ~400 MB unpacked); the vsock tests' few
    // modules are taken out below.
    let staging = root.join(format!(".{series}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    unpack_deb(&deb, &staging, &["./boot/*"])?;
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
    if let Some(manifest) = read_manifest(&staging) {
        add_vsock_modules(&root, &staging, &manifest)?;
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

/// Unpacks the files of `deb` matching `patterns` (tar wildcards) into `into`.
pub(super) fn unpack_deb(deb: &Path, into: &Path, patterns: &[&str]) -> Result<()> {
    let fsys = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .arg("--wildcards")
        .args(patterns)
        .stdin(fsys.stdout.ok_or_else(|| anyhow!("dpkg-deb stdout"))?)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!(
            "unpacking {} from {} failed ({status})",
            patterns.join(" "),
            deb.display()
        );
    }
    Ok(())
}

/// Extracts the uncompressed, PVH-bootable vmlinux next to the vmlinuz and records it in the
/// manifest. A kernel without PVH keeps working from its vmlinuz: a warning, not an error.
pub(super) fn add_vmlinux(dir: &Path, manifest: &BTreeMap<String, String>) -> Result<bool> {
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

pub(super) fn download_deb(
    apt: &mut Apt,
    debs: &Path,
    package: &str,
    version: &str,
) -> Result<PathBuf> {
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

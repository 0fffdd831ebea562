//! guard's lean guest kernels, built from Debian's `linux-source-6.12` (the series libkrunfw
//! ships): `lean` is libkrunfw's config plus what the QEMU harness needs; `lean-guard` adds the
//! fragment an operator puts in their own kernel to give guard its BPF tiers (`kernels/` in the
//! repository; docs/KERNELS.md says what each line is for).
//!
//! A build takes minutes, so each kernel is cached under a hash of the source version, the
//! configs and this build recipe: in the kernel cache (`$GUARD_KERNEL_CACHE`, else
//! `~/.cache/guard/kernels`), which may outlive a clone, and installed from there into the
//! harness's kernel folder. A fresh machine or a changed config builds it again.
use anyhow::{Context as _, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::apt::{Apt, run_root};
use super::debian_kernels::{apt_candidate, download_deb};
use super::process::run_cmd;
use super::{Outcome, Report};
use xtask::paths;
use xtask::progress::{Progress, Total};

/// A kernel guard builds: its name in the harness and the fragments on top of the base config.
pub(super) struct LeanKernel {
    pub name: &'static str,
    pub fragments: &'static [&'static str],
    /// Why it exists, for setup's output.
    pub purpose: &'static str,
}

pub(super) const LEAN_KERNELS: &[LeanKernel] = &[
    LeanKernel {
        name: "lean",
        fragments: &["harness.config"],
        purpose: "libkrunfw's config: no tracing, guard at tier 1 (kernel sources)",
    },
    LeanKernel {
        name: "lean-guard",
        fragments: &["harness.config", "guard.config"],
        purpose: "lean plus kernels/guard.config: guard's BPF tiers",
    },
];

/// libkrunfw's x86_64 config, kept in the repository.
const BASE_CONFIG: &str = "libkrunfw-x86_64.config";
const SOURCE_PACKAGE: &str = "linux-source-6.12";
/// What `make` needs beyond gcc: parsers for Kconfig, bc for timeconst, libelf for objtool.
pub(super) const BUILD_PACKAGES: &[&str] = &["flex", "bison", "bc", "libelf-dev", "libssl-dev"];
/// Bumped whenever the way a kernel is built changes, so every cache entry is rebuilt.
const RECIPE: &str = "make olddefconfig; make vmlinux bzImage; v1";
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The kernel cache: sources and finished builds, keyed by hash.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GUARD_KERNEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/guard/kernels")
}

fn configs_dir() -> PathBuf {
    paths::workspace_root().join("kernels")
}

/// Builds (or finds) every lean kernel and installs it into the harness's kernel folder.
pub(super) fn lean_kernels(apt: &mut Apt, rebuild: bool, report: &mut Report) -> Result<()> {
    let version = match apt_candidate(SOURCE_PACKAGE) {
        Some(version) => version,
        None => {
            apt.update()?;
            apt_candidate(SOURCE_PACKAGE)
                .ok_or_else(|| anyhow!("apt offers no {SOURCE_PACKAGE} package"))?
        }
    };
    let mut source = None;
    for kernel in LEAN_KERNELS {
        let step = format!("guest kernel {}", kernel.name);
        let key = config_key(&version, kernel)?;
        let installed = paths::kernels_dir().join(kernel.name);
        if !rebuild && manifest_key(&installed).as_deref() == Some(key.as_str()) {
            report.add(
                &step,
                Outcome::Present(format!(
                    "{} ({}), built from {SOURCE_PACKAGE} {version}",
                    kernel.name, kernel.purpose
                )),
            );
            continue;
        }
        let cached = cache_dir()
            .join("builds")
            .join(format!("{}-{}", kernel.name, &key[..16]));
        let from_cache = !rebuild && cached.join("vmlinux").is_file();
        if !from_cache {
            let tree = match &source {
                Some(tree) => tree,
                None => source.insert(ensure_source(apt, &version)?),
            };
            build(tree, kernel, &cached)?;
        }
        install(&cached, &installed, kernel, &version, &key)?;
        let how = if from_cache {
            format!("from the kernel cache {}", cached.display())
        } else {
            "built now".to_string()
        };
        report.add(
            &step,
            Outcome::Installed(format!("{} ({}), {how}", kernel.name, kernel.purpose)),
        );
    }
    Ok(())
}

/// The hash that names a build: source version, every config file's bytes, the recipe.
fn config_key(version: &str, kernel: &LeanKernel) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!("{SOURCE_PACKAGE} {version}\n{RECIPE}\n"));
    for name in std::iter::once(&BASE_CONFIG).chain(kernel.fragments) {
        let path = configs_dir().join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(name.as_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn manifest_key(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(paths::KERNEL_MANIFEST)).ok()?;
    let map: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    dir.join(map.get("vmlinux")?)
        .is_file()
        .then(|| map.get("config_hash").map(|k| k.to_string()))?
}

/// The unpacked kernel source of `version`, downloading and unpacking it once.
fn ensure_source(apt: &mut Apt, version: &str) -> Result<PathBuf> {
    let tree = cache_dir()
        .join("src")
        .join(version.replace(['~', ':'], "_"));
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|p| !super::apt::dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        apt.update()?;
        run_root(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let deb = download_deb(apt, &debs, SOURCE_PACKAGE, version)?;
    // Not with_extension: the version has dots of its own.
    let staging = partial(&tree);
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    println!("setup: unpacking {SOURCE_PACKAGE} {version} (a 150 MB tarball; about a minute)");
    let unpacked = staging.join("deb");
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let tarball = unpacked.join("usr/src/linux-source-6.12.tar.xz");
    run_cmd(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&staging)
            .arg("--strip-components=1"),
    )?;
    fs::remove_dir_all(&unpacked)?;
    if !staging.join("Makefile").is_file() {
        bail!("{} holds no kernel tree", tarball.display());
    }
    let _ = fs::remove_dir_all(&tree);
    fs::rename(&staging, &tree)?;
    Ok(tree)
}

/// One config line of a fragment: `CONFIG_X=value` or `# CONFIG_X is not set`.
fn fragment_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# CONFIG_")
                && let Some(name) = rest.strip_suffix(" is not set")
            {
                return Some((format!("CONFIG_{name}"), "n".to_string()));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// What a .config says of each option (`n` for "is not set" or absent).
fn config_values(text: &str) -> BTreeMap<String, String> {
    fragment_lines(text).into_iter().collect()
}

/// Configures and builds one kernel into `out` (vmlinux, bzImage, .config, build.log).
fn build(tree: &Path, kernel: &LeanKernel, out: &Path) -> Result<()> {
    let work = partial(out);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let log_path = work.join("build.log");
    println!(
        "setup: building guest kernel {} ({}): about 6 minutes on 2 cores; log in {}",
        kernel.name,
        kernel.purpose,
        log_path.display()
    );
    let started = Instant::now();
    let mut merge = Command::new("sh");
    merge
        .current_dir(tree)
        .arg("scripts/kconfig/merge_config.sh")
        .args(["-m", "-O"])
        .arg(&work)
        .arg(configs_dir().join(BASE_CONFIG));
    for fragment in kernel.fragments {
        merge.arg(configs_dir().join(fragment));
    }
    make_logged(&mut merge, &log_path, "merging configs")?;
    make_logged(
        make(tree, &work).arg("olddefconfig"),
        &log_path,
        "make olddefconfig",
    )?;
    check_fragments(kernel, &work.join(".config"))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    make_logged(
        make(tree, &work)
            .arg(format!("-j{jobs}"))
            .args(["vmlinux", "bzImage"]),
        &log_path,
        "make vmlinux bzImage",
    )?;
    let vmlinux = fs::read(work.join("vmlinux"))?;
    xtask::vm::kernel::check_elf(&vmlinux)
        .context("the built vmlinux cannot be booted directly")?;
    // Keep the images, the config and the log; the object tree is gigabytes.
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    fs::rename(work.join("vmlinux"), out.join("vmlinux"))?;
    fs::copy(work.join("arch/x86/boot/bzImage"), out.join("bzImage"))?;
    fs::copy(work.join(".config"), out.join("config"))?;
    fs::copy(&log_path, out.join("build.log"))?;
    fs::write(
        out.join("build-seconds"),
        format!("{:.0}\n", started.elapsed().as_secs_f64()),
    )?;
    fs::remove_dir_all(&work)?;
    println!(
        "setup: built {} in {:.0} s",
        kernel.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where a directory is put together before it is renamed into place (a crash leaves no
/// half-built directory under the real name).
fn partial(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dir.with_file_name(name)
}

fn make(tree: &Path, out: &Path) -> Command {
    let mut command = Command::new("make");
    command
        .arg("-C")
        .arg(tree)
        .arg(format!("O={}", out.display()));
    command
}

/// Every line of the kernel's fragments must hold in the final config: an option whose
/// dependency is missing is silently dropped by Kconfig, and the kernel would lack it.
fn check_fragments(kernel: &LeanKernel, config: &Path) -> Result<()> {
    let built = config_values(&fs::read_to_string(config)?);
    let mut dropped = Vec::new();
    for fragment in kernel.fragments {
        let path = configs_dir().join(fragment);
        for (name, want) in fragment_lines(&fs::read_to_string(&path)?) {
            let got = built.get(&name).map_or("n", String::as_str);
            if got != want {
                dropped.push(format!("{name}={want} ({fragment}) became {got}"));
            }
        }
    }
    if !dropped.is_empty() {
        bail!(
            "kernel {}: Kconfig did not take {} line(s), a dependency is missing: {}",
            kernel.name,
            dropped.len(),
            dropped.join("; ")
        );
    }
    Ok(())
}

/// Runs a build step with its output into `log`, printing a progress line every 30 s; on
/// failure the error carries the log's last lines.
fn make_logged(command: &mut Command, log: &Path, what: &str) -> Result<()> {
    let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    // A kernel build takes about 6 minutes on 2 cores here: the bar fills with that.
    let total = if what.contains("bzImage") {
        Total::Expected(Duration::from_secs(6 * 60))
    } else {
        Total::Unknown
    };
    let mut progress =
        Progress::with_plain_every(format!("setup:   {what}"), total, PROGRESS_EVERY);
    let mut log_file = std::io::LineWriter::new(file);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        use std::io::Write as _;
        let _ = writeln!(log_file, "{line}");
        progress.update(0, &format!("at {}", line.trim()));
    }
    progress.clear();
    let status = child.wait()?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        bail!(
            "{what} failed ({status}); the end of {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Puts a cached build into the harness's kernel folder, with its manifest.
fn install(cached: &Path, dir: &Path, kernel: &LeanKernel, version: &str, key: &str) -> Result<()> {
    let staging = partial(dir);
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    for file in ["vmlinux", "bzImage", "config"] {
        let from = cached.join(file);
        let to = staging.join(file);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let bzimage_bytes = fs::metadata(cached.join("bzImage"))?.len();
    let build_seconds = fs::read_to_string(cached.join("build-seconds")).unwrap_or_default();
    let manifest = format!(
        "package={SOURCE_PACKAGE}\nversion={version}\nkernel={}\nfragments={}\nvmlinux=vmlinux\n\
         vmlinuz=bzImage\nconfig=config\nmachine=microvm\nconfig_hash={key}\n\
         bzimage_bytes={bzimage_bytes}\nbuild_seconds={}\n",
        kernel.name,
        kernel.fragments.join(" "),
        build_seconds.trim()
    );
    fs::write(staging.join(paths::KERNEL_MANIFEST), manifest)?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staging, dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_lines_read_both_forms_and_skip_comments() {
        let text = "# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n\nFOO=1\n";
        assert_eq!(
            fragment_lines(text),
            [
                ("CONFIG_A".to_string(), "y".to_string()),
                ("CONFIG_B".to_string(), "n".to_string()),
                ("CONFIG_C".to_string(), "\"x\"".to_string())
            ]
        );
    }

    #[test]
    fn every_kernel_names_existing_configs() {
        for kernel in LEAN_KERNELS {
            for name in std::iter::once(&BASE_CONFIG).chain(kernel.fragments) {
                assert!(configs_dir().join(name).is_file(), "kernels/{name}");
            }
            assert_eq!(config_key("1", kernel).unwrap().len(), 64);
        }
        assert_ne!(
            config_key("1", &LEAN_KERNELS[0]).unwrap(),
            config_key("1", &LEAN_KERNELS[1]).unwrap()
        );
    }
}

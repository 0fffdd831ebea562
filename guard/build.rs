//! Puts guard's eBPF object in `OUT_DIR/guard-ebpf`, where the library embeds it (tests and
//! the binary load the very same bytes), one of two ways:
//!
//! - from source (the default): guard-ebpf built for the bpf target with nightly,
//!   `-Z build-std=core` and bpf-linker (`build/ebpf.rs`, aya-build's command). The child
//!   build's output is shown only when it fails, so a good build replays no warnings.
//! - prebuilt: `GUARD_EBPF_OBJECT` names an object (`cargo xtask ebpf-object` makes one),
//!   checked against its SHA-256 (`build/prebuilt.rs`). No eBPF build runs then: neither
//!   nightly nor bpf-linker is needed.
//!
//! Either way this run writes the file: an object left in OUT_DIR by an earlier run is
//! removed first, so a skipped or failed build can never embed it.
use std::{env, fs, io::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

#[path = "build/ebpf.rs"]
mod ebpf;
#[path = "build/prebuilt.rs"]
mod prebuilt;

/// aya-build's switch for host-only builds; guard cannot build without an object, so it only
/// means "use the prebuilt one".
const AYA_BUILD_SKIP: &str = "AYA_BUILD_SKIP";

fn main() {
    // Printed by hand: anyhow's `Error: …` from main would add a backtrace when
    // RUST_BACKTRACE is set, burying the message.
    if let Err(error) = run() {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed={}", prebuilt::OBJECT_ENV);
    println!("cargo::rerun-if-env-changed={}", prebuilt::SHA256_ENV);
    println!("cargo::rerun-if-env-changed={AYA_BUILD_SKIP}");
    println!("cargo::rustc-check-cfg=cfg(guard_ebpf_prebuilt)");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let dest = out_dir.join(ebpf::PACKAGE);
    let log = out_dir.join(ebpf::BUILD_LOG);
    for old in [&dest, &log] {
        match fs::remove_file(old) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing the old {}", old.display()));
            }
            _ => {}
        }
    }

    let object = match env::var_os(prebuilt::OBJECT_ENV).filter(|path| !path.is_empty()) {
        Some(path) => {
            let object = prebuilt::read_verified(&PathBuf::from(path), &target_endian()?)?;
            println!("cargo::rustc-cfg=guard_ebpf_prebuilt");
            object
        }
        None if skip_requested() => bail!(
            "{AYA_BUILD_SKIP} is set, but guard cannot be built without its eBPF object: set \
             {}=/absolute/path/guard-ebpf to a prebuilt object (`cargo xtask ebpf-object --out \
             DIR` makes one, with its .sha256), or unset {AYA_BUILD_SKIP} to build it from \
             source (nightly, rust-src and bpf-linker: `cargo xtask setup`). See \"Building \
             guard as a dependency\" in guard's README.",
            prebuilt::OBJECT_ENV
        ),
        None => from_source(&out_dir)?,
    };
    fs::write(&dest, &object).with_context(|| format!("writing {}", dest.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&object));
    println!("cargo::rustc-env=GUARD_EBPF_OBJECT_BUILT_SHA256={sha256}");
    Ok(())
}

/// aya-build's reading of AYA_BUILD_SKIP: `1` or `true`.
fn skip_requested() -> bool {
    env::var_os(AYA_BUILD_SKIP)
        .is_some_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
}

fn target_endian() -> anyhow::Result<String> {
    env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")
}

/// Builds guard-ebpf, which sits beside this crate in guard's workspace. Its output goes to a
/// log in OUT_DIR; on failure it is printed too (cargo shows a failed build script's stderr).
fn from_source(out_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir);
    let package_dir = workspace.join(ebpf::PACKAGE);
    if !package_dir.join("Cargo.toml").is_file() {
        bail!(
            "{} is not there: building guard's eBPF object from source needs guard's whole \
             workspace. Build against a prebuilt object instead: {}=/absolute/path/guard-ebpf \
             (see \"Building guard as a dependency\" in guard's README).",
            package_dir.display(),
            prebuilt::OBJECT_ENV
        );
    }
    // The programs, the ABI they share with the library, and the lock file that holds their
    // dependencies' versions: editing any of them rebuilds the object.
    println!("cargo::rerun-if-changed={}", package_dir.display());
    // Only if there: cargo reruns a script on every build for a path that does not exist.
    for path in [workspace.join("guard-common"), workspace.join("Cargo.lock")] {
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target_endian = target_endian()?;
    // aya-build's layout, so the child reuses what earlier builds of this crate left there.
    let target_dir = out_dir.join("aya-build").join("target").join(ebpf::PACKAGE);
    let spec = ebpf::EbpfBuild {
        package_dir: &package_dir,
        target_dir: &target_dir,
        target_arch: &target_arch,
        target_endian: &target_endian,
        echo: false,
    };
    let mut output = Vec::new();
    let result = ebpf::build(&spec, &mut output);
    let log = out_dir.join(ebpf::BUILD_LOG);
    fs::write(&log, output.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    let built = match result {
        Ok(built) => built,
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            for line in &output {
                let _ = writeln!(stderr, "{line}");
            }
            let shown = if output.is_empty() {
                String::new()
            } else {
                format!(" (its output is above and in {})", log.display())
            };
            return Err(error.context(format!(
                "building guard's eBPF object from source failed{shown}. It needs the \
                 nightly toolchain with rust-src and bpf-linker on PATH (`cargo xtask setup` \
                 installs them); or build against a prebuilt object: {}=/absolute/path/\
                 guard-ebpf (see \"Building guard as a dependency\" in guard's README)",
                prebuilt::OBJECT_ENV
            )));
        }
    };
    fs::read(&built).with_context(|| format!("reading {}", built.display()))
}

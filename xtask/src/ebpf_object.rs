//! `cargo xtask ebpf-object`: guard's eBPF object and its SHA-256, for building guard without
//! nightly or bpf-linker (`GUARD_EBPF_OBJECT`, README "Building guard as a dependency").
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

// guard's build script builds the object with this very file: xtask does not depend on guard
// (its build script would need the bpf-linker setup installs), so it includes the source.
#[path = "../../guard/build/ebpf.rs"]
mod guard_ebpf_build;

use guard_ebpf_build::{BUILD_LOG, PACKAGE};

/// This machine's byte order, as CARGO_CFG_TARGET_ENDIAN names it.
const HOST_ENDIAN: &str = if cfg!(target_endian = "big") {
    "big"
} else {
    "little"
};

#[derive(clap::Args)]
#[command(
    about = "Build guard's eBPF object the way guard/build.rs does and write it with its \
             SHA-256 (DIR/guard-ebpf, DIR/guard-ebpf.sha256), for GUARD_EBPF_OBJECT",
    long_about = "Build guard's eBPF object the way guard/build.rs does (the same code: nightly, \
-Z build-std=core, bpf-linker; `cargo xtask setup` installs them) and write it with its SHA-256: \
DIR/guard-ebpf and DIR/guard-ebpf.sha256 (sha256sum format). Cache both in an agent's CI, then \
build guard with GUARD_EBPF_OBJECT=/absolute/DIR/guard-ebpf: its build script checks the hash \
and needs neither nightly, bpf-linker nor this workspace's eBPF build (README, \"Building guard \
as a dependency\").\n\n\
The object is built for one target: the arch and byte order of the machine that loads it (the \
programs read registers by its layout). Both default to this machine's."
)]
pub struct EbpfObjectArgs {
    /// Folder for guard-ebpf and guard-ebpf.sha256 (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The loading machine's arch, as Rust names it (CARGO_CFG_TARGET_ARCH: x86_64, aarch64…).
    #[arg(long, default_value = std::env::consts::ARCH)]
    pub target_arch: String,
    /// The loading machine's byte order.
    #[arg(long, default_value = HOST_ENDIAN, value_parser = ["little", "big"])]
    pub target_endian: String,
    /// The child cargo's target dir, kept between runs so a second build is quick. Without it
    /// the build happens in a temporary folder, removed at the end: nothing is written
    /// outside --out (the eBPF build takes a minute or two each time then).
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
}

pub fn run(args: &EbpfObjectArgs) -> anyhow::Result<()> {
    let (object, sha256) = match &args.target_dir {
        Some(target_dir) => build(args, target_dir, true)?,
        None => {
            let scratch =
                std::env::temp_dir().join(format!("guard-ebpf-object-{}", std::process::id()));
            let built = build(args, &scratch, true);
            if let Err(error) = std::fs::remove_dir_all(&scratch)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!(
                    "ebpf-object: could not remove {}: {error}",
                    scratch.display()
                );
            }
            built?
        }
    };
    println!(
        "ebpf-object: {} ({} bytes), sha256 {sha256}\n\
         build guard against it with:\n  GUARD_EBPF_OBJECT={} cargo build -p guard",
        object.display(),
        std::fs::metadata(&object)
            .map(|meta| meta.len())
            .unwrap_or(0),
        object.display()
    );
    Ok(())
}

/// Builds the object into `args.out` (its path made absolute) with its `.sha256` beside it and
/// returns the object's path and hash. `echo` shows the child build's output as it comes;
/// otherwise it is printed only if the build fails.
pub fn build(
    args: &EbpfObjectArgs,
    target_dir: &Path,
    echo: bool,
) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    let package_dir = xtask::paths::workspace_root().join(PACKAGE);
    let spec = guard_ebpf_build::EbpfBuild {
        package_dir: &package_dir,
        target_dir,
        target_arch: &args.target_arch,
        target_endian: &args.target_endian,
        echo,
    };
    let mut output = Vec::new();
    let built = match guard_ebpf_build::build(&spec, &mut output) {
        Ok(built) => built,
        Err(error) => {
            if !echo {
                for line in &output {
                    eprintln!("{line}");
                }
            }
            return Err(error.context(
                "building guard's eBPF object failed (nightly, rust-src and bpf-linker: \
                 `cargo xtask setup` installs them)",
            ));
        }
    };
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let object = out.join(PACKAGE);
    // Each written whole, then renamed: a cache never holds half a file (and a stop between
    // the two leaves a mismatch that guard's build refuses).
    write_atomically(&object, &bytes)?;
    write_atomically(
        &out.join(format!("{PACKAGE}.sha256")),
        format!("{sha256}  {PACKAGE}\n").as_bytes(),
    )?;
    Ok((object, sha256))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let Some(name) = path.file_name() else {
        bail!("{} has no file name", path.display());
    };
    let mut partial = name.to_owned();
    partial.push(".partial");
    let partial = path.with_file_name(partial);
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

/// The object CI's prebuilt checks use, in `<target>/ebpf-object-check/object`: built with the
/// child target dir of guard's latest source build (then all fresh, a second), and checked
/// to be byte for byte the object that build embedded. Returns its path and hash.
pub fn object_for_checks() -> anyhow::Result<(PathBuf, String)> {
    let scratch = xtask::paths::target_dir().join("ebpf-object-check");
    // The child target dir of guard's latest source build: the same command finds it all
    // fresh (a second, where a dir of its own would rebuild core for bpf, most of a minute).
    let last = last_source_build();
    let child_target = match &last {
        Some(out_dir) => out_dir.join("aya-build").join("target").join(PACKAGE),
        None => xtask::paths::target_dir().join("ebpf-object"),
    };
    let args = EbpfObjectArgs {
        out: scratch.join("object"),
        target_arch: std::env::consts::ARCH.to_string(),
        target_endian: HOST_ENDIAN.to_string(),
        target_dir: None,
    };
    let (object, sha256) = build(&args, &child_target, false)?;
    println!("prebuilt: {} sha256 {sha256}", object.display());
    let embedded = last.map(|out_dir| out_dir.join(PACKAGE));
    if let Some(embedded) = embedded.filter(|path| path.is_file()) {
        let embedded_sha256 = format!("{:x}", Sha256::digest(std::fs::read(&embedded)?));
        if embedded_sha256 != sha256 {
            bail!(
                "{} (guard's build script) has sha256 {embedded_sha256}, but the xtask built \
                 {sha256} with the same command",
                embedded.display()
            );
        }
        println!("prebuilt: the same bytes as {}", embedded.display());
    }
    Ok((object, sha256))
}

/// CI: guard builds against a prebuilt object with neither nightly nor bpf-linker (stand-ins
/// for `rustup` and `bpf-linker` that fail lead PATH), quietly; a wrong hash, a missing hash
/// and AYA_BUILD_SKIP alone each fail with their message. The object is the one guard's own
/// build script made, byte for byte. Returns the object's path.
pub fn check_prebuilt() -> anyhow::Result<PathBuf> {
    let scratch = xtask::paths::target_dir().join("ebpf-object-check");
    let (object, sha256) = object_for_checks()?;
    let object_path = object.clone();
    let stand_ins = scratch.join("bin");
    let invoked = scratch.join("invoked");
    std::fs::create_dir_all(&stand_ins)?;
    let _ = std::fs::remove_file(&invoked);
    for tool in ["rustup", "bpf-linker"] {
        let script = stand_ins.join(tool);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\necho '{tool}: the prebuilt path must \
                 not run this' >&2\nexit 1\n",
                invoked.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let path = std::env::join_paths(std::iter::once(stand_ins.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let no_hash = scratch.join("no-hash");
    std::fs::create_dir_all(&no_hash)?;
    std::fs::copy(&object, no_hash.join(PACKAGE))?;
    let object = object.to_string_lossy().into_owned();
    let unhashed = no_hash.join(PACKAGE).to_string_lossy().into_owned();
    let zeros = "0".repeat(64);

    let ok = check_guard(&path, &[("GUARD_EBPF_OBJECT", &object)], None)?;
    if ok.contains("warning: guard@") {
        bail!("the prebuilt build printed build script warnings:\n{ok}");
    }
    if let Ok(calls) = std::fs::read_to_string(&invoked) {
        bail!("the prebuilt build ran what it must not:\n{calls}");
    }
    let cases: [(&[(&str, &str)], String); 3] = [
        (
            &[
                ("GUARD_EBPF_OBJECT", &object),
                ("GUARD_EBPF_OBJECT_SHA256", &zeros),
            ],
            format!(
                "GUARD_EBPF_OBJECT={object}: SHA-256 mismatch: expected {zeros} (from \
                 GUARD_EBPF_OBJECT_SHA256), actual {sha256}."
            ),
        ),
        (
            &[("GUARD_EBPF_OBJECT", &unhashed)],
            format!(
                "GUARD_EBPF_OBJECT={unhashed}: no expected SHA-256 (its actual SHA-256 is \
                 {sha256})"
            ),
        ),
        (
            &[("AYA_BUILD_SKIP", "1")],
            "error: AYA_BUILD_SKIP is set, but guard cannot be built without its eBPF object: \
             set GUARD_EBPF_OBJECT="
                .to_string(),
        ),
    ];
    for (env, message) in &cases {
        check_guard(&path, env, Some(message))?;
    }
    Ok(object_path)
}

/// `cargo check -p guard` with `env` on top of a clean one and `path` as PATH; succeeds
/// (`expect_error` None) or fails with that message. Returns its stderr. Feature
/// `fault-injection` alone gives guard a build of its own that no other CI step uses: these
/// runs never make the others rebuild.
fn check_guard(
    path: &std::ffi::OsStr,
    env: &[(&str, &str)],
    expect_error: Option<&str>,
) -> anyhow::Result<String> {
    let mut command = crate::cmd::cargo();
    command
        .args(["check", "-p", "guard", "--features", "fault-injection"])
        .env("PATH", path);
    for name in [
        "GUARD_EBPF_OBJECT",
        "GUARD_EBPF_OBJECT_SHA256",
        "AYA_BUILD_SKIP",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let shown = env
        .iter()
        .map(|(name, value)| format!("{name}={value} "))
        .collect::<String>();
    println!("==> {shown}{}", crate::cmd::describe(&command));
    let output = command.output().context("running cargo check")?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match (expect_error, output.status.success()) {
        (None, true) => Ok(stderr),
        (Some(message), false) if stderr.contains(message) => Ok(stderr),
        (None, false) => bail!("guard did not build ({}):\n{stderr}", output.status),
        (Some(message), true) => bail!("guard built, but should have failed with {message:?}"),
        (Some(message), false) => bail!("guard failed, but without {message:?}:\n{stderr}"),
    }
}

/// The OUT_DIR of guard's latest source build: the one whose build log (written by every
/// source build, removed by a prebuilt one) is newest, in the debug or release build.
fn last_source_build() -> Option<PathBuf> {
    let target = xtask::paths::target_dir();
    ["debug", "release"]
        .iter()
        .filter_map(|profile| std::fs::read_dir(target.join(profile).join("build")).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("guard-"))
        .map(|entry| entry.path().join("out"))
        .filter_map(|out_dir| {
            let log = out_dir.join(BUILD_LOG);
            Some((log.metadata().ok()?.modified().ok()?, out_dir))
        })
        .max()
        .map(|(_, out_dir)| out_dir)
}

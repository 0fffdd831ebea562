//! An agent outside guard's workspace, as guard's dependents build it (`tests/dependent/`:
//! its own manifest and workspace, no lock file of guard's, the stable toolchain, a prebuilt
//! eBPF object). CI builds it and runs it on the host: its start must open no vmlinux BTF
//! (strace) and its peak memory must stay within [`PEAK_OVER_IDLE_KIB`] of its idle memory.
//! The git and registry forms of the same dependency are checked to resolve to guard's
//! vendored loader (`forms.rs`).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod forms;
mod run;

pub use run::run_on_host;

/// The dependent crate, relative to the workspace root.
pub const CRATE_DIR: &str = "tests/dependent";
/// Its program (guard's monitoring example).
pub const BINARY: &str = "monitor";
/// How far the peak RSS may rise above the idle RSS (the acceptance bound of issue 33: the
/// stock loader's BTF parse put it ~17 MiB above).
pub const PEAK_OVER_IDLE_KIB: u64 = 2 * 1024;
/// The toolchain the README names for building against a prebuilt object.
const TOOLCHAIN: &str = "stable";
/// Crates of the eBPF toolchain: a prebuilt object's build compiles none of them.
const EBPF_TOOLCHAIN_CRATES: &[&str] = &[
    "guard-ebpf",
    "aya-ebpf",
    "aya-ebpf-bindings",
    "aya-ebpf-cty",
    "aya-ebpf-macros",
    "aya-build",
    "aya-log-ebpf",
    "aya-log-ebpf-macros",
    "aya-log-parser",
    "which",
];

/// What building the dependent took.
pub struct Built {
    pub binary: PathBuf,
    /// Packages in its build (each counted once).
    pub crates: usize,
    /// Of those, compiled by this build (the rest were fresh from an earlier one).
    pub compiled: usize,
    pub elapsed: Duration,
    pub binary_bytes: u64,
    pub rustc: String,
}

/// Builds the dependent in release with a fresh resolution (its lock file removed first),
/// the stable toolchain and `object` as `GUARD_EBPF_OBJECT`, into `<target>/dependent`.
/// Fails when the build compiles a crate of the eBPF toolchain, runs `rustup` or
/// `bpf-linker` from a build script, or resolves a stock aya beside guard's.
pub fn build(object: &Path) -> anyhow::Result<Built> {
    let dir = xtask::paths::workspace_root().join(CRATE_DIR);
    let lock = dir.join("Cargo.lock");
    match std::fs::remove_file(&lock) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing {}", lock.display()));
        }
        _ => {}
    }
    let target = target_dir();
    let stand_ins = stand_ins(&target)?;
    let mut command = stable_cargo(&stand_ins)?;
    command
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("GUARD_EBPF_OBJECT", object)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!(
        "==> GUARD_EBPF_OBJECT={} {}",
        object.display(),
        crate::cmd::describe(&command)
    );
    let started = Instant::now();
    let output = command
        .output()
        .context("running the dependent's cargo build")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "the dependent ({CRATE_DIR}) did not build on {TOOLCHAIN} ({}): its fresh \
             resolution or guard's prebuilt-object build is broken",
            output.status
        );
    }
    if let Ok(calls) = std::fs::read_to_string(stand_ins.join("invoked")) {
        bail!("the dependent's build ran what a prebuilt object's must not:\n{calls}");
    }
    let (packages, compiled) = artifacts(&String::from_utf8_lossy(&output.stdout));
    let toolchain: Vec<&String> = packages
        .iter()
        .filter(|name| EBPF_TOOLCHAIN_CRATES.contains(&name.as_str()))
        .collect();
    if !toolchain.is_empty() {
        bail!("the dependent's build compiled eBPF toolchain crates: {toolchain:?}");
    }
    forms::check_lock(&lock)?;
    let binary = target.join("release").join(BINARY);
    let binary_bytes = std::fs::metadata(&binary)
        .with_context(|| format!("{}", binary.display()))?
        .len();
    let rustc = stdout_of(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "-V"]))?;
    Ok(Built {
        binary,
        crates: packages.len(),
        compiled,
        elapsed,
        binary_bytes,
        rustc: rustc.trim().to_string(),
    })
}

/// The whole check CI runs: build, the git and registry forms, the run on the host.
pub fn check(object: &Path) -> anyhow::Result<()> {
    let built = build(object)?;
    println!(
        "dependent: {} crates ({} compiled now) in {:.1?} with {}; {} is {:.1} MB",
        built.crates,
        built.compiled,
        built.elapsed,
        built.rustc,
        built.binary.display(),
        built.binary_bytes as f64 / 1e6
    );
    forms::check_git()?;
    forms::check_registry(object)?;
    match run_on_host(&built.binary)? {
        Some(footprint) => println!("dependent: {footprint}"),
        None => println!("note: not root: the dependent's run on the host is skipped"),
    }
    Ok(())
}

/// The dependent's own target dir (beside guard's builds, never mixed with them).
fn target_dir() -> PathBuf {
    xtask::paths::target_dir().join("dependent")
}

/// `cargo` of the stable toolchain, with PATH led by `stand_ins` and the parent cargo's
/// settings removed (the dependent is a build of its own).
fn stable_cargo(stand_ins: &Path) -> anyhow::Result<Command> {
    let path = std::env::join_paths(std::iter::once(stand_ins.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    // Found on the caller's PATH: a Command looks its program up on the PATH it is given.
    let mut command = Command::new(find_in_path("rustup").context("rustup is not on PATH")?);
    command.args(["run", TOOLCHAIN, "cargo"]).env("PATH", path);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let inherited = [
            "RUSTC",
            "RUSTDOC",
            "RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "GUARD_EBPF_OBJECT",
        ]
        .contains(&name.as_ref())
            || name.starts_with("CARGO_")
            || name.starts_with("RUSTC_")
            || name == "AYA_BUILD_SKIP";
        if inherited && name != "CARGO_HOME" {
            command.env_remove(name.as_ref());
        }
    }
    Ok(command)
}

/// The first `name` on PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Stand-ins for `rustup` and `bpf-linker` that record their call and fail: a prebuilt
/// object's build must run neither (the cargo above is started before PATH applies).
fn stand_ins(target: &Path) -> anyhow::Result<PathBuf> {
    let dir = target.join("stand-ins");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let invoked = dir.join("invoked");
    let _ = std::fs::remove_file(&invoked);
    for tool in ["rustup", "bpf-linker"] {
        let script = dir.join(tool);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\necho '{tool}: a build against a \
                 prebuilt object must not run this' >&2\nexit 1\n",
                invoked.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// The packages of a build's artifacts (by name, each once) and how many were compiled now
/// rather than fresh, from cargo's JSON messages.
fn artifacts(messages: &str) -> (Vec<String>, usize) {
    let mut packages = std::collections::BTreeMap::<String, bool>::new();
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(id) = message["package_id"].as_str() else {
            continue;
        };
        let fresh = message["fresh"].as_bool().unwrap_or(false);
        *packages.entry(package_name(id)).or_insert(true) &= fresh;
    }
    let compiled = packages.values().filter(|fresh| !**fresh).count();
    (packages.into_keys().collect(), compiled)
}

/// A package id's name: `registry+https://…#name@1.2.3`, `path+file:///…/name#0.1.0` or
/// `path+file:///…#name@0.1.0`.
fn package_name(id: &str) -> String {
    let (url, fragment) = id.rsplit_once('#').unwrap_or((id, ""));
    match fragment.split_once('@') {
        Some((name, _)) => name.to_string(),
        None => url.rsplit('/').next().unwrap_or(url).to_string(),
    }
}

/// A command's standard output; its failure is an error naming it.
fn stdout_of(command: &mut Command) -> anyhow::Result<String> {
    let line = crate::cmd::describe(command);
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Lines of a child's stream, as they come, on a channel (a thread per stream).
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids_name_their_package() {
        for (id, name) in [
            (
                "registry+https://github.com/rust-lang/crates.io-index#tokio@1.54.1",
                "tokio",
            ),
            (
                "path+file:///work/guard/vendor/aya#guard-aya@0.14.0",
                "guard-aya",
            ),
            ("path+file:///work/guard/guard#0.1.0", "guard"),
        ] {
            assert_eq!(package_name(id), name);
        }
    }
}

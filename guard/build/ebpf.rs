//! Builds guard-ebpf for the bpf target: the command aya-build 0.2.0's `build_ebpf` runs (same
//! toolchain, flags, environment and target dir layout), but with the child cargo's output
//! captured instead of replayed as `cargo:warning` lines, so the caller shows it only when the
//! build fails.
//!
//! Shared by `guard/build.rs` (the source build) and `cargo xtask ebpf-object` (through
//! `#[path]`: xtask does not depend on guard), so a prebuilt object comes from the very same
//! command. Only std, anyhow and serde_json: both crates have them.

use std::{
    env,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail};

/// The eBPF package, and the name of its binary (the object).
pub const PACKAGE: &str = "guard-ebpf";

/// Where guard's build script keeps the child's output, in its OUT_DIR (written by every source
/// build; xtask's CI check finds guard's latest source build by it).
pub const BUILD_LOG: &str = "guard-ebpf-build.log";

/// aya-build's `Toolchain::default()`: `rustup run nightly …`.
const TOOLCHAIN: &str = "nightly";

/// What to build, for which target.
pub struct EbpfBuild<'a> {
    /// guard-ebpf's package directory (the child cargo runs there, inside guard's workspace).
    pub package_dir: &'a Path,
    /// The child cargo's own target dir (never the parent's: cargo would wait on its own lock).
    pub target_dir: &'a Path,
    /// The arch of the program that will load the object (`CARGO_CFG_TARGET_ARCH`): the
    /// programs read registers by its layout.
    pub target_arch: &'a str,
    /// `little` or `big` (`CARGO_CFG_TARGET_ENDIAN`): bpfel or bpfeb.
    pub target_endian: &'a str,
    /// Also print the child's output as it comes (xtask); the build script only keeps it.
    pub echo: bool,
}

/// Builds the object and returns its path inside `target_dir`. Everything the child printed
/// (its stderr, and compiler messages rendered as rustc shows them) is appended to `output`,
/// whether the build succeeds or not.
pub fn build(spec: &EbpfBuild, output: &mut Vec<String>) -> anyhow::Result<PathBuf> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let result = run(spec, &lines);
    output.append(&mut lines.lock().unwrap_or_else(|e| e.into_inner()));
    result
}

fn run(spec: &EbpfBuild, lines: &Arc<Mutex<Vec<String>>>) -> anyhow::Result<PathBuf> {
    let keep = |line: String| {
        if spec.echo {
            eprintln!("{line}");
        }
        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    };
    let target = match spec.target_endian {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian={other}"),
    };
    // aya-build's target_arch_fixup: the riscv64 variants share one register layout.
    let bpf_target_arch = if spec.target_arch.starts_with("riscv64") {
        "riscv64"
    } else {
        spec.target_arch
    };

    // `rustup run nightly <tool>`, or the current toolchain when there is no rustup.
    let rustup = find_in_path("rustup");
    if rustup.is_none() {
        keep("rustup not found on PATH; proceeding with current toolchain".to_string());
    }
    let tool = |program: &str| match &rustup {
        Some(rustup) => {
            let mut command = Command::new(rustup);
            command.args(["run", TOOLCHAIN, program]);
            command
        }
        None => Command::new(program),
    };

    let nightly = is_nightly(tool("rustc"))?;
    // RUSTC_BOOTSTRAP as aya-build reads it: "1" or the package name enable -Z flags, "-1"
    // forces stable behaviour, anything else follows the compiler's channel.
    let use_build_std = match env::var_os("RUSTC_BOOTSTRAP") {
        Some(value) if value == "1" || value == PACKAGE => true,
        Some(value) if value == "-1" => false,
        _ => nightly,
    };

    let mut command = tool("cargo");
    command.args([
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--message-format=json",
    ]);
    command.args(["--release", "--target", target]);
    if use_build_std {
        command.args(["-Z", "build-std=core"]);
    }
    command.args(["--features", ""]);
    let mut rustflags = OsString::new();
    for part in [
        "--cfg=bpf_target_arch=\"",
        bpf_target_arch,
        "\"",
        "\x1f-Cdebuginfo=2",
        "\x1f-Clink-arg=--btf",
    ] {
        rustflags.push(part);
    }
    command.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The parent's compiler (or clippy-driver) must not leak into the nightly build.
    command
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    command.arg("--target-dir").arg(spec.target_dir);
    command.current_dir(spec.package_dir);

    let line = describe(&command);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to spawn `{line}`"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (executables, stderr_read) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            BufReader::new(stderr)
                .lines()
                .try_for_each(|line| line.map(&keep))
        });
        let executables = read_messages(stdout, &keep);
        let stderr_read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (executables, stderr_read)
    });
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    stderr_read.context("reading the child cargo's stderr")?;
    executables?
        .into_iter()
        .find_map(|(name, path)| (name == PACKAGE).then_some(path))
        .ok_or_else(|| anyhow!("`{line}` produced no {PACKAGE} binary"))
}

/// Cargo's JSON messages: the binaries built, and the compiler's messages as rustc renders
/// them (plain lines are kept as they are).
fn read_messages(
    stdout: std::process::ChildStdout,
    keep: &dyn Fn(String),
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut executables = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the child cargo's stdout")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            keep(line);
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(executable)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    executables.push((name.to_string(), PathBuf::from(executable)));
                }
            }
            Some("compiler-message") => {
                let rendered = message["message"]["rendered"].as_str().unwrap_or_default();
                for line in rendered.split('\n') {
                    keep(line.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(executables)
}

/// Whether `rustc -vV` reports a nightly (rustc_version's reading: the release's pre-release
/// tag is `nightly`).
fn is_nightly(mut rustc: Command) -> anyhow::Result<bool> {
    rustc.arg("-vV");
    let line = describe(&rustc);
    let output = rustc
        .output()
        .with_context(|| format!("failed to run `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let release = stdout
        .lines()
        .find_map(|line| line.strip_prefix("release: "))
        .ok_or_else(|| anyhow!("`{line}` printed no release line"))?;
    let pre = release.split_once('-').map_or("", |(_, pre)| pre);
    Ok(pre.split('.').next() == Some("nightly"))
}

/// An executable named `name` on PATH (what the `which` crate finds).
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The command line, for messages.
fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

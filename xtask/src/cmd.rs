//! Running commands with a visible trace of what runs and how long it took.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Runs `command`, echoing it first; fails with the command line when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<Duration> {
    let line = describe(command);
    println!("==> {line}");
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("starting `{line}`"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("`{line}` failed ({status}) after {elapsed:.1?}");
    }
    Ok(elapsed)
}

/// Builds the release `guard`, `guard-stress` and the two example agents that guests run (a
/// debug guard would crowd a 128 MiB guest) and returns their folder.
pub fn build_guest_binaries() -> anyhow::Result<std::path::PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "guard",
        "-p",
        "guard-tests",
        "--bins",
        // The example agents run in guest tests too: with libcontainer, and monitoring only.
        "--example",
        "agent",
        "--example",
        "monitor",
        // The binary is the library's `cli` feature.
        "--features",
        "guard/cli",
    ]))?;
    Ok(xtask::paths::target_dir().join("release"))
}

/// Installs what a fresh machine lacks (a second run only checks), then builds the guests'
/// binaries. The lean kernels take minutes to build the first time: only when `kernels`
/// names one of them.
pub fn prepare_guest_binaries(kernels: &[String]) -> anyhow::Result<std::path::PathBuf> {
    crate::setup::run(crate::setup::SetupArgs {
        skip_lean_kernels: !kernels.iter().any(|kernel| kernel.starts_with("lean")),
        ..crate::setup::SetupArgs::default()
    })?;
    build_guest_binaries()
}

/// A guest of `memory_mib` running `guard selftest` (with `--no-limits` for the two-sided run),
/// with the binaries from `bin`.
pub fn selftest_vm(
    kernel: &str,
    memory_mib: u32,
    bin: &std::path::Path,
    selftest_args: &str,
    label: String,
) -> xtask::vm::VmConfig {
    xtask::vm::VmConfig::shell(kernel, &format!("guard selftest {selftest_args}"))
        .memory_mib(memory_mib)
        .binary(bin.join("guard"))
        .binary(bin.join("guard-stress"))
        .timeout(std::time::Duration::from_secs(600))
        .label(label)
}

/// `cargo` as invoked by the current cargo (respects rustup's toolchain selection).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces what stands between `begin` and `end` in the doc `relative` (to the workspace root)
/// with `table`, and returns the doc's path.
pub fn write_between_markers(
    relative: &str,
    begin: &str,
    end: &str,
    table: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let doc = xtask::paths::workspace_root().join(relative);
    let text =
        std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        anyhow::bail!("{} has no {begin} … {end} markers", doc.display());
    };
    let updated = format!("{}{begin}\n{table}{}", &text[..start], &text[stop..]);
    std::fs::write(&doc, updated).with_context(|| format!("writing {}", doc.display()))?;
    Ok(doc)
}

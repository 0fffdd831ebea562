//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cmd::{self, cargo};

/// The library's features the full build enables (the binary, the config file, and the
/// internals guard's own bad-input and fuzz-replay tests need). The lean build has none.
const FULL_FEATURES: &str = "guard/cli,guard/internals";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip formatting and clippy (for a quick re-run of the tests alone).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    // A fresh machine has nothing: install first (a second run only checks, in seconds).
    let setup_started = Instant::now();
    crate::setup::run(crate::setup::SetupArgs::default())?;
    steps.push(("setup", setup_started.elapsed()));
    if !args.no_lint {
        steps.push((
            "fmt",
            cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?,
        ));
        // The library as an agent that only monitors builds it: no feature.
        steps.push((
            "clippy (lean library)",
            cmd::run(cargo().args([
                "clippy",
                "-p",
                "guard",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?,
        ));
        // The eBPF crate only builds for the bpf target (on the host, feature unification
        // would link std into it), so it gets its own clippy run on that target.
        steps.push((
            "clippy (host crates)",
            cmd::run(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "guard-ebpf",
                "--all-targets",
                "--features",
                FULL_FEATURES,
                "--",
                "-D",
                "warnings",
            ]))?,
        ));
        steps.push((
            "clippy (eBPF crate)",
            cmd::run(
                std::process::Command::new("rustup")
                    .args(["run", "nightly", "cargo", "clippy", "-p", "guard-ebpf"])
                    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                    .args(["--", "-D", "warnings"]),
            )?,
        ));
        // The library's documentation: every public item documented (`missing_docs` is
        // denied in lib.rs), and no broken or ambiguous intra-doc link.
        steps.push((
            "docs (full library)",
            cmd::run(
                cargo()
                    .args([
                        "doc",
                        "--no-deps",
                        "-p",
                        "guard",
                        "--features",
                        "cli,internals",
                    ])
                    .env("RUSTDOCFLAGS", "-D warnings"),
            )?,
        ));
    }
    // Host BPF tests need root: say so up front rather than failing deep inside a test.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("note: not root: host BPF tests will skip (CI runs them as root)");
    }
    // The guests get small release binaries (a debug guard would crowd a 128 MiB guest).
    let build_started = Instant::now();
    let bin_dir = cmd::build_guest_binaries()?;
    steps.push(("release binaries for guests", build_started.elapsed()));
    steps.push((
        "tests (lean library)",
        cmd::run(cargo().args(["test", "-p", "guard", "--lib"]))
            .context("the lean library's tests failed")?,
    ));
    // Building guard against a prebuilt object, as an agent's CI would: no nightly, no
    // bpf-linker (seconds: the object comes from the child build guard's own build script
    // already made fresh, and guard alone is checked once more).
    let prebuilt_started = Instant::now();
    let object =
        crate::ebpf_object::check_prebuilt().context("the prebuilt eBPF object check failed")?;
    steps.push(("prebuilt eBPF object", prebuilt_started.elapsed()));
    // An agent outside the workspace, as guard's dependents build it: the vendored loader
    // (no BTF opened, peak near idle) by path, git and registry alike.
    let dependent_started = Instant::now();
    crate::dependent::check(&object).context("the dependent check failed")?;
    steps.push(("dependent agent", dependent_started.elapsed()));
    steps.push((
        "tests (unit, host, guest)",
        cmd::run(
            cargo()
                .args(["test", "--workspace", "--exclude", "guard-ebpf"])
                .args(["--features", FULL_FEATURES])
                .args(test_args(args))
                .env("GUARD_BIN_DIR", &bin_dir),
        )
        .context("the test suite failed")?,
    ));
    println!("\nsummary:");
    for (step, elapsed) in &steps {
        println!("  {step:<28} {elapsed:>8.1?}");
    }
    println!("  {:<28} {:>8.1?}", "total", started.elapsed());
    Ok(())
}

fn test_args(args: &TestArgs) -> Vec<String> {
    if args.cargo_test_args.is_empty() {
        Vec::new()
    } else {
        std::iter::once("--".to_string())
            .chain(args.cargo_test_args.iter().cloned())
            .collect()
    }
}

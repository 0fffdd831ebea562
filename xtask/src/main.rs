//! Project automation: `cargo xtask <command>` (see `cargo xtask --help`).
use clap::{Parser, Subcommand};

mod bench;
mod cmd;
mod demo;
mod dependent;
mod ebpf_object;
mod fuzz;
mod kernels;
mod limits;
mod setup;
mod soak;
mod test;
mod vm_cli;

/// guard's project tasks: set up a machine, run the demo, run the whole test suite, boot a
/// guest VM.
#[derive(Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure what the guard costs (fork storm vs no BPF and vs bpftrace, attach time,
    /// memory; the memory in a 128 MiB guest too) and write docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Repeat the bomb scenario N times per kernel, with and without limits, and print a
    /// survival table (runs, survived, global OOMs, verdicts).
    Soak(soak::SoakArgs),
    /// The main job: a 128 MiB guest runs `guard selftest` (one guarded container, three bomb
    /// waves) with live events, a per-wave table, the report and the forensic log on the host.
    Demo(demo::DemoArgs),
    /// Everything CI checks: fmt, clippy (host crates and the eBPF crate), unit tests, host
    /// BPF tests (as root) and the guest VM suite.
    Test(test::TestArgs),
    /// Build the agent crate outside the workspace (tests/dependent) as guard's dependents do
    /// (stable toolchain, prebuilt eBPF object, no lock file of guard's), check the git and
    /// registry forms resolve to guard's vendored loader, and run it on the host: its start
    /// must open no vmlinux BTF, its peak RSS stay within 2 MiB of idle (part of `test`).
    Dependent,
    /// What guard's kernel fragment costs: boot each lean kernel a few times and tabulate tier,
    /// image size, build and boot time, MemTotal and MemAvailable (into docs/KERNELS.md).
    Kernels(kernels::KernelsArgs),
    /// Measure the guest budget's kernel reserve: per kernel and guest size, bisect the
    /// smallest reserve at which the tenants wave never draws the global OOM killer, then run
    /// the wave at the default (into docs/LIMITS.md).
    Limits(limits::LimitsArgs),
    // No doc comments on these four: they would replace the long help their Args define.
    EbpfObject(ebpf_object::EbpfObjectArgs),
    Setup(setup::SetupArgs),
    Fuzz(fuzz::FuzzArgs),
    Vm(vm_cli::VmArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Dependent => {
            let (object, _) = ebpf_object::object_for_checks()?;
            dependent::check(&object)
        }
        Command::Setup(args) => setup::run(args),
        Command::EbpfObject(args) => ebpf_object::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Kernels(args) => kernels::run(&args),
        Command::Limits(args) => limits::run(&args),
        Command::Vm(args) => {
            // The guest command's exit code, or 100 (VM died) / 101 (timed out).
            let code = vm_cli::run(args)?;
            std::process::exit(code)
        }
    }
}

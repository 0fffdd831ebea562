//! Project automation: `cargo xtask <command>` (see `cargo xtask --help`).
use clap::{Parser, Subcommand};

mod cmd;
mod demo;
mod test;

/// guard's project tasks: set up a machine, run the demo, run the whole test suite.
#[derive(Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: what guard sees and proves, end to end.
    Demo(demo::DemoArgs),
    /// Everything CI checks: fmt, clippy (host crates and the eBPF crate), unit tests, host
    /// BPF tests (as root) and the guest VM suite.
    Test(test::TestArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Test(args) => test::run(&args),
    }
}

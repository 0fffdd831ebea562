//! `cargo xtask`: project chores that are not part of the build itself.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod setup;
mod vm_cli;

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "guard's project chores", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Setup(setup::SetupArgs),
    Vm(vm_cli::VmArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup(args) => setup::run(args),
        Cmd::Vm(args) => {
            let code = vm_cli::run(args)?;
            std::process::exit(code)
        }
    }
}

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

fn main() {
    let result: Result<i32> = match Cli::parse().command {
        Cmd::Setup(args) => setup::run(args).map(|()| 0),
        Cmd::Vm(args) => vm_cli::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // `{:#}` prints the context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::exit(1)
        }
    }
}

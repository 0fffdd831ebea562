use std::process::ExitCode;

use clap::Parser as _;

mod cli_log;

#[derive(clap::Parser)]
#[command(name = "guard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Read, follow and verify the forensic event log.
    Log(cli_log::LogArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Log(args) => cli_log::run(args),
    }
}

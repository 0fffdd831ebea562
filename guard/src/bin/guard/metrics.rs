//! `guard metrics`: the counters as OpenMetrics text, once, to standard output, from a forensic
//! log (the last report of each container in it). A running guard serves the same text live
//! with `--metrics ADDR` on exec, watch, run, selftest and collect.
use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  guard metrics --log /var/lib/guard/log > guard.prom

A log that does not verify is refused (exit 1); a torn tail or an abrupt end is fine: the
records before it are evidence. The metrics are listed in docs/METRICS.md.")]
pub struct MetricsArgs {
    /// The forensic log directory to read.
    #[arg(long, value_name = "DIR")]
    pub log: PathBuf,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    let snapshot = guard::metrics::snapshot_of_log(&args.log)?;
    out!("{}", guard::metrics::render(&snapshot)?);
    Ok(ExitCode::SUCCESS)
}

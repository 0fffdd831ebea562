//! `guard watch`: attach to existing cgroups, stream their events, print their reports when
//! stopped (Ctrl-C, SIGTERM or --duration).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use guard::{
    ContainerId, Guard, GuardOptions, RingOptions, cgroup::Hierarchy, sinks::json_lines::JsonLines,
};

use crate::evidence::Evidence;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// An existing cgroup v2 directory to watch; repeat for several. Its id is the directory
    /// name unless given as ID=PATH.
    #[arg(
        long = "cgroup",
        value_name = "[ID=]PATH",
        required = true,
        value_parser = crate::args::watch_target()
    )]
    cgroups: Vec<(ContainerId, PathBuf)>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(
        long,
        value_name = "SECONDS",
        allow_hyphen_values = true,
        value_parser = crate::args::seconds
    )]
    duration: Option<Duration>,
    /// Write each event as a JSON line to FILE ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Individual events per container per CPU per second (0 = unbounded; counters stay exact).
    #[arg(long, default_value_t = RingOptions::default().max_events_per_sec)]
    max_events_per_sec: u32,
    /// Print the final reports as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    metrics: crate::evidence::MetricsFlags,
    #[command(flatten)]
    log: crate::evidence::LogFlags,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let targets: Vec<(String, PathBuf)> = args
        .cgroups
        .iter()
        .map(|(id, path)| (id.to_string(), path.clone()))
        .collect();
    // Before loading anything: every path must be a cgroup v2 directory.
    let hierarchy = Hierarchy::find()?;
    for (id, path) in &targets {
        hierarchy
            .identify(path)
            .with_context(|| format!("watching {id} at {}", path.display()))?;
    }
    let mut options = GuardOptions::default();
    options.ring.max_events_per_sec = args.max_events_per_sec;
    let metrics = args.metrics.bind().await?;
    let guard = std::sync::Arc::new(Guard::start(options).await?);
    for (id, path) in &targets {
        guard
            .watch(id, path)
            .with_context(|| format!("watching {id} at {}", path.display()))?;
        eprintln!(
            "guard: watching {id} ({}), tier {}, sources {}",
            path.display(),
            guard.tier(),
            guard.sources().join(" ")
        );
    }
    let mut evidence = Evidence::start(&guard, args.log.plan()?, serde_json::Value::Null, metrics)?;
    let writer = match args.events.as_deref() {
        Some(path) => {
            let mut options = args.log.summaries.events_file();
            options.budget = args.log.budget.for_events(path)?;
            Some(JsonLines::start_with(&guard, path, options)?)
        }
        None => None,
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let deadline = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("guard: interrupted, reporting"),
        _ = terminate.recv() => eprintln!("guard: terminated, reporting"),
        _ = deadline => {}
    }

    evidence.stop_metrics();
    let mut reports = Vec::new();
    for (id, _) in &targets {
        reports.push(guard.unwatch(id).await?);
    }
    let mut ended = evidence.finish(&reports).await?;
    ended.flag(&mut reports);
    // Everything is drained now: the writer finishes what is queued.
    if let Some(writer) = writer
        && let Err(error) = writer.finish().await
    {
        ended.events_failed(&error);
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            out!("{}", report.to_text());
        }
    }
    Ok(ended.exit_code(ExitCode::SUCCESS))
}

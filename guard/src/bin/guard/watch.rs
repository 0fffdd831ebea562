//! `guard watch`: attach to existing cgroups, stream their events, print their reports when
//! stopped (Ctrl-C, SIGTERM or --duration).
use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use guard::{ContainerId, Guard, GuardEvent, GuardOptions, StreamOptions, cgroup::Hierarchy};
use tokio::sync::mpsc::Receiver;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// An existing cgroup v2 directory to watch; repeat for several. Its id is the directory
    /// name unless given as ID=PATH.
    #[arg(
        long = "cgroup",
        value_name = "[ID=]PATH",
        required = true,
        value_parser = crate::cli_args::watch_target()
    )]
    cgroups: Vec<(ContainerId, PathBuf)>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(
        long,
        value_name = "SECONDS",
        allow_hyphen_values = true,
        value_parser = crate::cli_args::seconds
    )]
    duration: Option<Duration>,
    /// Write each event as a JSON line to FILE ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Individual events per container per CPU per second (0 = unbounded; counters stay exact).
    #[arg(long, default_value_t = StreamOptions::default().max_events_per_sec)]
    max_events_per_sec: u32,
    /// Print the final reports as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    log: crate::log_args::LogArgs,
}

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(watch(args, targets))
}

async fn watch(args: WatchArgs, targets: Vec<(String, PathBuf)>) -> anyhow::Result<ExitCode> {
    let options = GuardOptions {
        stream: StreamOptions {
            max_events_per_sec: args.max_events_per_sec,
            ..StreamOptions::default()
        },
        ..GuardOptions::default()
    };
    let guard = Guard::start(options).await?;
    for (id, path) in &targets {
        guard
            .watch(id, path)
            .with_context(|| format!("watching {id} at {}", path.display()))?;
        eprintln!(
            "guard: watching {id} ({}), tier {}",
            path.display(),
            guard.tier()
        );
    }
    let log = args.log.start(&guard, serde_json::Value::Null)?;
    let writer = args.events.as_ref().map(|path| {
        let events = guard.subscribe(65_536);
        tokio::spawn(write_events(events, path.clone()))
    });

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

    let mut reports = Vec::new();
    for (id, _) in &targets {
        reports.push(guard.unwatch(id).await?);
    }
    crate::log_args::finish(log, &reports).await?;
    // Dropping the guard closes the event stream: the writer then finishes what is queued.
    drop(guard);
    if let Some(writer) = writer {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            print!("{}", report.to_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn write_events(mut events: Receiver<GuardEvent>, path: PathBuf) {
    let mut out: Box<dyn std::io::Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        match std::fs::File::create(&path) {
            Ok(file) => Box::new(std::io::BufWriter::new(file)),
            Err(error) => {
                eprintln!("guard: creating events file {}: {error}", path.display());
                return;
            }
        }
    };
    while let Some(event) = events.recv().await {
        let written = serde_json::to_string(&event)
            .map_err(std::io::Error::other)
            .and_then(|line| writeln!(out, "{line}"))
            // Flush when caught up: one write per burst, not per event.
            .and_then(|()| {
                if events.is_empty() {
                    out.flush()
                } else {
                    Ok(())
                }
            });
        if let Err(error) = written {
            eprintln!("guard: writing events to {}: {error}", path.display());
            return;
        }
    }
    let _ = out.flush();
}

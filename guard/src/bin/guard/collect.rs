//! `guard collect`: the host end of `--stream`. Each guest's log is stored under
//! `DIR/<guest>/` as it arrives, its chain checked record by record; every stream ends with a
//! verdict on one status line.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, mpsc},
};

use anyhow::Context as _;
use guard::{
    metrics::{self, Snapshot, StreamFigures},
    stream::{Address, Collector, GuestStatus, Listener},
};

#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// Where guests connect: `unix:PATH` (the host end of a VMM's vsock bridge, such as
    /// Firecracker's or vhost-device-vsock's `<uds-path>_<port>`) or `vsock:PORT` (a host with
    /// /dev/vhost-vsock).
    #[arg(long, value_name = "ADDR")]
    pub listen: Address,
    /// Where the copies go, one directory per guest (created if missing; nothing is written
    /// outside it). Each copy is a log `guard log verify` reads.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Print each status as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many streams have ended: status 0 if every one was `complete`, 1
    /// otherwise. Default: run until interrupted.
    #[arg(long, value_name = "N")]
    pub streams: Option<u64>,
    #[command(flatten)]
    pub metrics: crate::evidence::MetricsFlags,
}

/// Each guest's figures as the statuses arrive, for `--metrics`.
type Figures = Arc<Mutex<BTreeMap<String, StreamFigures>>>;

/// Serves the collector's figures from a thread with a runtime of its own (the collector
/// itself is threads, no async).
fn serve_metrics(args: &CollectArgs, figures: &Figures) -> anyhow::Result<()> {
    if args.metrics.metrics.is_none() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the metrics runtime")?;
    let listener = runtime.block_on(args.metrics.bind())?;
    let figures = Arc::clone(figures);
    std::thread::Builder::new()
        .name("guard-metrics".into())
        .spawn(move || {
            let render = move || {
                let streams = figures
                    .lock()
                    .map(|figures| figures.values().cloned().collect())
                    .unwrap_or_default();
                async move {
                    metrics::render(&Snapshot {
                        streams,
                        ..Snapshot::default()
                    })
                    .map_err(|error| error.to_string())
                }
            };
            if let Some(listener) = listener {
                runtime.block_on(metrics::serve(listener, render));
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn note(figures: &Figures, status: &GuestStatus) {
    let Some(guest) = &status.guest else { return };
    let Ok(mut figures) = figures.lock() else {
        return;
    };
    let entry = figures
        .entry(guest.clone())
        .or_insert_with(|| StreamFigures {
            guest: guest.clone(),
            ..StreamFigures::default()
        });
    entry.records = status.records;
    match &status.verdict {
        None => {
            entry.connections += 1;
            entry.verdict = None;
        }
        Some(verdict) => {
            entry.verdict = serde_json::to_value(verdict)
                .ok()
                .and_then(|v| v.get("verdict").and_then(|v| v.as_str()).map(String::from));
        }
    }
}

pub fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let (sender, statuses) = mpsc::channel::<GuestStatus>();
    let sender = std::sync::Mutex::new(sender);
    let collector = Collector::new(&args.dir, move |status| {
        if let Ok(sender) = sender.lock() {
            let _ = sender.send(status.clone());
        }
    })?;
    let listener = Listener::bind(&args.listen)?;
    let figures = Figures::default();
    serve_metrics(&args, &figures)?;
    eprintln!(
        "guard: collecting on {} into {}",
        args.listen,
        args.dir.display()
    );
    std::thread::Builder::new()
        .name("guard-accept".into())
        .spawn({
            let collector = collector.clone();
            move || {
                if let Err(error) = collector.serve(&listener) {
                    eprintln!("guard: error: {error}");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the accept thread")?;
    let (mut ended, mut all_complete) = (0, true);
    for status in statuses {
        note(&figures, &status);
        if args.json {
            outln!("{}", serde_json::to_string(&status)?);
        } else {
            outln!("{status}");
        }
        let Some(verdict) = &status.verdict else {
            continue;
        };
        ended += 1;
        all_complete &= verdict.is_complete();
        if args.streams.is_some_and(|wanted| ended >= wanted) {
            break;
        }
    }
    Ok(if all_complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

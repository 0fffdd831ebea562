//! `guard collect`: the host end of `--stream`. Each guest, named by the transport it comes
//! on, has its log stored under `DIR/<guest>/` as it arrives, its chain checked record by
//! record; every stream ends with a verdict on one status line. `guard collect keygen FILE`
//! makes a guest's key.
use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex, mpsc},
};

use anyhow::Context as _;
use guard::{
    metrics::{self, Snapshot, StreamFigures},
    stream::{CidTable, Collector, GuestStatus, StreamKey},
};

mod args;

pub use args::CollectArgs;
use args::CollectCommand;

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
    let Some(guest) = status.guest.as_ref().filter(|_| status.is_stream()) else {
        return;
    };
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
        Some(verdict) => entry.verdict = Some(verdict.name().to_string()),
    }
}

pub fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    if let Some(CollectCommand::Keygen { file }) = &args.command {
        StreamKey::generate()?.write_new(file)?;
        eprintln!("guard: a new stream key in {}", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let options = args.options()?;
    let endpoints = args.endpoints()?;
    let vm_dir = args.vm_dir();
    let vsock = args.vsock()?;
    if endpoints.is_empty() && vm_dir.is_none() && vsock.is_none() {
        return Err(crate::args::UsageError(
            "nowhere to listen: give --listen NAME=unix:PATH, --vm-dir DIR --port PORT or \
             --listen vsock:PORT --cid-table FILE"
                .into(),
        )
        .into());
    }
    let dir = options.dir.clone();
    let (sender, statuses) = mpsc::channel::<GuestStatus>();
    let sender = std::sync::Mutex::new(sender);
    let collector = Collector::start(options, move |status| {
        if let Ok(sender) = sender.lock() {
            let _ = sender.send(status.clone());
        }
    })?;
    for endpoint in endpoints {
        let (name, path, keyed) = (
            endpoint.name.clone(),
            endpoint.path.clone(),
            endpoint.auth.has_key(),
        );
        collector.listen(endpoint)?;
        eprintln!(
            "guard: guest {name} at unix:{}{}",
            path.display(),
            if keyed {
                ""
            } else {
                " (no key: unauthenticated)"
            }
        );
    }
    if let Some(vm_dir) = vm_dir {
        eprintln!(
            "guard: VMs under {} at <name>/vsock_{}{}",
            vm_dir.dir.display(),
            vm_dir.port,
            if vm_dir.no_auth {
                " (keyless ones unauthenticated)"
            } else {
                ""
            }
        );
        collector.watch_vm_dir(vm_dir)?;
    }
    if let Some((port, table)) = vsock {
        let table = CidTable::read(&table, args.no_auth)?;
        eprintln!(
            "guard: vsock port {port}, guests {}",
            table.names().join(", ")
        );
        collector.listen_vsock(port, table)?;
    }
    let figures = Figures::default();
    serve_metrics(&args, &figures)?;
    eprintln!(
        "guard: collecting into {} (at most {} connections)",
        dir.display(),
        collector.max_connections()
    );
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
        if !status.is_stream() {
            continue;
        }
        ended += 1;
        all_complete &= verdict.is_complete();
        if args.streams.is_some_and(|wanted| ended >= wanted) {
            break;
        }
    }
    drop(collector);
    Ok(if all_complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

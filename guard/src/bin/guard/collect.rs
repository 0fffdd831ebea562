//! `guard collect`: the host end of `--stream`. Each guest's log is stored under
//! `DIR/<guest>/` as it arrives, its chain checked record by record; every stream ends with a
//! verdict on one status line.
use std::{path::PathBuf, process::ExitCode, sync::mpsc};

use anyhow::Context as _;
use guard::stream::{Address, Collector, GuestStatus, Listener};

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

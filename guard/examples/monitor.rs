//! A monitoring-only agent: no libcontainer, no limits of its own. It starts the guard, makes
//! a cgroup, watches it, runs a command inside it, prints the container's events as they come
//! and its reconciled report at the end. An agent that leaves containers to another runtime
//! (Docker, systemd, Kubernetes) does the same with `Guard::watch` on their cgroups.
//!
//! ```sh
//! cargo build --release -p guard --example monitor
//! monitor --cgroup /sys/fs/cgroup/job -- /bin/sh -c 'for i in $(seq 50); do /bin/true; done'
//! ```
//!
//! The same file is the program of `tests/dependent/`, the agent crate outside guard's
//! workspace that `cargo xtask test` builds as guard's dependents do.
use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use guard::{EventDetail, Guard, GuardEvent, GuardOptions, Tier, cgroup};

const USAGE: &str = "usage: monitor --cgroup DIR [--id ID] [--min-tier 0|1|2] -- CMD...";

struct Args {
    cgroup: PathBuf,
    id: Option<String>,
    min_tier: Tier,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        cgroup: PathBuf::new(),
        id: None,
        min_tier: Tier::CgroupFilesOnly,
        command: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--cgroup" => parsed.cgroup = PathBuf::from(value()?),
            "--id" => parsed.id = Some(value()?),
            "--min-tier" => {
                let tier: i64 = value()?.parse().map_err(|_| "--min-tier: 0, 1 or 2")?;
                parsed.min_tier = Tier::try_from(tier).map_err(|e| format!("--min-tier: {e}"))?;
            }
            "--" => parsed.command = args.by_ref().collect(),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if parsed.cgroup.as_os_str().is_empty() || parsed.command.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    // guard says what it found, and what the kernel or the process lacks, only through
    // `tracing`: an agent installs a subscriber.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MONITOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("monitor: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("monitor: starting tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("monitor: error: {error}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn run(args: Args) -> Result<ExitCode, Error> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => args
            .cgroup
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or("--cgroup has no directory name to use as the id: give --id")?,
    };
    let mut options = GuardOptions::default();
    options.min_tier = args.min_tier;
    let guard = Guard::start(options).await?;
    eprintln!("monitor: guard at tier {}", u8::from(guard.tier()));
    cgroup::create(&args.cgroup)?;
    if let Err(error) = guard.watch(&id, &args.cgroup) {
        let _ = cgroup::remove(&args.cgroup);
        return Err(error.into());
    }
    // This container's events: the subscription ends when it is unwatched.
    let events = guard.subscribe_container(&id, 4096)?;
    let printer = tokio::spawn(tally(events));
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    cgroup::command_inside(&mut command, &args.cgroup, 0)?;
    let spawned = command.spawn();
    eprintln!(
        "monitor: watching {id} at {} (pid {})",
        args.cgroup.display(),
        std::process::id()
    );
    let status = match spawned {
        Ok(mut child) => Some(tokio::task::spawn_blocking(move || child.wait()).await??),
        Err(error) => {
            eprintln!("monitor: running {:?}: {error}", args.command[0]);
            None
        }
    };
    let report = guard.unwatch(&id).await?;
    eprintln!("monitor: {}", printer.await?.summary());
    // The programs leave the kernel before the process goes on (a drop would do it on a
    // thread of its own).
    guard.shutdown().await;
    eprintln!("{}", report.to_text());
    println!("{}", serde_json::to_string(&report)?);
    cgroup::remove(&args.cgroup)?;
    Ok(match status.and_then(|status| status.code()) {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Reads a container's events until its subscription ends.
async fn tally(mut events: tokio::sync::mpsc::Receiver<GuardEvent>) -> Tally {
    let mut tally = Tally::default();
    while let Some(event) = events.recv().await {
        tally.add(&event);
    }
    tally
}

/// The events by kind; fork denials and OOM kills are printed as they come.
#[derive(Default)]
struct Tally {
    total: u64,
    kinds: std::collections::BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, event: &GuardEvent) {
        self.total += 1;
        *self.kinds.entry(event.detail.kind_name()).or_default() += 1;
        let container = event.container.as_deref().unwrap_or("-");
        match &event.detail {
            EventDetail::ForkDenied(denial) => {
                println!("event {container} fork_denied cause={:?}", denial.cause)
            }
            EventDetail::OomVictim(victim) => println!(
                "event {container} oom_kill pid={} comm={}",
                victim.victim_pid, victim.comm
            ),
            _ => {}
        }
    }

    fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(kind, count)| format!("{kind}={count}"))
            .collect();
        format!("{} event(s): {}", self.total, kinds.join(" "))
    }
}

//! A small guest agent that links guard as its users do: it starts the guard (refusing to run
//! below the tier it needs), runs one container with the library's `agent::supervise`,
//! forwards the live events to a subscriber of its own, and prints the reconciled report.
//! `--no-guard` runs the same container the same way without starting the guard (no BPF, no
//! pipeline, no report): the baseline `cargo xtask bench` measures the guard's memory against.
//! `--allow-unprivileged-bpf` is the runtime's opt-out: by default it closes bpf(2) to
//! unprivileged processes before the container exists.
//! Either way it says `agent: container agent-demo started` once the container runs.
//!
//! ```sh
//! cargo build --release -p guard --example agent --features runtime
//! agent --rootfs /tmp/rootfs --pids 16 --min-tier 0 -- /bin/sh -c 'for i in $(seq 50); do sleep 1 & done; wait'
//! ```
//!
//! What an agent must do beside calling the library, each marked below: install a `tracing`
//! subscriber (guard says what it found and what it lacks only through `tracing`); serve
//! guard's exec helper from `main` before any thread starts (each container clones from it);
//! keep its own `oom_score_adj` low (the runtime gives containers their own).
use std::{
    path::PathBuf,
    process::{ExitCode, ExitStatus},
};

use guard::{
    EventDetail, Guard, GuardOptions, Tier,
    agent::{self, Ending},
    limits::{LimitRequest, Limits, MemorySetting, PidsSetting},
    runtime::{ExecHelper, Runtime, RuntimeOptions, Source},
};

/// The subcommand this binary serves the exec helper under.
const EXEC_HELPER: &str = "exec-helper";

struct Args {
    rootfs: PathBuf,
    memory: MemorySetting,
    pids: PidsSetting,
    min_tier: Tier,
    no_guard: bool,
    allow_unprivileged_bpf: bool,
    command: Vec<String>,
}

const USAGE: &str = "usage: agent --rootfs DIR [--memory 64M|50%|max] [--pids N|max] \
                     [--min-tier 0|1|2] [--no-guard] [--allow-unprivileged-bpf] -- CMD...";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        rootfs: PathBuf::new(),
        memory: MemorySetting::Default,
        pids: PidsSetting::Default,
        min_tier: Tier::CgroupFilesOnly,
        no_guard: false,
        allow_unprivileged_bpf: false,
        command: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--rootfs" => parsed.rootfs = PathBuf::from(value()?),
            "--memory" => parsed.memory = value()?.parse().map_err(|e| format!("--memory: {e}"))?,
            "--pids" => parsed.pids = value()?.parse().map_err(|e| format!("--pids: {e}"))?,
            "--min-tier" => {
                let tier: i64 = value()?.parse().map_err(|_| "--min-tier: 0, 1 or 2")?;
                parsed.min_tier = Tier::try_from(tier).map_err(|e| format!("--min-tier: {e}"))?;
            }
            "--no-guard" => parsed.no_guard = true,
            "--allow-unprivileged-bpf" => parsed.allow_unprivileged_bpf = true,
            "--" => parsed.command = args.by_ref().collect(),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if parsed.rootfs.as_os_str().is_empty() || parsed.command.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    // (1) The exec helper first: a clone of a multi-threaded process can inherit a lock
    // another thread held, so guard clones each container from this fresh process.
    if std::env::args().nth(1).as_deref() == Some(EXEC_HELPER) {
        return guard::runtime::serve_exec_helper();
    }
    // (2) A tracing subscriber: guard logs its tier and what the kernel lacks here.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("agent: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agent: starting tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("agent: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The one container's id: its cgroup is `/guard/agent-demo`.
const ID: &str = "agent-demo";

type Error = Box<dyn std::error::Error>;

async fn run(args: Args) -> Result<ExitCode, Error> {
    let guard = if args.no_guard {
        None
    } else {
        let mut options = GuardOptions::default();
        options.min_tier = args.min_tier;
        let guard = Guard::start(options).await?;
        eprintln!("agent: guard at tier {}", guard.tier());
        Some(guard)
    };
    let runtime = Runtime::new(RuntimeOptions {
        exec_helper: Some(ExecHelper::this_binary(&[EXEC_HELPER])?),
        allow_unprivileged_bpf: args.allow_unprivileged_bpf,
        ..RuntimeOptions::default()
    })?;
    eprintln!(
        "agent: kernel.unprivileged_bpf_disabled {}",
        match runtime.unprivileged_bpf() {
            Some(sysctl) => format!("{} -> {}", sysctl.before, sysctl.after),
            None => "left as it is".to_string(),
        }
    );
    let limits = runtime
        .resolve(&LimitRequest {
            memory: args.memory,
            pids: args.pids,
            ..LimitRequest::default()
        })?
        .limits;
    let source = Source::Rootfs {
        rootfs: args.rootfs,
        args: args.command,
        env: Vec::new(),
    };
    let status = match &guard {
        Some(guard) => guarded(guard, &runtime, &source, &limits).await?,
        None => unguarded(&runtime, &source, &limits).await?,
    };
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

async fn guarded(
    guard: &Guard,
    runtime: &Runtime,
    source: &Source,
    limits: &Limits,
) -> Result<ExitStatus, Error> {
    // (3) The agent's own subscriber: a bounded queue; what it cannot keep up with is counted
    // by the guard (`Report::loss`), never buffered without bound.
    let mut events = guard.subscribe(4096);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let forwarder = tokio::spawn(async move {
        let mut forwarded = 0u64;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => forward(&event, &mut forwarded),
                    None => break,
                },
                _ = &mut stopped => {
                    // The final report drained every event into the queue: take the rest.
                    while let Ok(event) = events.try_recv() {
                        forward(&event, &mut forwarded);
                    }
                    break;
                }
            }
        }
        forwarded
    });

    let running = agent::supervise(guard, runtime, None, ID, source, limits).await?;
    eprintln!("agent: container {ID} started");
    let finished = running.finish(Ending::InitExits).await?;
    let _ = stop.send(());
    let forwarded = forwarder.await?;
    eprintln!("agent: forwarded {forwarded} event(s)");
    eprintln!("{}", finished.report.to_text());
    println!("{}", serde_json::to_string(&finished.report)?);
    Ok(finished.status)
}

/// The same container's life as `agent::supervise` and `finish` give it, minus the guard:
/// create, start, wait for the init on a blocking thread, delete.
async fn unguarded(
    runtime: &Runtime,
    source: &Source,
    limits: &Limits,
) -> Result<ExitStatus, Error> {
    let mut container = runtime.create(ID, source, limits)?.container;
    if let Err(error) = container.start() {
        let _ = container.delete();
        return Err(error.into());
    }
    eprintln!("agent: container {ID} started (no guard)");
    let pid = container.init_pid();
    let status = tokio::task::spawn_blocking(move || guard::runtime::wait_pid(pid)).await;
    container.delete()?;
    Ok(status??)
}

/// The agent's channel of its own; here, standard output.
fn forward(event: &guard::GuardEvent, forwarded: &mut u64) {
    *forwarded += 1;
    let container = event.container.as_deref().unwrap_or("-");
    match &event.detail {
        EventDetail::ForkDenied(denial) => {
            println!("event {container} fork_denied cause={:?}", denial.cause)
        }
        EventDetail::OomVictim(victim) => println!(
            "event {container} oom_kill pid={} comm={}",
            victim.victim_pid, victim.comm
        ),
        other => println!("event {container} {}", other.kind_name()),
    }
}

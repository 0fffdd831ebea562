//! `guard exec`: run a command in a fresh cgroup, with optional limits, under the guard's
//! eye; print the reconciled report at the end.
use std::{
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, ExitCode},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail};
use guard::{
    ContainerId, Guard, GuardOptions, RingOptions, Tier,
    cgroup::{self, Hierarchy},
    limits::Limits,
    sinks::json_lines::JsonLines,
};

use crate::evidence::Evidence;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Cgroup directory to create (must not exist) inside the cgroup v2 hierarchy.
    #[arg(long)]
    cgroup: PathBuf,
    /// Container id to report under (default: the cgroup's directory name).
    #[arg(long, value_parser = crate::args::container_id())]
    id: Option<ContainerId>,
    /// pids.max of the new cgroup: a count (needs the pids controller; `--pids-max` is the old
    /// spelling).
    #[arg(
        long = "pids",
        alias = "pids-max",
        allow_hyphen_values = true,
        value_name = "N",
        value_parser = crate::args::pids_count
    )]
    pids: Option<u64>,
    /// memory.max of the new cgroup, in bytes (67108864, 64M; needs the memory controller);
    /// also sets memory.swap.max to 0 so swap cannot dodge it (`--memory-max` is the old
    /// spelling).
    #[arg(
        long = "memory",
        alias = "memory-max",
        allow_hyphen_values = true,
        value_name = "BYTES",
        value_parser = crate::args::memory_bytes
    )]
    memory: Option<u64>,
    /// oom_score_adj for the command (-1000..=1000). A guest agent runs at -1000 and children
    /// inherit it: at -1000 the memcg OOM killer finds no victim and the cgroup livelocks.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1000..=1000)
    )]
    oom_score_adj: i32,
    /// Run at most at this tier (0 = cgroup event files only, 1 = kernel sources: perf and the
    /// kernel log, 2 = tracepoints, 3 = + kprobes).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3), default_value_t = 3)]
    max_tier: u8,
    /// Individual events per container per CPU per second (0 = unbounded; counters stay exact).
    #[arg(long, default_value_t = RingOptions::default().max_events_per_sec)]
    max_events_per_sec: u32,
    /// At tier 1, record each denied fork through audit (guard becomes the audit daemon; every
    /// task's syscalls cost more while it is on).
    #[arg(long)]
    audit: bool,
    /// Write each event as a JSON line to this file as it arrives.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    log: crate::evidence::LogFlags,
    #[command(flatten)]
    metrics: crate::evidence::MetricsFlags,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let id = match &args.id {
        Some(id) => id.to_string(),
        None => {
            let name = args.cgroup.file_name().with_context(|| {
                format!(
                    "--cgroup {}: no directory name to use as the id; give --id",
                    args.cgroup.display()
                )
            })?;
            ContainerId::from_os_str(name)
                .with_context(|| format!("--cgroup {}", args.cgroup.display()))?
                .to_string()
        }
    };
    if args.cgroup.exists() {
        bail!(
            "{} already exists: give a fresh cgroup path",
            args.cgroup.display()
        );
    }
    // Before loading anything: the new cgroup's parent must be a cgroup v2 directory.
    let parent = args.cgroup.parent().unwrap_or(&args.cgroup);
    Hierarchy::find()?
        .identify(parent)
        .with_context(|| format!("--cgroup {}", args.cgroup.display()))?;
    let mut options = GuardOptions::default();
    options.max_tier = Tier::try_from(i64::from(args.max_tier))?;
    options.ring.max_events_per_sec = args.max_events_per_sec;
    options.audit_fork_denials = args.audit;
    let metrics = args.metrics.bind().await?;
    let guard = Arc::new(Guard::start(options).await?);
    cgroup::create(&args.cgroup)?;
    let result = run_in_cgroup(&guard, &id, &args, metrics).await;
    // Leave no cgroup behind, whatever happened (it is empty once the command has exited).
    if let Err(error) = cgroup::remove(&args.cgroup) {
        eprintln!("guard: warning: {error}");
    }
    result
}

async fn run_in_cgroup(
    guard: &Arc<Guard>,
    id: &str,
    args: &ExecArgs,
    metrics: Option<guard::metrics::MetricsListener>,
) -> anyhow::Result<ExitCode> {
    if let Some(pids) = args.pids {
        cgroup::pids::apply_max(&args.cgroup, Some(pids))?;
    }
    // With a memory limit, no swap either (where the kernel accounts swap), so swap cannot
    // dodge it.
    let swap_max = match args.memory {
        Some(bytes) => cgroup::memory::apply_max_without_swap(&args.cgroup, bytes)?,
        None => None,
    };
    let limits = Limits {
        memory_max: args.memory,
        swap_max,
        pids_max: args.pids,
    };
    guard.watch_limited(id, &args.cgroup, limits)?;
    let mut evidence = Evidence::start(
        guard,
        args.log.plan()?,
        serde_json::to_value(limits)?,
        metrics,
    )?;
    let writer = match args.events.as_deref() {
        Some(path) => {
            let mut options = args.log.summaries.events_file();
            options.budget = args.log.budget.for_events(path)?;
            Some(JsonLines::start_with(guard, path, options)?)
        }
        None => None,
    };

    let started = Instant::now();
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    cgroup::command_inside(&mut command, &args.cgroup, args.oom_score_adj)?;
    let mut child = command
        .spawn()
        .with_context(|| format!("running {:?}", args.command))?;
    let pid = child.id();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .context("waiting for the command")?;
    let elapsed = started.elapsed();
    evidence.stop_metrics();
    let mut report = guard.unwatch(id).await?;
    let global = guard.global_counters().await?;
    let mut ended = evidence.finish(std::slice::from_ref(&report)).await?;
    ended.flag(std::slice::from_mut(&mut report));
    // Everything is drained now: let the writer finish what is queued (its failure never
    // costs the report).
    if let Some(writer) = writer
        && let Err(error) = writer.finish().await
    {
        ended.events_failed(&error);
    }
    if args.json {
        let output = serde_json::json!({
            "command_pid": pid,
            "exit_code": status.code(),
            "signal": status.signal(),
            "elapsed_ms": elapsed.as_millis() as u64,
            "report": report,
            "global": global,
        });
        outln!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        outln!("command (pid {pid}) exited: {status} after {elapsed:.2?}");
        out!("{}", report.to_text());
        if let Some(bpf) = global.bpf.filter(|bpf| bpf.oom_kills > 0) {
            outln!(
                "  ! GLOBAL OOM: {} task(s) outside every container were OOM-killed",
                bpf.oom_kills
            );
        }
    }
    let code = if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    };
    Ok(ended.exit_code(code))
}

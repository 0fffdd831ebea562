//! `guard selftest`: the enforcement scenario, run as a guest agent would. The runtime gives
//! the containers' parent cgroup the guest budget (`--no-budget` leaves it out), then:
//! - `waves`: one guarded container at default limits (memory.max = 90% of MemAvailable,
//!   lowered to the budget; pids.max = 512) and three escalating waves inside it, each with its
//!   evidence: BPF counters and the kernel's own event files before and after, a fresh exec,
//!   the leftovers reaped, the agent's OOM score. Waves (as the original stress test): a pids
//!   bomb, 1000 forks held against pids.max; one 512 MiB allocation touched page by page; 200
//!   children allocating 2 MiB each.
//! - `tenants`: the three bombs at once in three containers beside a steady tenant
//!   (`tenants.rs`).
//!
//! Everything goes to the forensic log; the summary goes to `OUT/waves.json`; compact live
//! events go to the console.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use guard::{
    Guard, GuardOptions,
    agent::{self, Ending},
    forensic::{FsyncPolicy, LogOptions},
    limits::{BudgetRequest, LimitRequest, MemInfo, MemorySetting, PidsSetting},
    runtime::{Runtime, RuntimeOptions, Source, oom_score},
    sinks::event_log::QUEUE_EVENTS,
    spec::SpecOptions,
};
use serde_json::{Value, json};

use crate::evidence::{Evidence, LogPlan};

mod live;
mod rootfs;
mod tenants;

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// Set memory.max and pids.max to `max` (the probes stay on): the two-sided run, which a
    /// small VM may not survive.
    /// Also implies --no-budget.
    #[arg(long)]
    no_limits: bool,
    /// Leave the containers' parent cgroup without the guest budget: each container holds only
    /// its own default limits, and together they may overcommit the guest (the two-sided run
    /// of the tenants wave).
    #[arg(long)]
    no_budget: bool,
    /// Which waves to run: `waves` (three bombs in one container, one after the other),
    /// `tenants` (three bombs and a steady tenant in four containers at once) or `all`.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// The kernel's reserve in the guest budget in bytes (0 allowed), instead of the library's
    /// measured default: `cargo xtask limits` bisects it.
    #[arg(long, value_name = "BYTES")]
    kernel_reserve: Option<u64>,
    /// The tenants wave's trial of memory.high: each tenant also gets memory.high at this
    /// percentage of its memory.max (the kernel throttles and reclaims it before the OOM
    /// killer acts). Off by default: the measurements in docs/LIMITS.md decide.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    memory_high: Option<u8>,
    /// Where waves.json and the forensic log (OUT/log) go.
    #[arg(long, default_value = "/results")]
    out: PathBuf,
    /// memory.max of the waves' container: bytes (64M), a percentage of MemAvailable (60%), or
    /// `max`. By default the library's default (90% of MemAvailable), lowered to the guest
    /// budget.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<MemorySetting>,
    /// The stress program run inside the container (linked into its rootfs).
    #[arg(long, default_value = "/bin/guard-stress")]
    stress: PathBuf,
    #[command(flatten)]
    summaries: crate::evidence::SummaryFlags,
    #[command(flatten)]
    log_budget: crate::evidence::BudgetFlag,
    #[command(flatten)]
    stream: crate::evidence::StreamFlags,
    #[command(flatten)]
    metrics: crate::evidence::MetricsFlags,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Waves,
    Tenants,
    All,
}

struct Wave {
    name: &'static str,
    args: &'static [&'static str],
}

const WAVES: [Wave; 3] = [
    Wave {
        name: "pids_bomb",
        args: &["hold", "1000"],
    },
    Wave {
        name: "memory_bomb",
        args: &["alloc", "512"],
    },
    Wave {
        name: "fork_alloc_bomb",
        args: &["forkalloc", "200", "2"],
    },
];

pub async fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let delivered = selftest(&args).await?;
    Ok(if delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::evidence::STREAM_NOT_DELIVERED)
    })
}

/// `after - before` for every number in two JSON trees of the same shape.
fn delta(after: &Value, before: &Value) -> Value {
    match (after, before) {
        (Value::Object(after), Value::Object(before)) => Value::Object(
            after
                .iter()
                .map(|(key, value)| {
                    (
                        key.clone(),
                        delta(value, before.get(key).unwrap_or(&Value::Null)),
                    )
                })
                .collect(),
        ),
        (Value::Number(after), Value::Number(before)) => {
            json!(
                after
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(before.as_u64().unwrap_or(0))
            )
        }
        (after, _) => after.clone(),
    }
}

/// The live printer's queue (a slow console loses lines, counted, never memory).
const LIVE_QUEUE_EVENTS: usize = 4096;

/// The agent's own memory: (current, peak) resident set in KiB.
pub(crate) fn own_rss_kib() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    json!({"current": field("VmRSS:"), "peak": field("VmHWM:"), "anon": field("RssAnon:")})
}

/// Waits until the container holds only its init (the wave's processes are gone and reaped).
pub(crate) async fn leftovers_gone(cgroup: &Path, timeout: Duration) -> anyhow::Result<usize> {
    let procs = cgroup.join("cgroup.procs");
    // A killed task leaves cgroup.procs when it exits, but stays in pids.current (and keeps
    // its kernel stack charged) until the container's init reaps it: a fresh exec right after
    // a bomb's OOM kill could still find the container full, so wait for the kernel's count.
    // Reaped means pids.current counts no more than the live threads (cgroup.threads).
    let (pids_current, threads) = (
        cgroup.join(guard::cgroup::pids::CURRENT),
        cgroup.join("cgroup.threads"),
    );
    let deadline = Instant::now() + timeout;
    loop {
        let count = std::fs::read_to_string(&procs)
            .with_context(|| format!("reading {}", procs.display()))?
            .lines()
            .count();
        let tasks = std::fs::read_to_string(&pids_current)
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok());
        let live = std::fs::read_to_string(&threads).map(|text| text.lines().count());
        let reaped = match (tasks, live) {
            (Some(tasks), Ok(live)) => tasks <= live,
            _ => true,
        };
        let drained = count <= 1 && reaped;
        if drained || Instant::now() > deadline {
            return Ok(count.saturating_sub(1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The score of the containers' init, a reaper that only waits (Kubernetes gives its pause
/// container the same): under the shared budget the OOM killer picks the largest task in the
/// whole subtree, and a small init beside a pids bomb's smaller tasks was picked (seen in CI),
/// stopping a well-behaved tenant. Its workloads, exec'd, keep the container's score.
const REAPER_OOM_SCORE_ADJ: i32 = -998;

/// The guest-wide task limit an agent without the budget raised by hand (the budget's is
/// sized from it): enough that a container's pids.max, not the whole VM's task table, stops a
/// fork bomb.
const THREADS_MAX: u64 = 8192;

fn parse_memory(text: &str) -> Result<MemorySetting, String> {
    text.parse()
        .map_err(|error: guard::limits::LimitsError| error.to_string())
}

/// Runs the selftest; false when its log stream did not deliver the whole log.
async fn selftest(args: &SelftestArgs) -> anyhow::Result<bool> {
    let (no_limits, out, stress) = (args.no_limits, args.out.as_path(), args.stress.as_path());
    let budgeted = !(args.no_limits || args.no_budget);
    std::fs::create_dir_all(out)?;
    // With the budget the runtime raises threads-max to fit it; without, as an agent did
    // before there was one.
    let threads_max = if budgeted {
        None
    } else {
        Some(guard::runtime::raise_threads_max(THREADS_MAX)?)
    };
    let id = "waves";
    let options = GuardOptions::default();
    let budget =
        guard::footprint::Footprint::new(&options.ring, &[QUEUE_EVENTS, LIVE_QUEUE_EVENTS], true);
    let metrics = args.metrics.bind().await?;
    let guard = std::sync::Arc::new(Guard::start(options).await?);
    // The defaults are computed now, with the guard loaded: what is really available.
    let request = if no_limits {
        LimitRequest {
            memory: MemorySetting::Max,
            pids: PidsSetting::Max,
            ..LimitRequest::default()
        }
    } else {
        LimitRequest {
            memory: args.memory.clone().unwrap_or(MemorySetting::Default),
            ..LimitRequest::default()
        }
    };
    let runtime = Runtime::new(RuntimeOptions {
        budget: budgeted.then_some(BudgetRequest {
            kernel_reserve: args.kernel_reserve,
            log_reserve: Some(guard::forensic::ram_reserve(
                args.log_budget.budget(),
                &args.out.join("log"),
            )?),
            ..BudgetRequest::default()
        }),
        spec: SpecOptions {
            init_oom_score_adj: Some(REAPER_OOM_SCORE_ADJ),
            ..SpecOptions::default()
        },
        exec_helper: Some(crate::exec_helper()?),
        ..RuntimeOptions::default()
    })?;
    let resolved = runtime.resolve(&request)?;
    let limits = resolved.limits;
    let source = Source::Rootfs {
        rootfs: rootfs::make_rootfs(stress)?,
        args: vec!["/bin/guard-stress".into(), "reap".into()],
        env: Vec::new(),
    };
    let plan = LogPlan {
        dir: Some(out.join("log")),
        options: LogOptions {
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            budget: args.log_budget.budget(),
            acked: args.stream.acked(),
            ..LogOptions::default()
        },
        summaries: args.summaries.policy(),
        stream: args.stream.clone(),
    };
    let mut evidence = Evidence::start(&guard, plan, serde_json::to_value(limits)?, metrics)?;
    let log = evidence.log().context("the selftest's log")?;
    if let Some(record) = runtime.budget() {
        log.record("budget_applied", None, record).await?;
    }
    let live = live::Live::start(guard.subscribe(LIVE_QUEUE_EVENTS));
    let mut console = live::console();
    // The agent's bound: what it holds once everything is set up, plus every buffer full.
    let rss_before_waves = own_rss_kib();
    let bound_kib = rss_before_waves["current"].as_u64().unwrap_or(0) + budget.total() / 1024;

    let mut waves = Vec::new();
    let mut single = None;
    if args.scenario != Scenario::Tenants {
        let running = agent::supervise(&guard, &runtime, Some(log), id, &source, &limits).await?;
        writeln!(
            console,
            "[guard] container {id}: memory.max {:?}, pids.max {:?}, cgroup {}",
            limits.memory_max,
            limits.pids_max,
            running.container().cgroup().display()
        )?;
        for wave in &WAVES {
            writeln!(console, "[guard] ===== wave {} =====", wave.name)?;
            let record = run_wave(&guard, &running, wave).await?;
            // run_wave's report drained the guard's pending events: print the wave's own.
            live.flush().await;
            // Tier 1 has no BPF counters: its row is the live sources' (no reclaim runs).
            let row = if record["bpf"].is_object() {
                "bpf"
            } else {
                "sources"
            };
            let count = |key: &str| record[row][key].as_u64().unwrap_or(0);
            writeln!(
                console,
                "[guard] wave {} done in {:.1} s: forks {}, denied {}, OOM kills {}, memcg reclaims {}; fresh exec {}",
                wave.name,
                record["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                count("forks"),
                count("fork_denied"),
                count("oom_kills"),
                count(if row == "bpf" {
                    "reclaim_runs"
                } else {
                    "reclaim_delays"
                }),
                if record["fresh_exec_ok"] == true {
                    "ok"
                } else {
                    "FAILED"
                }
            )?;
            log.record("wave", Some(id), &record).await?;
            waves.push(record);
        }
        // The reaper never ends by itself.
        let finished = running.finish(Ending::KillNow).await?;
        log.record("report", Some(id), &finished.report).await?;
        log.record("removed", Some(id), &finished.removed).await?;
        single = Some(finished);
    }
    live.flush().await;
    let tenants = if args.scenario != Scenario::Waves {
        Some(
            tenants::run(
                &guard,
                &runtime,
                log,
                &source,
                args.memory_high,
                &mut console,
                &live,
            )
            .await?,
        )
    } else {
        None
    };

    let global = guard.global_counters().await?;
    live.flush().await;
    live.stop();
    evidence.stop_metrics();
    let ended = evidence.close(&[]).await?.end_stream();
    let delivered = ended.delivered;
    let head = ended.head.context("the selftest's log")?;
    let summary = json!({
        "no_limits": no_limits,
        "no_budget": !budgeted,
        "kernel": guard.capabilities().kernel_release,
        "tier": guard.tier(),
        "sources": guard.sources(),
        "budget": runtime.budget(),
        "clamped": resolved.clamped,
        "limits_applied": single.as_ref().map(|finished| &finished.created),
        "threads_max": threads_max.map(|(before, after)| json!({"before": before, "after": after})),
        "unprivileged_bpf_disabled": runtime.unprivileged_bpf(),
        "waves": waves,
        "tenants": tenants,
        "report": single.as_ref().map(|finished| &finished.report),
        "global": global,
        "agent_oom_score_adj": oom_score::own_oom_score_adj()?,
        "agent_memory": {
            "budget_bytes": {"items": budget, "total": budget.total()},
            "rss_before_waves_kib": rss_before_waves,
            "bound_kib": bound_kib,
        },
        "log_head": {"records": head.next_seq, "hash": head.prev},
    });
    std::fs::write(out.join("waves.json"), serde_json::to_vec_pretty(&summary)?)?;
    if let Some(finished) = &single {
        outln!("{}", finished.report.to_text());
        if finished.report.reconciliation.verdict == guard::Verdict::Violated {
            bail!("a limit was violated");
        }
    }
    Ok(delivered)
}

/// One wave: its command in the container, waited for; the leftovers reaped; a fresh exec;
/// and the evidence as deltas of the container's report across the wave.
async fn run_wave(
    guard: &Guard,
    running: &agent::Supervised<'_>,
    wave: &Wave,
) -> anyhow::Result<Value> {
    let id = running.container().id().as_str();
    let before = serde_json::to_value(guard.report(id).await?)?;
    let available_before = MemInfo::read()?.available;
    let started = Instant::now();
    let mut args = vec!["/bin/guard-stress".to_string()];
    args.extend(wave.args.iter().map(|arg| arg.to_string()));
    let (_, status) = running.exec_and_wait(&args, &[]).await?;
    let elapsed = started.elapsed();
    let leftovers = leftovers_gone(running.container().cgroup(), Duration::from_secs(120)).await?;
    let after = serde_json::to_value(guard.report(id).await?)?;
    let (_, fresh_exec) = running
        .exec_and_wait(&["/bin/true".to_string()], &[])
        .await?;
    Ok(json!({
        "wave": wave.name,
        "command": args,
        "exit_code": status.code(),
        "signal": std::os::unix::process::ExitStatusExt::signal(&status),
        "elapsed_ms": elapsed.as_millis() as u64,
        "guest_mem_available_before": available_before,
        "leftover_processes": leftovers,
        "fresh_exec_ok": fresh_exec.success(),
        "agent_oom_score_adj": oom_score::own_oom_score_adj()?,
        "agent_rss_kib": own_rss_kib(),
        "bpf": delta(&after["counters"]["bpf"], &before["counters"]["bpf"]),
        "sources": delta(&after["counters"]["sources"], &before["counters"]["sources"]),
        "kernel": delta(&after["kernel_since_watch"], &before["kernel_since_watch"]),
        "delivered": delta(&after["counters"]["delivered"], &before["counters"]["delivered"]),
        "verdict_after": {"pids": after["pids"]["verdict"], "memory": after["memory"]["verdict"]},
    }))
}

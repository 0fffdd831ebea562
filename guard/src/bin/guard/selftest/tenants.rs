//! The multi-tenant wave: in one guest, at the same time, a pids bomb, a 512 MiB allocation and
//! a 200 × 2 MiB fork+alloc bomb in three containers, and a well-behaved tenant doing steady
//! work in a fourth, all with default limits (clamped to the guest budget). The evidence per
//! container (its report, BPF against the kernel's files), the budget's own `memory.events`
//! (the hierarchical kills), the kernel log's OOM kills by scope (a global one is the failure
//! the budget exists to prevent), the steady tenant's slowdown and the agent's score and RSS.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use guard::{
    Guard,
    agent::{self, Ending},
    cgroup::EventFiles,
    kmsg::KmsgWatch,
    limits::LimitRequest,
    runtime::{Runtime, Source, oom_score},
    sinks::event_log::EventLog,
};
use serde_json::{Value, json};

use super::{leftovers_gone, own_rss_kib};

struct Tenant {
    id: &'static str,
    args: &'static [&'static str],
}

/// The steady tenant's work: rounds of a 1 MiB child, small enough never to be the largest
/// task an OOM killer picks.
const STEADY: &[&str] = &["steady", "100", "1"];

const TENANTS: [Tenant; 4] = [
    Tenant {
        id: "tenant-pids",
        args: &["hold", "1000"],
    },
    Tenant {
        id: "tenant-memory",
        args: &["alloc", "512"],
    },
    Tenant {
        id: "tenant-forkalloc",
        args: &["forkalloc", "200", "2"],
    },
    Tenant {
        id: "tenant-steady",
        args: STEADY,
    },
];

/// How long the bombs may run: the slowest wave seen took 118 s under emulation.
const WAVE_DEADLINE: Duration = Duration::from_secs(300);
/// How long processes get to go once killed, and a probe to answer.
const AFTER_KILL: Duration = Duration::from_secs(120);

const OOM_DUMP_TASKS: &str = "/proc/sys/vm/oom_dump_tasks";

/// Writes `value` to a sysctl file and returns what it held.
fn set_sysctl(path: &str, value: &str) -> anyhow::Result<String> {
    let before = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
    Ok(before.trim().to_string())
}

fn command(args: &[&str]) -> Vec<String> {
    std::iter::once("/bin/guard-stress")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect()
}

/// Kills every process of a container's cgroup but its init; returns one line per process
/// (pid, name, state, what it waits in), the diagnosis of a wave that did not end.
fn kill_workloads(cgroup: &Path, init: i32) -> Vec<String> {
    let pids = guard::cgroup::files::read_ids(cgroup, "cgroup.procs").unwrap_or_default();
    let mut lines = Vec::new();
    for pid in pids
        .into_iter()
        .map(|pid| pid as i32)
        .filter(|pid| *pid != init)
    {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map(|text| text.trim().to_string())
                .unwrap_or_default()
        };
        let state = guard::runtime::stat_fields(pid)
            .and_then(|fields| fields.into_iter().next())
            .unwrap_or_else(|| "?".to_string());
        lines.push(format!(
            "pid {pid} ({}) state {state} waiting in {}",
            read("comm"),
            read("wchan")
        ));
        // SAFETY: kill(2) with a pid read from the container's cgroup.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    lines
}

/// Runs the wave and returns its record.
pub async fn run(
    guard: &Guard,
    runtime: &Runtime,
    log: &EventLog,
    source: &Source,
    memory_high_percent: Option<u8>,
    console: &mut dyn std::io::Write,
    live: &super::live::Live,
) -> anyhow::Result<Value> {
    writeln!(
        console,
        "[guard] ===== wave tenants (4 containers at once) ====="
    )?;
    // Hundreds of OOM reports, each with a dump of every task, would overrun a small kernel's
    // log buffer (and crawl over a serial console): the kill lines are what count here, and
    // guard records the victims itself.
    let dump_tasks = set_sysctl(OOM_DUMP_TASKS, "0")?;
    let kmsg = KmsgWatch::start()?;
    let parent_before = match runtime.budget() {
        Some(budget) => Some(EventFiles::read(&budget.cgroup)?),
        None => None,
    };
    let mut running = Vec::new();
    let mut limits = Vec::new();
    for tenant in &TENANTS {
        let resolved = runtime.resolve(&LimitRequest::default())?;
        let supervised = agent::supervise(
            guard,
            runtime,
            Some(log),
            tenant.id,
            source,
            &resolved.limits,
        )
        .await
        .with_context(|| format!("starting {}", tenant.id))?;
        let memory_high = match (memory_high_percent, resolved.limits.memory_max) {
            (Some(percent), Some(max)) => {
                let high = max / 100 * u64::from(percent);
                guard::cgroup::memory::apply_high(supervised.container().cgroup(), Some(high))?;
                Some(high)
            }
            _ => None,
        };
        limits.push(json!({
            "limits": resolved.limits,
            "clamped": resolved.clamped,
            "memory_high": memory_high,
        }));
        running.push(supervised);
    }
    let steady = &running[3];
    // The steady tenant alone first: the baseline its slowdown is measured against.
    let baseline = Instant::now();
    let (_, alone) = steady.exec_and_wait(&command(STEADY), &[]).await?;
    let baseline_ms = baseline.elapsed().as_millis() as u64;

    let started = Instant::now();
    let timed = |index: usize| {
        let supervised = &running[index];
        let args = command(TENANTS[index].args);
        async move {
            let result = supervised.exec_and_wait(&args, &[]).await;
            (result, started.elapsed().as_millis() as u64)
        }
    };
    // A wave that outlives its deadline is a failure to diagnose, not a silent VM timeout:
    // say what each tenant still runs, then end their workloads.
    let mut deadline_hit = false;
    let (pids, memory, forkalloc, loaded) = {
        let mut wave =
            std::pin::pin!(async { tokio::join!(timed(0), timed(1), timed(2), timed(3)) });
        match tokio::time::timeout(WAVE_DEADLINE, &mut wave).await {
            Ok(done) => done,
            Err(_) => {
                deadline_hit = true;
                writeln!(
                    console,
                    "[guard] wave tenants still running after {} s: killing every workload",
                    WAVE_DEADLINE.as_secs()
                )?;
                for supervised in &running {
                    let container = supervised.container();
                    for line in kill_workloads(container.cgroup(), container.init_pid()) {
                        writeln!(console, "[guard]   {}: {line}", container.id())?;
                    }
                }
                tokio::time::timeout(AFTER_KILL, &mut wave).await.context(
                    "the tenants' execs did not return even after their workloads were killed",
                )?
            }
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // Every tenant's processes gone first, then a fresh exec into each: the probe asks whether
    // the container outlived the wave, not whether an exec succeeds during a neighbour's OOM
    // storm (its libcontainer helpers run under the budget and may be the victims; seen).
    let gone = |index: usize| leftovers_gone(running[index].container().cgroup(), AFTER_KILL);
    let (a, b, c, d) = tokio::join!(gone(0), gone(1), gone(2), gone(3));
    let leftovers = vec![a?, b?, c?, d?];
    let mut containers = serde_json::Map::new();
    for ((index, (result, done_ms)), (limits, leftovers)) in [pids, memory, forkalloc, loaded]
        .into_iter()
        .enumerate()
        .zip(limits.into_iter().zip(leftovers))
    {
        // A neighbour's pressure may kill libcontainer's exec helper (it runs inside the
        // container's cgroup, under the budget): a fact to record, not the end of the wave.
        let (status, exec_error) = match result {
            Ok((_, status)) => (Some(status), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let fresh = tokio::time::timeout(
            AFTER_KILL,
            running[index].exec_and_wait(&["/bin/true".to_string()], &[]),
        )
        .await
        .map_err(|_| format!("no answer within {} s", AFTER_KILL.as_secs()))
        .and_then(|done| done.map_err(|error| error.to_string()))
        .map(|(_, status)| status.success());
        containers.insert(
            TENANTS[index].id.to_string(),
            json!({
                "command": TENANTS[index].args,
                "exit_code": status.and_then(|status| status.code()),
                "signal": status.and_then(|status| std::os::unix::process::ExitStatusExt::signal(&status)),
                "exec_error": exec_error,
                "done_ms": done_ms,
                "leftover_processes": leftovers,
                "fresh_exec_ok": fresh.as_ref().is_ok_and(|ok| *ok),
                "fresh_exec_error": fresh.err(),
                "requested": limits,
            }),
        );
    }
    let agent_rss = own_rss_kib();
    for supervised in running {
        let id = supervised.container().id().to_string();
        let finished = supervised.finish(Ending::KillNow).await?;
        log.record("report", Some(&id), &finished.report).await?;
        log.record("removed", Some(&id), &finished.removed).await?;
        let entry = containers.get_mut(&id).expect("every tenant has an entry");
        entry["report"] = serde_json::to_value(&finished.report)?;
        entry["final_events"] = serde_json::to_value(&finished.removed.final_events)?;
    }
    let parent = match (runtime.budget(), parent_before) {
        (Some(budget), Some(before)) => {
            let after = EventFiles::read(&budget.cgroup)?;
            json!({"cgroup": budget.cgroup, "events_during_wave": after.since(&before)})
        }
        _ => Value::Null,
    };
    let oom = kmsg.finish();
    set_sysctl(OOM_DUMP_TASKS, &dump_tasks)?;
    // The tenants' reports drained the guard's pending events: print them before the total.
    live.flush().await;
    writeln!(
        console,
        "[guard] wave tenants done in {:.1} s: OOM kills {} memcg, {} global; steady tenant {} ms alone, {} ms beside the bombs",
        elapsed_ms as f64 / 1000.0,
        oom.memcg,
        oom.global,
        baseline_ms,
        containers["tenant-steady"]["done_ms"]
    )?;
    let loaded_ms = containers["tenant-steady"]["done_ms"].as_u64().unwrap_or(0);
    let record = json!({
        "wave": "tenants",
        "elapsed_ms": elapsed_ms,
        "deadline_hit": deadline_hit,
        "memory_high_percent": memory_high_percent,
        "budget": runtime.budget(),
        "containers": containers,
        "parent": parent,
        "kernel_log_oom_kills": oom,
        "vm_oom_dump_tasks_before": dump_tasks,
        "steady": {
            "alone_ok": alone.success(),
            "alone_ms": baseline_ms,
            "beside_bombs_ms": loaded_ms,
            "slowdown": loaded_ms as f64 / baseline_ms.max(1) as f64,
        },
        "agent_oom_score_adj": oom_score::own_oom_score_adj()?,
        "agent_rss_kib": agent_rss,
        // Each exec and create ran in a helper outside the budget, up to four at once.
        "exec_helper_peak_anon_kib": guard::runtime::exec_helper_peak_anon_kib(),
    });
    log.record("wave", None, &record).await?;
    Ok(record)
}

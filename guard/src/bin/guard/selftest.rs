//! `guard selftest`: the enforcement scenario, run as a guest agent would. One guarded container (default
//! limits: memory.max = 90% of MemAvailable, pids.max = 512), three escalating waves inside
//! it, and per wave the evidence: BPF counters and the kernel's own event files before and
//! after, a fresh exec, the leftovers reaped, the agent's OOM score. Everything goes to the
//! forensic log; the summary goes to `OUT/waves.json`; compact live events go to the console.
//!
//! Waves (as the original stress test): 1. a pids bomb, 1000 forks held against pids.max;
//! 2. one 512 MiB allocation touched page by page; 3. 200 children allocating 2 MiB each.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use guard::{
    EventDetail, Guard, GuardEvent, GuardOptions, RequestedLimits,
    event_log::EventLog,
    forensic::{FsyncPolicy, LogOptions},
    limits::{LimitRequest, MemInfo, MemorySetting, PidsSetting},
    runtime::{self, Runtime, RuntimeOptions, Source, oom_score},
};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// Set memory.max and pids.max to `max` (the probes stay on): the two-sided run, which a
    /// small VM may not survive.
    #[arg(long)]
    no_limits: bool,
    /// Where waves.json and the forensic log (OUT/log) go.
    #[arg(long, default_value = "/results")]
    out: PathBuf,
    /// memory.max of the container: bytes (64M), a percentage of MemAvailable (60%), or `max`.
    /// Not the library's 90%: measured in a 128 MiB guest, MemAvailable overestimates what
    /// can be allocated by ~10 MiB (reclaimable slab that is pinned tmpfs dentries, watermark
    /// boost), and at 90% the global OOM killer struck before the container's limit (6.1).
    #[arg(long, default_value = "60%", value_parser = parse_memory)]
    memory: MemorySetting,
    /// The stress program run inside the container (linked into its rootfs).
    #[arg(long, default_value = "/bin/guard-stress")]
    stress: PathBuf,
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

pub fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(selftest(&args))?;
    Ok(ExitCode::SUCCESS)
}

/// A console for live lines (the guest's serial console), else stderr.
fn console() -> Box<dyn std::io::Write + Send> {
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(file) => Box::new(file),
        Err(_) => Box::new(std::io::stderr()),
    }
}

/// A rootfs of hard links (no copy: a 128 MiB guest has no memory to spare) to busybox, the
/// stress program and the shared libraries they need.
fn make_rootfs(stress: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = PathBuf::from("/tmp/waves-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    link(stress, &rootfs.join("bin/guard-stress"))?;
    link(Path::new("/bin/busybox"), &rootfs.join("bin/busybox"))?;
    for applet in ["sh", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    for libs in ["/lib", "/lib64", "/usr/lib"] {
        let source = Path::new(libs);
        if source.is_dir() {
            link_tree(source, &rootfs.join(libs.trim_start_matches('/')))?;
        }
    }
    Ok(rootfs)
}

fn link(source: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::hard_link(source, target)
        .or_else(|_| std::fs::copy(source, target).map(|_| ()))
        .with_context(|| format!("linking {} to {}", source.display(), target.display()))
}

fn link_tree(source: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let destination = target.join(entry.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &destination)?;
        } else if kind.is_dir() {
            link_tree(&entry.path(), &destination)?;
        } else {
            link(&entry.path(), &destination)?;
        }
    }
    Ok(())
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
fn own_rss_kib() -> Value {
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
async fn leftovers_gone(cgroup: &Path, timeout: Duration) -> anyhow::Result<usize> {
    let procs = cgroup.join("cgroup.procs");
    let deadline = Instant::now() + timeout;
    loop {
        let count = std::fs::read_to_string(&procs)
            .with_context(|| format!("reading {}", procs.display()))?
            .lines()
            .count();
        if count <= 1 || Instant::now() > deadline {
            return Ok(count.saturating_sub(1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints the events on the console as they happen: every OOM kill and loss at once, the
/// storms (denials, reclaims, throttling) summed once a second, so a bomb stays readable.
async fn print_live(mut events: tokio::sync::mpsc::Receiver<GuardEvent>) {
    let mut out = console();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut denied = std::collections::BTreeMap::<String, u64>::new();
    let (mut reclaims, mut reclaim_us, mut throttled) = (0u64, 0u64, 0u64);
    // OOM kills shown one by one per tick, the rest of a storm summed.
    const KILLS_SHOWN: u64 = 3;
    let (mut kills_in_tick, mut kills_unshown) = (0u64, 0u64);
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = tick.tick() => {
                for (cause, count) in std::mem::take(&mut denied) {
                    let _ = writeln!(out, "[guard] fork denied x{count} (cause: {cause})");
                }
                if reclaims > 0 {
                    let _ = writeln!(out, "[guard] memcg reclaim x{reclaims} ({reclaim_us} µs stalled)");
                    (reclaims, reclaim_us) = (0, 0);
                }
                if throttled > 0 {
                    let _ = writeln!(out, "[guard] {throttled} events throttled (counters stay exact)");
                    throttled = 0;
                }
                if kills_unshown > 0 {
                    let _ = writeln!(out, "[guard] ... and {kills_unshown} more OOM kills");
                }
                (kills_in_tick, kills_unshown) = (0, 0);
                continue;
            }
        };
        let container = event.container.as_deref().unwrap_or("-");
        match &event.event.detail {
            EventDetail::ForkDenied { cause, .. } => {
                *denied.entry(format!("{cause:?}")).or_default() += 1;
            }
            EventDetail::Reclaim { duration_ns, .. } => {
                reclaims += 1;
                reclaim_us += duration_ns / 1000;
            }
            EventDetail::Throttle { suppressed, .. } => throttled += suppressed,
            EventDetail::OomVictim {
                victim_pid,
                comm,
                outside_containers,
                ..
            } => {
                kills_in_tick += 1;
                if kills_in_tick > KILLS_SHOWN && !*outside_containers {
                    kills_unshown += 1;
                    continue;
                }
                let scope = if *outside_containers {
                    "OUTSIDE every container: GLOBAL OOM"
                } else {
                    "in its container"
                };
                let _ = writeln!(
                    out,
                    "[guard] {container}: OOM kill of pid {victim_pid} ({comm}) {scope}"
                );
            }
            EventDetail::Lost { event_kind, count } => {
                let _ = writeln!(out, "[guard] LOST {count} {event_kind} events");
            }
            EventDetail::Fork { .. }
            | EventDetail::KernelFile { .. }
            | EventDetail::ReaderFault { .. } => {}
        }
    }
}

/// The guest-wide task limit an agent needs so that a container's pids.max, not the whole
/// VM's task table, stops a fork bomb.
const THREADS_MAX: u64 = 8192;

/// A 128 MiB guest's kernel derives threads-max from its memory (~490): a bomb would exhaust
/// the whole VM's task table, the agent included, before reaching a pids.max of 512. Raises it
/// and returns (before, after).
fn raise_threads_max() -> anyhow::Result<(u64, u64)> {
    let path = "/proc/sys/kernel/threads-max";
    let before: u64 = std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))?;
    if before >= THREADS_MAX {
        return Ok((before, before));
    }
    std::fs::write(path, THREADS_MAX.to_string()).with_context(|| format!("writing {path}"))?;
    Ok((before, THREADS_MAX))
}

fn parse_memory(text: &str) -> Result<MemorySetting, String> {
    text.parse()
        .map_err(|error: guard::limits::LimitsError| error.to_string())
}

async fn selftest(args: &SelftestArgs) -> anyhow::Result<()> {
    let (no_limits, out, stress) = (args.no_limits, args.out.as_path(), args.stress.as_path());
    std::fs::create_dir_all(out)?;
    let threads_max = raise_threads_max()?;
    let id = "waves";
    let options = GuardOptions::default();
    let budget = guard::budget::MemoryBudget::new(
        &options.stream,
        &[guard::event_log::QUEUE_EVENTS, LIVE_QUEUE_EVENTS],
        true,
    );
    let guard = Guard::start(options).await?;
    // The defaults are computed now, with the guard loaded: what is really available.
    let request = if no_limits {
        LimitRequest {
            memory: MemorySetting::Max,
            pids: PidsSetting::Max,
            ..LimitRequest::default()
        }
    } else {
        LimitRequest {
            memory: args.memory.clone(),
            ..LimitRequest::default()
        }
    };
    let limits = request.resolve(&MemInfo::read()?)?;
    let runtime = Runtime::new(RuntimeOptions::default())?;
    let rootfs = make_rootfs(stress)?;
    let source = Source::Rootfs {
        rootfs,
        args: vec!["/bin/guard-stress".into(), "reap".into()],
        env: Vec::new(),
    };
    let created = runtime.create(id, &source, &limits)?;
    let mut container = created.container;
    let requested = RequestedLimits {
        memory_max: limits.memory_max,
        pids_max: limits.pids_max,
    };
    guard.watch_limited(id, container.cgroup(), requested)?;
    let log = EventLog::start(
        &guard,
        &out.join("log"),
        LogOptions {
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            ..LogOptions::default()
        },
        serde_json::to_value(limits)?,
    )?;
    log.record("limits_applied", Some(id), &created.applied)
        .await?;
    let live = tokio::spawn(print_live(guard.subscribe(LIVE_QUEUE_EVENTS)));
    container.start()?;
    let mut console = console();
    writeln!(
        console,
        "[guard] container {id}: memory.max {:?}, pids.max {:?}, cgroup {}",
        limits.memory_max,
        limits.pids_max,
        container.cgroup().display()
    )?;

    // The agent's bound: what it holds once everything is set up, plus every buffer full.
    let rss_before_waves = own_rss_kib();
    let bound_kib = rss_before_waves["current"].as_u64().unwrap_or(0) + budget.total() / 1024;
    let mut waves = Vec::new();
    for wave in &WAVES {
        writeln!(console, "[guard] ===== wave {} =====", wave.name)?;
        let before = serde_json::to_value(guard.report(id).await?)?;
        let available_before = MemInfo::read()?.available;
        let started = Instant::now();
        let mut args = vec!["/bin/guard-stress".to_string()];
        args.extend(wave.args.iter().map(|arg| arg.to_string()));
        let pid = container.exec(&args, &[])?;
        let status = tokio::task::spawn_blocking(move || runtime::wait_pid(pid)).await??;
        let elapsed = started.elapsed();
        let leftovers = leftovers_gone(container.cgroup(), Duration::from_secs(120)).await?;
        let after = serde_json::to_value(guard.report(id).await?)?;
        let probe = container.exec(&["/bin/true".to_string()], &[])?;
        let fresh_exec = tokio::task::spawn_blocking(move || runtime::wait_pid(probe)).await??;
        let record = json!({
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
            "kernel": delta(&after["kernel_since_watch"], &before["kernel_since_watch"]),
            "delivered": delta(&after["counters"]["delivered"], &before["counters"]["delivered"]),
            "verdict_after": {"pids": after["pids"]["verdict"], "memory": after["memory"]["verdict"]},
        });
        let count = |key: &str| record["bpf"][key].as_u64().unwrap_or(0);
        writeln!(
            console,
            "[guard] wave {} done in {:.1} s: forks {}, denied {}, OOM kills {}, memcg reclaims {}; fresh exec {}",
            wave.name,
            elapsed.as_secs_f64(),
            count("forks"),
            count("fork_denied"),
            count("oom_kills"),
            count("reclaim_runs"),
            if fresh_exec.success() { "ok" } else { "FAILED" }
        )?;
        log.record("wave", Some(id), &record).await?;
        waves.push(record);
    }

    let report = guard.unwatch(id).await?;
    log.record("report", Some(id), &report).await?;
    let global = guard.global_counters().await?;
    container.kill(libc::SIGKILL, true)?;
    let _ = tokio::task::spawn_blocking({
        let init = container.init_pid();
        move || runtime::wait_pid(init)
    })
    .await;
    let removed = container.delete()?;
    log.record("removed", Some(id), &removed).await?;
    live.abort();
    let head = log.close().await?;
    let summary = json!({
        "no_limits": no_limits,
        "kernel": guard.capabilities().kernel_release,
        "tier": guard.tier(),
        "limits_applied": created.applied,
        "threads_max": {"before": threads_max.0, "after": threads_max.1},
        "waves": waves,
        "report": report,
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
    println!("{}", report.to_text());
    if report.reconciliation.verdict == guard::Verdict::Violated {
        bail!("a limit was violated");
    }
    Ok(())
}

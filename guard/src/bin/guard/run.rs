//! `guard run`: one guarded container, run to completion in the guest.
//!
//! Order matters: the container is created (its init waits), registered with the guard, and
//! only then started, so the guard sees its first fork. Its event files are snapshotted
//! before the cgroup is deleted (deletion erases them).
use std::{
    path::PathBuf,
    process::{ExitCode, ExitStatus},
    time::Instant,
};

use anyhow::Context;
use guard::{
    ContainerId, Guard, GuardOptions, Tier,
    config::Config,
    event_log::EventLog,
    limits::{LimitRequest, Limits, MemInfo, MemorySetting, PidsSetting, SwapSetting},
    report::{Report as GuardReport, RequestedLimits},
    runtime::{
        Container, Created, LimitsApplied, Removed, Runtime, RuntimeOptions, Source, Timings,
        oom_score,
    },
    spec::{DEFAULT_CGROUP_ROOT, DEFAULT_OOM_SCORE_ADJ, SpecOptions},
};
use serde::Serialize;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The agent's settings (TOML: memory, pids, swap, cgroup_root, log_dir, fsync,
    /// max_tier; see docs/ERRORS.md). Options given here override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Container id (no '/', whitespace or control characters, not `.` or `..`, at most
    /// 128 bytes; default `run-<guard's pid>`).
    #[arg(long, value_parser = crate::cli_args::container_id())]
    id: Option<ContainerId>,
    /// memory.max: bytes (64M, 1.5G, 67108864), a percentage of MemAvailable (50%), or
    /// `max`. Default: 90% of MemAvailable.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::cli_args::memory)]
    memory: Option<MemorySetting>,
    /// pids.max: a count or `max`. Default: 512.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::cli_args::pids)]
    pids: Option<PidsSetting>,
    /// memory.swap.max: bytes or `max`. Default: 0 (no swap for the container).
    #[arg(long, allow_hyphen_values = true, value_parser = crate::cli_args::swap)]
    swap: Option<SwapSetting>,
    /// The container processes' oom_score_adj (-999..=1000).
    #[arg(
        long,
        default_value_t = DEFAULT_OOM_SCORE_ADJ,
        allow_hyphen_values = true,
        value_parser = crate::cli_args::container_oom_score_adj
    )]
    oom_score_adj: i32,
    /// Parent cgroup of the containers, relative to the cgroup2 mount. Default: /guard.
    #[arg(long, value_parser = crate::cli_args::cgroup_root)]
    cgroup_root: Option<String>,
    /// Root filesystem folder to run the command in.
    #[arg(long, conflicts_with = "bundle", required_unless_present = "bundle")]
    rootfs: Option<PathBuf>,
    /// OCI bundle folder (with config.json); its process runs, unless a command is given.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Extra environment for the command (KEY=VALUE), with --rootfs.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Never run the guard above this tier (0, 1, 2).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    max_tier: Option<u8>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the container init's pid (as the guest sees it) here once it is started and the
    /// `--exec` commands have finished.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Do not stream events to stderr.
    #[arg(long)]
    quiet: bool,
    /// Use libcontainer's no-pivot mode (for roots that cannot be pivot_root'ed).
    #[arg(long)]
    no_pivot: bool,
    /// After the start, run this shell command inside the container (`exec` into it, as
    /// `sh -c`) and wait for it; repeatable, in order. Exit codes go into the report.
    #[arg(long = "exec", value_name = "SHELL_CMD")]
    exec: Vec<String>,
    /// Tests only: leave cgroupsPath out of the spec (the runtime picks its own cgroup).
    #[arg(long, hide = true)]
    omit_cgroups_path: bool,
    #[command(flatten)]
    log: crate::log_args::LogArgs,
    /// The command and its arguments (required with --rootfs).
    #[arg(last = true)]
    command: Vec<String>,
}

impl RunArgs {
    /// Fills what the command line left out from the config file.
    fn apply(&mut self, config: Config) {
        self.memory = self.memory.take().or(config.memory);
        self.pids = self.pids.or(config.pids);
        self.swap = self.swap.or(config.swap);
        self.cgroup_root = self.cgroup_root.take().or(config.cgroup_root);
        self.log.dir = self.log.dir.take().or(config.log_dir);
        self.log.fsync = self.log.fsync.or(config.fsync);
        self.max_tier = self.max_tier.or(config.max_tier.map(u8::from));
    }
}

pub fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    use crate::cli_args::usage;
    if let Some(path) = &args.config {
        let config = Config::load(path).map_err(usage)?;
        args.apply(config);
    }
    // Resolve and validate the limits before anything else exists.
    let request = LimitRequest {
        memory: args.memory.clone().unwrap_or(MemorySetting::Default),
        pids: args.pids.unwrap_or(PidsSetting::Default),
        swap: args.swap.unwrap_or(SwapSetting::Default),
    };
    let limits = request.resolve(&MemInfo::read()?).map_err(usage)?;
    let source = match (&args.rootfs, &args.bundle) {
        (Some(rootfs), _) => {
            if args.command.is_empty() {
                return Err(usage("--rootfs needs a command after `--`"));
            }
            Source::Rootfs {
                rootfs: rootfs.clone(),
                args: args.command.clone(),
                env: args.env.clone(),
            }
        }
        (None, Some(bundle)) => {
            if !args.command.is_empty() {
                return Err(usage(
                    "with --bundle the command comes from the bundle's config.json",
                ));
            }
            Source::Bundle(bundle.clone())
        }
        (None, None) => return Err(usage("give --rootfs DIR or --bundle DIR")),
    };
    // Single-threaded on purpose: libcontainer clones the calling process, and the fewer
    // threads exist at that moment the fewer locks a child could inherit held.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    tokio.block_on(run_guarded(args, request, limits, source))
}

/// Everything `guard run` reports about one container.
#[derive(Serialize)]
struct Report {
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    limits_requested: LimitRequest,
    limits_resolved: Limits,
    /// What the kernel held right after creation (the runtime's read-back).
    limits_applied: LimitsApplied,
    /// The guard's reconciled report, taken after the container exited, before deletion.
    guard: GuardReport,
    /// memory.events, memory.events.local, pids.events read just before the cgroup went.
    final_kernel_events: guard::cgroup::EventFiles,
    /// The agent's (this process's) oom_score_adj right after the container started.
    agent_oom_score_adj_after_start: i32,
    /// Commands exec'd into the container (`--exec`).
    execs: Vec<Exec>,
    /// The agent's oom_score_adj after the last exec (None without `--exec`).
    agent_oom_score_adj_after_execs: Option<i32>,
    timings: Timings,
    wall_ms: u64,
}

/// A command exec'd into the running container.
#[derive(Serialize)]
struct Exec {
    command: String,
    pid: i32,
    exit_code: Option<i32>,
}

/// What `supervise` found out.
struct Supervised {
    status: ExitStatus,
    guard_report: GuardReport,
    agent_score: i32,
    execs: Vec<Exec>,
    agent_score_after_execs: Option<i32>,
}

/// The one place the report is put together.
#[allow(clippy::too_many_arguments)]
fn assemble_report(
    request: LimitRequest,
    limits: Limits,
    applied: LimitsApplied,
    supervised: Supervised,
    removed: Removed,
    timings: Timings,
    started: Instant,
) -> Report {
    use std::os::unix::process::ExitStatusExt;
    Report {
        exit_code: supervised.status.code(),
        exit_signal: supervised.status.signal(),
        limits_requested: request,
        limits_resolved: limits,
        limits_applied: applied,
        guard: supervised.guard_report,
        final_kernel_events: removed.final_events,
        agent_oom_score_adj_after_start: supervised.agent_score,
        execs: supervised.execs,
        agent_oom_score_adj_after_execs: supervised.agent_score_after_execs,
        timings,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn print_human(report: &Report) {
    print!("{}", report.guard.to_text());
    let show = |value: Option<u64>| value.map_or("max".to_string(), |v| v.to_string());
    let limit = |value: Option<guard::cgroup::Limit>| {
        value.map_or("absent".to_string(), |limit| limit.to_string())
    };
    let applied = &report.limits_applied;
    match (report.exit_code, report.exit_signal) {
        (Some(code), _) => println!("  exited with code {code}"),
        (_, Some(signal)) => println!("  killed by signal {signal}"),
        _ => println!("  ended"),
    }
    println!(
        "  at creation: memory.max asked {} kernel {}; memory.swap.max asked {} kernel {}; \
         pids.max asked {} kernel {}",
        show(report.limits_resolved.memory_max),
        limit(applied.read_back.memory_max),
        show(report.limits_resolved.swap_max),
        limit(applied.read_back.memory_swap_max),
        show(report.limits_resolved.pids_max),
        limit(applied.read_back.pids_max)
    );
    println!(
        "  oom_score_adj: container {}, agent after start {}",
        applied.oom_score_adj, report.agent_oom_score_adj_after_start
    );
    for exec in &report.execs {
        println!(
            "  exec {:?} (pid {}): exit code {:?}",
            exec.command, exec.pid, exec.exit_code
        );
    }
    let events = &report.final_kernel_events;
    let line = |name: &str, counts: &Option<guard::cgroup::KeyedCounts>| match counts {
        Some(counts) => {
            let pairs: Vec<String> = counts.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  final {name:<20} {}", pairs.join(", "));
        }
        None => println!("  final {name:<20} absent"),
    };
    line("memory.events", &events.memory_events);
    line("memory.events.local", &events.memory_events_local);
    line("pids.events", &events.pids_events);
    let t = report.timings;
    println!(
        "  times: create {} µs, start {} µs, delete {} µs, wall {} ms",
        t.create_us, t.start_us, t.delete_us, report.wall_ms
    );
}

async fn run_guarded(
    args: RunArgs,
    request: LimitRequest,
    limits: Limits,
    source: Source,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Listening from the very start: a SIGTERM that arrives while the container is being
    // created or just after its pid file appears is queued, not fatal to the agent.
    let mut stop_signals = StopSignals::listen()?;
    let id = args.id.as_ref().map_or_else(
        || format!("run-{}", std::process::id()),
        ContainerId::to_string,
    );
    let max_tier = match args.max_tier {
        Some(0) => Tier::CgroupFilesOnly,
        Some(1) => Tier::Tracepoints,
        _ => Tier::TracepointsAndKprobes,
    };
    let guard = Guard::start(GuardOptions {
        max_tier,
        ..GuardOptions::default()
    })
    .await
    .context("starting the guard")?;
    let log = args.log.start(&guard, serde_json::to_value(limits)?)?;
    let result = run_logged(
        &args,
        &id,
        &guard,
        log.as_ref(),
        request,
        limits,
        source,
        started,
        &mut stop_signals,
    )
    .await;
    // Close the log whatever happened, so it ends with its `stop` record; a log error is
    // reported (after the container's own error, if there was one), never swallowed.
    let closed = match log {
        Some(log) => log.close().await.map(Some),
        None => Ok(None),
    };
    match (result, closed) {
        (Ok(code), Ok(head)) => {
            if let Some(head) = head {
                eprintln!(
                    "guard: forensic log in {}: {} records, head {}",
                    head.file.display(),
                    head.next_seq,
                    head.prev
                );
            }
            Ok(code)
        }
        (Ok(_), Err(error)) => Err(anyhow::Error::new(error).context("closing the forensic log")),
        (Err(error), Ok(_)) => Err(error),
        (Err(error), Err(log_error)) => {
            eprintln!("guard: error: closing the forensic log: {log_error}");
            Err(error)
        }
    }
}

/// Create, supervise, delete and report one container; every step that matters goes into
/// the forensic log when there is one.
#[allow(clippy::too_many_arguments)]
async fn run_logged(
    args: &RunArgs,
    id: &str,
    guard: &Guard,
    log: Option<&EventLog>,
    request: LimitRequest,
    limits: Limits,
    source: Source,
    started: Instant,
    stop_signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeOptions {
        spec: SpecOptions {
            cgroup_root: args
                .cgroup_root
                .clone()
                .unwrap_or_else(|| DEFAULT_CGROUP_ROOT.to_string()),
            oom_score_adj: args.oom_score_adj,
            omit_cgroups_path: args.omit_cgroups_path,
        },
        no_pivot: args.no_pivot,
        ..RuntimeOptions::default()
    })?;
    let Created {
        mut container,
        applied,
    } = runtime
        .create(id, &source, &limits)
        .with_context(|| format!("creating container {id}"))?;
    if !args.quiet {
        eprintln!("{}", serde_json::to_string(&applied)?);
    }
    let result = async {
        // Logged before the start: the record of what the kernel holds precedes every event.
        if let Some(log) = log {
            log.record("limits_applied", Some(id), &applied)
                .await
                .context("logging limits_applied")?;
        }
        supervise(guard, &mut container, &limits, args, stop_signals).await
    }
    .await;
    // Whatever happened, remove the container (snapshotting its event files first).
    let removed = container.delete();
    let supervised = result?;
    let status = supervised.status;
    let removed = removed.with_context(|| format!("deleting container {id}"))?;
    let report = assemble_report(
        request,
        limits,
        applied,
        supervised,
        removed,
        container.timings(),
        started,
    );
    // Logged before anything is printed or written: what the log says is what was reported.
    let logged = match log {
        Some(log) => log
            .record("report", Some(id), &report)
            .await
            .context("logging the report")
            .map(|_| ()),
        None => Ok(()),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_human(&report);
    }
    // The report is out either way; a logging failure still fails the command.
    logged?;
    // The shell convention: the container's exit code, or 128 + the signal that ended it.
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(0), _) => ExitCode::SUCCESS,
        (Some(code), _) => ExitCode::from(code.clamp(1, 255) as u8),
        (None, Some(signal)) => ExitCode::from((128 + signal).clamp(1, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    })
}

/// Watch, start, wait: returns the exit status, the guard's report (taken before the cgroup
/// is deleted) and the agent's score right after the start.
async fn supervise(
    guard: &Guard,
    container: &mut Container,
    limits: &Limits,
    args: &RunArgs,
    stop_signals: &mut StopSignals,
) -> anyhow::Result<Supervised> {
    let id = container.id().to_string();
    let requested = RequestedLimits {
        memory_max: limits.memory_max,
        pids_max: limits.pids_max,
    };
    guard
        .watch_limited(&id, container.cgroup(), requested)
        .with_context(|| format!("watching {}", container.cgroup().display()))?;
    let printer = (!args.quiet).then(|| {
        let mut events = guard.subscribe(4096);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Ok(line) = serde_json::to_string(&event) {
                    eprintln!("{line}");
                }
            }
        })
    });
    container.start()?;
    let agent_score = oom_score::own_oom_score_adj()?;
    let mut execs = Vec::new();
    for command in &args.exec {
        let mut env = vec![guard::spec::DEFAULT_PATH.to_string()];
        env.extend(args.env.iter().cloned());
        let pid = container
            .exec(&["sh".to_string(), "-c".to_string(), command.clone()], &env)
            .with_context(|| format!("exec {command:?} into {id}"))?;
        let status = tokio::task::spawn_blocking(move || guard::runtime::wait_pid(pid)).await??;
        execs.push(Exec {
            command: command.clone(),
            pid,
            exit_code: status.code(),
        });
    }
    let agent_score_after_execs = if execs.is_empty() {
        None
    } else {
        Some(oom_score::own_oom_score_adj()?)
    };
    // Written last, so whoever waits for it can rely on the start and the execs being done.
    if let Some(path) = &args.pid_file {
        std::fs::write(path, container.init_pid().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let pid = container.init_pid();
    let mut waiter = tokio::task::spawn_blocking(move || guard::runtime::wait_pid(pid));
    let status = tokio::select! {
        status = &mut waiter => status??,
        _ = stop_signals.received() => stop(container, waiter).await?,
    };
    let guard_report = guard.unwatch(&id).await?;
    if let Some(printer) = printer {
        printer.abort();
    }
    Ok(Supervised {
        status,
        guard_report,
        agent_score,
        execs,
        agent_score_after_execs,
    })
}

/// SIGTERM or SIGINT to `guard run` stops the container (SIGKILL to all its processes) and
/// still reports and removes it.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// Resolves once either signal has arrived (also one that arrived before this call).
    async fn received(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Kills every process of the container and waits for its init.
async fn stop(
    container: &mut Container,
    waiter: tokio::task::JoinHandle<Result<ExitStatus, guard::runtime::RuntimeError>>,
) -> anyhow::Result<ExitStatus> {
    eprintln!("guard: stopping container {}", container.id());
    container.kill(libc::SIGKILL, true)?;
    Ok(waiter.await??)
}

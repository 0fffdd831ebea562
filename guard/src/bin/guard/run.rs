//! `guard run`: one guarded container, run to completion in the guest.
//!
//! Order matters: the container is created (its init waits), registered with the guard, and
//! only then started, so the guard sees its first fork. Its event files are snapshotted
//! before the cgroup is deleted (deletion erases them).
use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context;
use guard::{
    ContainerId, Guard, GuardOptions, Report as GuardReport, Tier,
    agent::{self, Ending, Finished},
    cgroup::EventFiles,
    config::Config,
    limits::{
        BudgetRequest, LimitRequest, Limits, MemInfo, MemorySetting, PidsSetting, SwapSetting,
    },
    runtime::{
        CreationRecord, Runtime, RuntimeOptions, Source, Timings, UnprivilegedBpf, oom_score,
    },
    sinks::event_log::EventLog,
    spec::{DEFAULT_CGROUP_ROOT, DEFAULT_OOM_SCORE_ADJ, SpecOptions},
};
use serde::Serialize;

use crate::evidence::Evidence;

mod human;
use human::print_human;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The agent's settings (TOML: memory, pids, swap, cgroup_root, log_dir, fsync,
    /// max_tier; see docs/ERRORS.md). Options given here override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Container id (no '/', whitespace or control characters, not `.` or `..`, at most
    /// 128 bytes; default `run-<guard's pid>`).
    #[arg(long, value_parser = crate::args::container_id())]
    id: Option<ContainerId>,
    /// memory.max: bytes (64M, 1.5G, 67108864), a percentage of MemAvailable (50%), or
    /// `max`. Default: 90% of MemAvailable.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::args::memory)]
    memory: Option<MemorySetting>,
    /// pids.max: a count or `max`. Default: 512.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::args::pids)]
    pids: Option<PidsSetting>,
    /// memory.swap.max: bytes or `max`. Default: 0 (no swap for the container).
    #[arg(long, allow_hyphen_values = true, value_parser = crate::args::swap)]
    swap: Option<SwapSetting>,
    /// The container processes' oom_score_adj (-999..=1000).
    #[arg(
        long,
        default_value_t = DEFAULT_OOM_SCORE_ADJ,
        allow_hyphen_values = true,
        value_parser = crate::args::container_oom_score_adj
    )]
    oom_score_adj: i32,
    /// Parent cgroup of the containers, relative to the cgroup2 mount. Default: /guard.
    #[arg(long, value_parser = crate::args::cgroup_root)]
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
    /// Never run the guard above this tier (0 cgroup files, 1 kernel sources, 2 tracepoints,
    /// 3 + kprobes).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
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
    /// Leave bpf(2) open to unprivileged processes where the kernel allows it. By default guard
    /// closes it (kernel.unprivileged_bpf_disabled = 2, as Debian's kernels ship), so that a
    /// container cannot load BPF programs or create maps of its own.
    #[arg(long)]
    allow_unprivileged_bpf: bool,
    /// Leave the parent cgroup without the guest budget. By default guard gives it
    /// memory.max = MemAvailable minus the kernel's and the agent's reserves, memory.swap.max 0
    /// and a pids.max the memory can carry (raising kernel.threads-max to fit), so that no
    /// number of containers together can reach the global OOM killer; a default container
    /// limit above the budget is lowered to it, an explicit one is an error.
    #[arg(long)]
    no_budget: bool,
    /// After the start, run this shell command inside the container (`exec` into it, as
    /// `sh -c`) and wait for it; repeatable, in order. Exit codes go into the report.
    #[arg(long = "exec", value_name = "SHELL_CMD")]
    exec: Vec<String>,
    /// Tests only: leave cgroupsPath out of the spec (the runtime picks its own cgroup).
    #[arg(long, hide = true)]
    omit_cgroups_path: bool,
    /// Tests only: leave guard's seccomp rule (no AF_VSOCK sockets, no io_uring) out of the
    /// container's spec, to show what a tenant could do without it.
    #[arg(long, hide = true)]
    omit_seccomp_rule: bool,
    #[command(flatten)]
    metrics: crate::evidence::MetricsFlags,
    #[command(flatten)]
    log: crate::evidence::LogFlags,
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

pub async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    use crate::args::usage;
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
    run_guarded(args, request, limits, source).await
}

/// Everything `guard run` reports about one container.
#[derive(Serialize)]
struct Report {
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    limits_requested: LimitRequest,
    limits_resolved: Limits,
    /// What the kernel held right after creation (the runtime's read-back).
    limits_applied: CreationRecord,
    /// The guard's reconciled report, taken after the container exited, before deletion.
    guard: GuardReport,
    /// memory.events, memory.events.local, pids.events read just before the cgroup went.
    final_kernel_events: EventFiles,
    /// The agent's (this process's) oom_score_adj right after the container started.
    agent_oom_score_adj_after_start: i32,
    /// Commands exec'd into the container (`--exec`).
    execs: Vec<Exec>,
    /// The agent's oom_score_adj after the last exec (None without `--exec`).
    agent_oom_score_adj_after_execs: Option<i32>,
    /// kernel.unprivileged_bpf_disabled before and after guard closed it (None with
    /// `--allow-unprivileged-bpf`).
    unprivileged_bpf_disabled: Option<UnprivilegedBpf>,
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
        Some(tier) => Tier::try_from(i64::from(tier))?,
        None => Tier::TracepointsAndKprobes,
    };
    let metrics = args.metrics.bind().await?;
    let guard = std::sync::Arc::new(
        Guard::start({
            let mut options = GuardOptions::default();
            options.max_tier = max_tier;
            options
        })
        .await
        .context("starting the guard")?,
    );
    let evidence = Evidence::start(
        &guard,
        args.log.plan()?,
        serde_json::to_value(limits)?,
        metrics,
    )?;
    let result = run_logged(
        &args,
        &id,
        &guard,
        evidence.log(),
        request,
        source,
        started,
        &mut stop_signals,
    )
    .await;
    // Close the log whatever happened, so it ends with its `stop` record; a log error is
    // reported (after the container's own error, if there was one), never swallowed. The
    // report is already in the log (`run_logged` recorded it).
    let closed = evidence.close(&[]).await;
    match (result, closed) {
        (Ok(code), Ok(closed)) => Ok(closed.announce().exit_code(code)),
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
            omit_seccomp_rule: args.omit_seccomp_rule,
            ..SpecOptions::default()
        },
        allow_unprivileged_bpf: args.allow_unprivileged_bpf,
        no_pivot: args.no_pivot,
        budget: match (args.no_budget, &args.log.dir) {
            (true, _) => None,
            // A log in RAM takes its budget of what the containers may use.
            (false, Some(dir)) => Some(BudgetRequest {
                log_reserve: Some(guard::forensic::ram_reserve(args.log.budget.budget(), dir)?),
                ..BudgetRequest::default()
            }),
            (false, None) => Some(BudgetRequest::default()),
        },
        exec_helper: Some(crate::exec_helper()?),
        ..RuntimeOptions::default()
    })?;
    if let (Some(log), Some(record)) = (log, runtime.budget()) {
        log.record("budget_applied", None, record)
            .await
            .context("logging the guest budget")?;
    }
    // The limits again, now within the budget the parent holds.
    let limits = runtime
        .resolve(&request)
        .map_err(crate::args::usage)?
        .limits;
    if let (false, Some(record)) = (args.quiet, runtime.budget()) {
        eprintln!("{}", serde_json::to_string(record)?);
    }
    // Subscribed before the container exists: its first event is printed too.
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
    let running = agent::supervise(guard, &runtime, log, id, &source, &limits)
        .await
        .with_context(|| format!("creating container {id}"))?;
    if !args.quiet {
        eprintln!("{}", serde_json::to_string(running.created())?);
    }
    let agent_score = oom_score::own_oom_score_adj();
    let execs = run_execs(&running, args).await;
    let agent_score_after_execs = match &execs {
        Ok(execs) if !execs.is_empty() => Some(oom_score::own_oom_score_adj()),
        _ => None,
    };
    // Written last, so whoever waits for it can rely on the start and the execs being done.
    let pid_file = match (&execs, &args.pid_file) {
        (Ok(_), Some(path)) => std::fs::write(path, running.container().init_pid().to_string())
            .with_context(|| format!("writing {}", path.display())),
        _ => Ok(()),
    };
    let ending = match (&execs, &pid_file) {
        (Ok(_), Ok(())) => Ending::InitExitsOrStop(Box::pin(async {
            stop_signals.received().await;
            eprintln!("guard: stopping container {id}");
        })),
        // Something failed: stop the container, still report and remove it.
        _ => Ending::KillNow,
    };
    // Whatever happened, the container is stopped, unwatched and removed.
    let finished = running.finish(ending).await;
    if let Some(printer) = printer {
        printer.abort();
    }
    let execs = execs?;
    pid_file?;
    let finished = finished?;
    let status = finished.status;
    let mut report = assemble_report(
        request,
        limits,
        finished,
        agent_score?,
        execs,
        agent_score_after_execs.transpose()?,
        started,
    );
    report.unprivileged_bpf_disabled = runtime.unprivileged_bpf();
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
        outln!("{json}");
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

/// The `--exec` commands, in order, each waited for.
async fn run_execs(running: &agent::Supervised<'_>, args: &RunArgs) -> anyhow::Result<Vec<Exec>> {
    let id = running.container().id();
    let mut execs = Vec::new();
    for command in &args.exec {
        let mut env = vec![guard::spec::DEFAULT_PATH.to_string()];
        env.extend(args.env.iter().cloned());
        let shell = ["sh".to_string(), "-c".to_string(), command.clone()];
        let (pid, status) = running
            .exec_and_wait(&shell, &env)
            .await
            .with_context(|| format!("exec {command:?} into {id}"))?;
        execs.push(Exec {
            command: command.clone(),
            pid,
            exit_code: status.code(),
        });
    }
    Ok(execs)
}

/// The one place the report is put together.
fn assemble_report(
    request: LimitRequest,
    limits: Limits,
    finished: Finished,
    agent_score: i32,
    execs: Vec<Exec>,
    agent_score_after_execs: Option<i32>,
    started: Instant,
) -> Report {
    use std::os::unix::process::ExitStatusExt;
    Report {
        exit_code: finished.status.code(),
        exit_signal: finished.status.signal(),
        limits_requested: request,
        limits_resolved: limits,
        timings: finished.container.timings(),
        limits_applied: finished.created,
        guard: finished.report,
        final_kernel_events: finished.removed.final_events,
        agent_oom_score_adj_after_start: agent_score,
        execs,
        agent_oom_score_adj_after_execs: agent_score_after_execs,
        unprivileged_bpf_disabled: None,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
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

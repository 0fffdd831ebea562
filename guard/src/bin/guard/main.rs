//! The `guard` command line: one file per command, one tokio runtime for all of them.
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// `print!` and `println!` for standard output that do not panic: a reader that went away
/// (`guard probe | head`) ends the output quietly; another write error is said on stderr.
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), false) };
}
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), true) };
}

mod args;
mod collect;
mod evidence;
mod exec;
mod log;
mod metrics;
mod probe;
mod run;
mod selftest;
mod watch;

/// guard: prove that a micro-VM guest's per-container cgroup limits held.
///
/// guard loads eBPF programs on fork/exit/OOM/reclaim tracepoints, attributes every event to
/// the container (cgroup) it happened in, keeps exact counters, and reconciles them with the
/// kernel's own memory.events and pids.events.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Log filter for guard's own diagnostics (RUST_LOG syntax), e.g. `debug` or `guard=trace`.
    #[arg(long, global = true, env = "GUARD_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this kernel offers (BPF, tracepoints, kprobes, cgroup v2 controllers, PSI)
    /// and the tier guard can run at: 3 = tracepoints + kprobes, 2 = tracepoints only,
    /// 1 = the kernel's own live sources (perf, kernel log), 0 = cgroup event files only.
    Probe {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a fresh cgroup (optionally with pids.max / memory.max), watched; print
    /// its reconciled report when it exits.
    ///
    /// Example: `guard exec --cgroup /sys/fs/cgroup/demo --pids 64 -- sh -c 'for i in 1 2 3; do true; done'`
    Exec(exec::ExecArgs),
    /// Watch existing cgroups (any cgroup v2 host: beside Docker, systemd or Kubernetes):
    /// stream their events and print their reports on Ctrl-C (or after --duration).
    ///
    /// Example: `guard watch --cgroup /sys/fs/cgroup/system.slice/docker-abc.scope --events -`
    Watch(watch::WatchArgs),
    /// Run one guarded container to completion (libcontainer): limits at /guard/<id>, events
    /// streamed to stderr, a report at the end.
    ///
    /// Example: `guard run --memory 64M --pids 128 --rootfs /tmp/rootfs -- sh -c 'echo hi'`
    Run(run::RunArgs),
    /// Prove the limits hold on this machine: one guarded container (pids.max 512, memory.max
    /// 60% of MemAvailable), three bomb waves inside it (a pids bomb, a 512 MiB allocation, 200 × 2 MiB children),
    /// per-wave evidence, a forensic log. Meant for a disposable guest: it is hostile on purpose.
    Selftest(selftest::SelftestArgs),
    /// Read, follow, verify and repair the hash-chained forensic log (see docs/LOG-FORMAT.md).
    Log(log::LogArgs),
    /// Print a forensic log's counters as OpenMetrics text (Prometheus' format): the last
    /// report of each container in it. `--metrics ADDR` on exec, watch, run, selftest and
    /// collect serves the same text live.
    ///
    /// Example: `guard metrics --log /var/lib/guard/log`
    Metrics(metrics::MetricsArgs),
    /// On the host: receive the forensic logs guests stream (`--stream`), one copy per guest,
    /// each guest named by the socket (or CID) it comes on and proving it holds its key, each
    /// chain verified as records arrive, each stream ending with a verdict (complete, guest
    /// died after seq N, gap, forked at seq K, over quota). See docs/STREAM.md.
    ///
    /// Example: `guard collect --dir /var/lib/guard/guests --vm-dir /run/vms --port 7000`
    Collect(collect::CollectArgs),
    /// Internal: clone one exec into its container from a single-threaded process (guard's
    /// runtime starts it with a request on descriptor 3).
    #[command(hide = true)]
    ExecHelper,
}

/// The subcommand the runtime starts for each exec (see `guard::runtime::ExecHelper`).
const EXEC_HELPER_COMMAND: &str = "exec-helper";

/// The exec helper: this binary, run as `guard exec-helper`.
fn exec_helper() -> anyhow::Result<guard::runtime::ExecHelper> {
    Ok(guard::runtime::ExecHelper::this_binary(&[
        EXEC_HELPER_COMMAND,
    ])?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Probe { json } => probe::run(json),
        // Reading a log needs no runtime.
        Command::Log(args) => log::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Collect(args) => collect::run(args),
        // No runtime, no thread: the clone must not inherit a lock another thread holds.
        Command::ExecHelper => return guard::runtime::serve_exec_helper(),
        command => tokio_runtime().and_then(|runtime| runtime.block_on(dispatch(command))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("guard: error: {}", render(&error));
            if error.is::<args::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each once: library errors already print their source (so that
/// they read well alone), which `{:#}` would repeat.
fn render(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The commands that watch containers, on the one runtime.
async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Exec(args) => exec::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Selftest(args) => selftest::run(args).await,
        Command::Probe { .. }
        | Command::Log(_)
        | Command::Metrics(_)
        | Command::Collect(_)
        | Command::ExecHelper => {
            unreachable!("run without a runtime")
        }
    }
}

/// One thread for everything: libcontainer clones the calling process, and the fewer threads
/// exist at that moment the fewer locks a child could inherit held; the reader and the sinks
/// are cheap enough to share it (blocking waits go to tokio's blocking pool).
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    match written {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("guard: writing to standard output: {error}");
        }
        _ => {}
    }
}

//! `guard exec`: run a command in a fresh cgroup, with optional limits, under the guard's
//! eye; print the reconciled report at the end.
use std::{
    ffi::CString,
    io::Write as _,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context, bail};
use guard::{
    ContainerId, Guard, GuardOptions, RequestedLimits, StreamOptions, Tier, cgroup::Hierarchy,
};

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Cgroup directory to create (must not exist) inside the cgroup v2 hierarchy.
    #[arg(long)]
    cgroup: PathBuf,
    /// Container id to report under (default: the cgroup's directory name).
    #[arg(long, value_parser = crate::cli_args::container_id())]
    id: Option<ContainerId>,
    /// Write pids.max of the new cgroup (needs the pids controller).
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        value_parser = crate::cli_args::pids_count
    )]
    pids_max: Option<u64>,
    /// Write memory.max of the new cgroup, in bytes (67108864, 64M; needs the memory
    /// controller); also sets memory.swap.max to 0 so swap cannot dodge it.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "BYTES",
        value_parser = crate::cli_args::memory_bytes
    )]
    memory_max: Option<u64>,
    /// oom_score_adj for the command (-1000..=1000). A guest agent runs at -1000 and children
    /// inherit it: at -1000 the memcg OOM killer finds no victim and the cgroup livelocks.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1000..=1000)
    )]
    oom_score_adj: i32,
    /// Run at most at this tier (0 = cgroup event files only, 1 = tracepoints, 2 = + kprobes).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2), default_value_t = 2)]
    max_tier: u8,
    /// Individual events per container per CPU per second (0 = unbounded; counters stay exact).
    #[arg(long, default_value_t = StreamOptions::default().max_events_per_sec)]
    max_events_per_sec: u32,
    /// Write each event as a JSON line to this file as it arrives.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    log: crate::log_args::LogArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(exec(args))
}

fn tier(value: u8) -> Tier {
    match value {
        0 => Tier::CgroupFilesOnly,
        1 => Tier::Tracepoints,
        _ => Tier::TracepointsAndKprobes,
    }
}

async fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
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
    let options = GuardOptions {
        max_tier: tier(args.max_tier),
        stream: StreamOptions {
            max_events_per_sec: args.max_events_per_sec,
            ..StreamOptions::default()
        },
        ..GuardOptions::default()
    };
    let guard = Guard::start(options).await?;
    std::fs::create_dir(&args.cgroup)
        .with_context(|| format!("creating cgroup {}", args.cgroup.display()))?;
    let result = run_in_cgroup(&guard, &id, &args).await;
    // Leave no cgroup behind, whatever happened (it is empty once the command has exited).
    if let Err(error) = remove_cgroup(&args.cgroup) {
        eprintln!(
            "guard: warning: removing {}: {error}",
            args.cgroup.display()
        );
    }
    result
}

/// rmdir, retried briefly: a cgroup whose last task is still being torn down is busy.
fn remove_cgroup(cgroup: &std::path::Path) -> std::io::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(cgroup) {
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn write_limit(cgroup: &std::path::Path, file: &str, value: &str) -> anyhow::Result<()> {
    let path = cgroup.join(file);
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

async fn run_in_cgroup(guard: &Guard, id: &str, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    if let Some(pids) = args.pids_max {
        write_limit(&args.cgroup, "pids.max", &pids.to_string())?;
    }
    if let Some(bytes) = args.memory_max {
        write_limit(&args.cgroup, "memory.max", &bytes.to_string())?;
        if args.cgroup.join("memory.swap.max").exists() {
            write_limit(&args.cgroup, "memory.swap.max", "0")?;
        }
    }
    let requested = RequestedLimits {
        memory_max: args.memory_max,
        pids_max: args.pids_max,
    };
    guard.watch_limited(id, &args.cgroup, requested)?;
    let log = args.log.start(guard, serde_json::to_value(requested)?)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = match &args.events {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating events file {}", path.display()))?;
            Some(tokio::spawn(write_events(
                guard.subscribe(65_536),
                file,
                stopped,
            )))
        }
        None => None,
    };

    let procs = CString::new(
        args.cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    let score = CString::new(args.oom_score_adj.to_string())?;
    let started = Instant::now();
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // Join the cgroup and set the OOM score between fork and exec, so the command's first
    // instruction already runs inside, with its own score.
    // SAFETY: the closure only makes async-signal-safe syscalls on pre-built C strings.
    unsafe {
        command.pre_exec(move || {
            write_file(c"/proc/self/oom_score_adj", score.as_bytes())?;
            write_file(&procs, b"0")
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running {:?}", args.command))?;
    let pid = child.id();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .context("waiting for the command")?;
    let elapsed = started.elapsed();
    let report = guard.unwatch(id).await?;
    let global = guard.global_counters().await?;
    crate::log_args::finish(log, std::slice::from_ref(&report)).await?;
    // Everything is drained now: let the writer finish what is queued.
    let _ = stop.send(());
    if let Some(writer) = writer {
        writer.await.context("the events writer failed")??;
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
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        println!("command (pid {pid}) exited: {status} after {elapsed:.2?}");
        print!("{}", report.to_text());
        if let Some(bpf) = global.bpf.filter(|bpf| bpf.oom_kills > 0) {
            println!(
                "  ! GLOBAL OOM: {} task(s) outside every container were OOM-killed",
                bpf.oom_kills
            );
        }
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

/// Streams events to `file` as JSON lines until `stop` fires, then writes what is queued.
async fn write_events(
    mut events: tokio::sync::mpsc::Receiver<guard::GuardEvent>,
    file: std::fs::File,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(file);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => writeln!(file, "{}", serde_json::to_string(&event)?)?,
                None => break,
            },
            _ = &mut stop => {
                while let Ok(event) = events.try_recv() {
                    writeln!(file, "{}", serde_json::to_string(&event)?)?;
                }
                break;
            }
        }
    }
    file.flush().context("writing the events file")
}

/// Writes `bytes` to the file at `path`. Runs between fork and exec: no allocation.
fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

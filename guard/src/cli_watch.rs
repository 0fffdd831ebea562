//! `guard watch`: run a command in a fresh cgroup under the guard's eye.
use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Cgroup directory to create (must not exist) inside the cgroup v2 hierarchy.
    #[arg(long)]
    cgroup: PathBuf,
    /// Container id to report under (default: the cgroup's directory name).
    #[arg(long)]
    id: Option<String>,
    /// Print each event as a JSON line as it arrives.
    #[arg(long)]
    events: bool,
    /// Print the final counters as JSON.
    #[arg(long)]
    json: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(watch(args))
}

async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => args
            .cgroup
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has no usable directory name", args.cgroup.display()))?
            .to_string(),
    };
    if args.cgroup.exists() {
        bail!(
            "{} already exists: give a fresh cgroup path",
            args.cgroup.display()
        );
    }
    let guard = guard::Guard::start(guard::GuardOptions::default()).await?;
    std::fs::create_dir(&args.cgroup)
        .with_context(|| format!("creating cgroup {}", args.cgroup.display()))?;
    let result = run_in_cgroup(&guard, &id, &args).await;
    // Leave no cgroup behind, whatever happened (it is empty once the command has exited).
    if let Err(error) = std::fs::remove_dir(&args.cgroup) {
        eprintln!(
            "guard: warning: removing {}: {error}",
            args.cgroup.display()
        );
    }
    result
}

async fn run_in_cgroup(
    guard: &guard::Guard,
    id: &str,
    args: &WatchArgs,
) -> anyhow::Result<ExitCode> {
    guard.watch(id, &args.cgroup)?;
    let mut events = guard.subscribe(4096);
    let printer = args.events.then(|| {
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Ok(line) = serde_json::to_string(&event) {
                    println!("{line}");
                }
            }
        })
    });
    let procs = args.cgroup.join("cgroup.procs");
    let started = Instant::now();
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // Join the cgroup between fork and exec so the command's first instruction is inside.
    // SAFETY: the closure only calls async-signal-safe functions (open/write/close via libc).
    unsafe {
        let procs_c = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())?;
        command.pre_exec(move || join_cgroup(&procs_c));
    }
    let status = tokio::task::spawn_blocking(move || command.status())
        .await?
        .with_context(|| format!("running {:?}", args.command))?;
    let elapsed = started.elapsed();
    let report = guard.unwatch(id).await?;
    let counters = &report.counters;
    let loss = &report.loss;
    if let Some(printer) = printer {
        printer.abort();
    }
    if args.json {
        let report = serde_json::json!({
            "exit_status": status.code(),
            "elapsed_ms": elapsed.as_millis() as u64,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("  command exited: {status} after {elapsed:.2?}");
        print!("{}", report.to_text());
        println!(
            "  delivered   {:?}\n  loss        {:?} / reader {:?}",
            counters.delivered, loss.kernel_reserve_failures, loss.reader
        );
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

/// Writes "0" (this process) to cgroup.procs. Runs between fork and exec: no allocation.
fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

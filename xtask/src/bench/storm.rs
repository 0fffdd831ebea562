//! The fork storm and its observers: none, guard, guard with its log, bpftrace.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::bpf_stats::{self, ProgramStats};
use super::*;
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Observer {
    None,
    Guard,
    /// guard writing every event to its hash-chained log: the kernel-fed pipeline.
    GuardLogged,
    Bpftrace,
}

impl Observer {
    pub(super) fn name(self) -> &'static str {
        match self {
            Observer::None => "none",
            Observer::Guard => "guard",
            Observer::GuardLogged => "guard+log",
            Observer::Bpftrace => "bpftrace",
        }
    }
}

/// A running observer process and the lines it prints (stdout and stderr, interleaved).
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) lines: mpsc::Receiver<String>,
}

pub(super) fn forward_lines(
    stream: impl std::io::Read + Send + 'static,
    sender: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// Spawns `command` and waits until it prints a line containing `ready` (it attached).
pub(super) fn spawn_ready(
    command: &mut Command,
    ready: &str,
    timeout: Duration,
) -> anyhow::Result<Running> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", cmd::describe(command)))?;
    let (sender, lines) = mpsc::channel();
    forward_lines(
        child.stdout.take().context("no stdout pipe")?,
        sender.clone(),
    );
    forward_lines(child.stderr.take().context("no stderr pipe")?, sender);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return Ok(Running { child, lines }),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "{} did not say {ready:?} within {timeout:?}",
                    cmd::describe(command)
                );
            }
        }
    }
}

pub(super) fn interrupt(running: &mut Running) -> anyhow::Result<String> {
    // SAFETY: kill(2) on a child we own.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGINT) };
    running.child.wait()?;
    // The forwarding threads end at EOF, closing the channel.
    Ok(running.lines.iter().collect::<Vec<_>>().join("\n"))
}

pub(super) struct Storm {
    pub(super) wall: Duration,
    /// Forks the observer counted (None for no observer).
    pub(super) counted: Option<u64>,
    /// Events guard lost on the way (ring buffer and queues), from its report.
    pub(super) lost: Option<u64>,
    /// Peak RSS of the observer during the storm, KiB.
    pub(super) peak_kib: Option<u64>,
    /// The kernel's run time of each of the observer's BPF programs during the storm.
    pub(super) bpf: BTreeMap<String, ProgramStats>,
}

pub(super) fn bpftrace_script(cgroup: &Path) -> String {
    let filter = format!("cgroup == cgroupid(\"{}\")", cgroup.display());
    format!(
        "tracepoint:sched:sched_process_fork /{filter}/ {{ @forks[cgroup] = count(); }} \
         tracepoint:sched:sched_process_exit /{filter}/ {{ @exits[cgroup] = count(); }} \
         tracepoint:syscalls:sys_exit_clone /{filter} && args->ret == -11/ {{ @denied[cgroup] = count(); }}"
    )
}

pub(super) fn storm(
    observer: Observer,
    guard: &Path,
    stress: &Path,
    cgroup: &Path,
    forks: u64,
) -> anyhow::Result<Storm> {
    let mut running = match observer {
        Observer::None => None,
        Observer::Guard => Some(spawn_ready(
            Command::new(guard)
                .args(["watch", "--json", "--cgroup"])
                .arg(format!("bench={}", cgroup.display())),
            "guard: watching",
            Duration::from_secs(60),
        )?),
        Observer::GuardLogged => {
            let log = std::env::temp_dir().join(format!("guard-bench-log-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&log);
            Some(spawn_ready(
                Command::new(guard)
                    .args(["watch", "--json", "--log"])
                    .arg(&log)
                    .arg("--cgroup")
                    .arg(format!("bench={}", cgroup.display())),
                "guard: watching",
                Duration::from_secs(60),
            )?)
        }
        Observer::Bpftrace => Some(spawn_ready(
            Command::new("bpftrace")
                .arg("-e")
                .arg(bpftrace_script(cgroup)),
            "Attaching",
            Duration::from_secs(60),
        )?),
    };
    if observer == Observer::Bpftrace {
        // bpftrace prints "Attaching" just before attaching: let it finish (its probes are
        // attached once it prints nothing more for a moment).
        std::thread::sleep(Duration::from_millis(500));
    }
    let observer_pid = running.as_ref().map(|running| running.child.id());
    let bpf_before = observer_pid.map(bpf_stats::programs_of).unwrap_or_default();
    let started = Instant::now();
    let output = Command::new(stress)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["fork", &forks.to_string()])
        .output()
        .context("running guard-stress")?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!(
            "guard-stress failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let Some(running) = running.as_mut() else {
        return Ok(Storm {
            wall,
            counted: None,
            lost: None,
            peak_kib: None,
            bpf: BTreeMap::new(),
        });
    };
    let bpf = bpf_stats::delta(&bpf_stats::programs_of(running.child.id()), &bpf_before);
    let (peak, _) = rss_kib(running.child.id());
    let stdout = interrupt(running)?;
    let counted = match observer {
        Observer::Guard | Observer::GuardLogged => serde_forks(&stdout),
        Observer::Bpftrace => stdout
            .lines()
            .find(|line| line.starts_with("@forks"))
            .and_then(|line| line.rsplit(' ').next()?.trim().parse().ok()),
        Observer::None => None,
    };
    let lost = matches!(observer, Observer::Guard | Observer::GuardLogged)
        .then(|| reported_losses(&stdout));
    Ok(Storm {
        wall,
        counted,
        lost,
        peak_kib: Some(peak),
        bpf,
    })
}

/// Everything the first report of `guard watch --json` says was lost: ring-buffer reserve
/// failures of every kind plus the reader's drops.
pub(super) fn reported_losses(output: &str) -> u64 {
    let Some(start) = output.find('[') else {
        return 0;
    };
    let Ok(reports) = serde_json::from_str::<serde_json::Value>(&output[start..]) else {
        return 0;
    };
    let loss = &reports[0]["loss"];
    let kernel: u64 = loss["kernel_reserve_failures"]
        .as_object()
        .map_or(0, |kinds| kinds.values().filter_map(|v| v.as_u64()).sum());
    kernel
        + loss["reader"]["subscriber_drops"].as_u64().unwrap_or(0)
        + loss["reader"]["undecodable"].as_u64().unwrap_or(0)
}

/// The `"forks": N` of the first report in `guard watch --json` output.
pub(super) fn serde_forks(json: &str) -> Option<u64> {
    let start = json.find("\"forks\":")? + "\"forks\":".len();
    json[start..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

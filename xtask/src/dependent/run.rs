//! The dependent on the host, as root: under strace, it starts the guard at tier 1 or above
//! (the loader runs), watches a fresh cgroup and runs a small fork loop there. Its start must
//! open no vmlinux BTF, and its peak RSS (VmHWM) must stay within `PEAK_OVER_IDLE_KIB` of its
//! idle RSS, read once it watches and again after the loop.
use std::{
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{PEAK_OVER_IDLE_KIB, lines_of, target_dir};

/// The file a start must not open.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// A file every BPF start opens (the task map is sized by it): proof strace saw the start.
const SEEN_AT_START: &str = "/proc/sys/kernel/pid_max";
/// Forks of the loop in the watched cgroup.
const FORKS: u32 = 200;
/// Generous: the host is shared with other builds.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The dependent's memory on the host.
pub struct Footprint {
    pub idle_kib: u64,
    pub start_peak_kib: u64,
    pub peak_after_forks_kib: u64,
    pub forks_counted: u64,
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "idle VmRSS {} KiB, VmHWM after start {} KiB, after {FORKS} forks {} KiB \
             (bound: idle + {PEAK_OVER_IDLE_KIB}); forks counted {}; no open of {VMLINUX_BTF}",
            self.idle_kib, self.start_peak_kib, self.peak_after_forks_kib, self.forks_counted
        )
    }
}

/// Runs `binary` (the dependent's monitor) on the host and checks it; None when not root
/// (loading BPF needs it; CI runs as root).
pub fn run_on_host(binary: &Path) -> anyhow::Result<Option<Footprint>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let scratch = target_dir().join("run");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let (go, done, finish) = (
        scratch.join("go"),
        scratch.join("done"),
        scratch.join("finish"),
    );
    let trace = scratch.join("strace.txt");
    let cgroup = cgroup2_mount()?.join(format!("guard-dependent-{}", std::process::id()));
    let script = format!(
        "until [ -e {go} ]; do sleep 0.05; done; i=0; while [ $i -lt {FORKS} ]; do /bin/true; \
         i=$((i + 1)); done; touch {done}; until [ -e {finish} ]; do sleep 0.05; done",
        go = go.display(),
        done = done.display(),
        finish = finish.display()
    );
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
        .arg(&trace)
        .arg(binary)
        .arg("--cgroup")
        .arg(&cgroup)
        .args(["--min-tier", "1", "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("==> {}", crate::cmd::describe(&command));
    let mut child = command
        .spawn()
        .context("starting strace (apt-get install strace)")?;
    let stderr = lines_of(child.stderr.take().context("no stderr")?);
    let stdout = lines_of(child.stdout.take().context("no stdout")?);
    let result = watch(&stderr, &go, &done, &finish);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let mut shown: Vec<String> = stderr.try_iter().collect();
    let report_line = stdout.iter().last().unwrap_or_default();
    let _ = std::fs::remove_dir(&cgroup);
    let (idle_kib, start_peak_kib, peak_after_forks_kib) = match result {
        Ok(readings) => readings,
        Err(error) => {
            shown.truncate(40);
            return Err(error.context(format!("the dependent's stderr:\n{}", shown.join("\n"))));
        }
    };
    if !status.success() {
        bail!("the dependent exited with {status}:\n{}", shown.join("\n"));
    }
    let report: serde_json::Value = serde_json::from_str(&report_line)
        .with_context(|| format!("the dependent's report: {report_line:?}"))?;
    let forks_counted = report["counters"]["bpf"]["forks"].as_u64().unwrap_or(0);
    if forks_counted < u64::from(FORKS) {
        bail!("the dependent's guard counted {forks_counted} forks of {FORKS}: {report}");
    }
    check_trace(&trace)?;
    for (what, peak) in [
        ("after start", start_peak_kib),
        ("after the forks", peak_after_forks_kib),
    ] {
        if peak > idle_kib + PEAK_OVER_IDLE_KIB {
            bail!(
                "the dependent's peak RSS {what} is {peak} KiB, more than {PEAK_OVER_IDLE_KIB} \
                 KiB above its idle {idle_kib} KiB (a loader that parses the kernel's BTF \
                 does this)"
            );
        }
    }
    Ok(Some(Footprint {
        idle_kib,
        start_peak_kib,
        peak_after_forks_kib,
        forks_counted,
    }))
}

/// Waits for the dependent to watch, reads its idle memory, lets the loop run, reads its
/// peak, lets it finish. Returns (idle VmRSS, VmHWM after start, VmHWM after the loop).
fn watch(
    stderr: &std::sync::mpsc::Receiver<String>,
    go: &Path,
    done: &Path,
    finish: &Path,
) -> anyhow::Result<(u64, u64, u64)> {
    let deadline = Instant::now() + TIMEOUT;
    let pid = loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the dependent never said it watches its cgroup")?;
        if let Some(pid) = line
            .strip_prefix("monitor: watching ")
            .and_then(|rest| rest.rsplit_once("(pid "))
            .and_then(|(_, pid)| pid.strip_suffix(')'))
        {
            break pid.to_string();
        }
    };
    let status = PathBuf::from(format!("/proc/{pid}/status"));
    let idle = status_kib(&status, "VmRSS")?;
    let start_peak = status_kib(&status, "VmHWM")?;
    std::fs::write(go, "")?;
    while !done.exists() {
        if Instant::now() > deadline {
            bail!("the dependent's fork loop did not end in {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = status_kib(&status, "VmHWM")?;
    std::fs::write(finish, "")?;
    Ok((idle, start_peak, peak))
}

/// A `kB` field of a /proc status file.
fn status_kib(status: &Path, field: &str) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(status).with_context(|| format!("reading {}", status.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in {}", status.display()))
}

/// The trace saw the guard's start, and no open of the kernel's BTF.
fn check_trace(trace: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(trace).with_context(|| format!("reading {}", trace.display()))?;
    if !text.contains(SEEN_AT_START) {
        bail!(
            "{}: strace did not see the guard's start (no open of {SEEN_AT_START})",
            trace.display()
        );
    }
    if let Some(line) = text.lines().find(|line| line.contains(VMLINUX_BTF)) {
        bail!("the dependent's start opened the kernel's BTF: {line}");
    }
    Ok(())
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            filesystem
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(point))
        })
        .context("no cgroup2 hierarchy is mounted")
}

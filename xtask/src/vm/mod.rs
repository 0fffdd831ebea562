//! The guest VM harness: build an initramfs from host binaries, boot it under QEMU with a
//! Debian kernel from the setup cache, run one command, and bring its results back.
//!
//! ```no_run
//! use xtask::vm::{VmConfig, run};
//! let outcome = run(&VmConfig::new("6.12", ["cat", "/proc/version"])).unwrap();
//! let done = outcome.expect_completed();
//! assert_eq!(done.exit_code, 0);
//! ```
//!
//! Guest side (see `init.sh`): PID 1 mounts proc, sys, devtmpfs, moves to a tmpfs root (so a
//! container runtime can `pivot_root`), mounts cgroup2 with `+memory +pids` enabled for
//! children and tracefs, sets its `oom_score_adj` (-1000 by default: the scenario stands for
//! the guest agent), runs the command, sends stdout, stderr, the exit code and every file left
//! under `/results` as frames on ttyS1 (see [`frames`]), and powers off. The console is ttyS0.
//!
//! Boot: QEMU `-kernel` takes the uncompressed `vmlinux` setup extracts (PVH entry: no BIOS
//! load, no in-guest decompression; ~3 s to init under TCG instead of 4.5–7 s), else the
//! `vmlinuz`. Command line: `console=ttyS0 panic=-1 oops=panic reboot=t psi=1 quiet
//! no_timer_check rdinit=/init` plus [`VmConfig::extra_cmdline`]. Accelerator: [`Accel`] (TCG unless a KVM probe boots).
//!
//! Host side: a guest that powers off after sending everything is [`VmResult::Completed`];
//! one whose QEMU exits before that (kernel panic: `panic=-1` plus `-no-reboot`) is
//! [`VmResult::Died`]; one still running at the timeout is killed and [`VmResult::TimedOut`].
//! Death and timeouts are results, not errors; errors are for a harness that could not run
//! the guest at all (missing kernel, QEMU not installed, ...).

mod catalog;
pub mod control;
pub mod cpio;
pub mod frames;
pub mod image;
pub mod kernel;
mod qemu;
pub mod vsock;

pub use catalog::{
    GuestKernel, Machine, available_kernels, check_prerequisites, in_ci, kernel_or_skip, resolve,
    resolve_kernel,
};
pub use control::{VmControl, Watcher};
pub use image::GuestFile;
pub use qemu::Accel;
pub use vsock::{GUEST_KEY_PATH, VmEntry, VsockConfig};

use crate::paths;
use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to boot and run.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// "6.1", "6.12" (from the `cargo xtask setup` cache) or a path to a bzImage/vmlinuz.
    pub kernel: String,
    /// Guest memory in MiB (default 128).
    pub memory_mib: u32,
    /// vCPUs (default 1).
    pub cpus: u32,
    /// Wall-clock limit for the whole VM, boot included (default 300 s: TCG on a noisy CI
    /// machine is 10–50× slower than hardware).
    pub timeout: Duration,
    /// Host binaries copied to the guest's /bin under their file names, with the shared
    /// libraries `ldd` lists for them at the same paths.
    pub binaries: Vec<PathBuf>,
    /// Extra files (scenario scripts, configs).
    pub files: Vec<GuestFile>,
    /// The command, run with PATH=/bin:/sbin:/usr/bin:/usr/sbin from `/`. Use
    /// `["sh", "-c", "..."]` for a shell scenario.
    pub command: Vec<String>,
    /// The scenario's `oom_score_adj` (default Some(-1000), as a guest agent protects itself).
    pub oom_score_adj: Option<i32>,
    /// Accelerator (default: `$GUARD_VM_ACCEL` = tcg|kvm|auto, else auto: KVM only where a
    /// short probe boot works).
    pub accel: Accel,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// Print a progress line to stderr every few seconds while the guest runs.
    pub progress: bool,
    /// A label for progress lines and the run folder (default: the kernel name).
    pub label: Option<String>,
    /// Console lines containing this text are printed to stdout as they arrive (live events
    /// of a demo).
    pub echo_console: Option<String>,
    /// A vsock device bridged to host Unix sockets ([`vsock`]); on Debian's kernels the
    /// harness loads its modules first.
    pub vsock: Option<VsockConfig>,
    /// Called every [`control::TICK`] while the guest runs, to act on it ([`control`]).
    pub watcher: Option<Watcher>,
}

impl VmConfig {
    pub fn new<I, S>(kernel: &str, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            kernel: kernel.to_string(),
            memory_mib: 128,
            cpus: 1,
            timeout: Duration::from_secs(300),
            binaries: Vec::new(),
            files: Vec::new(),
            command: command.into_iter().map(Into::into).collect(),
            oom_score_adj: Some(-1000),
            accel: Accel::from_env(),
            extra_cmdline: Vec::new(),
            progress: true,
            label: None,
            echo_console: None,
            vsock: None,
            watcher: None,
        }
    }

    /// A shell scenario: `sh -c script`.
    pub fn shell(kernel: &str, script: &str) -> Self {
        Self::new(kernel, ["sh", "-c", script])
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binaries.push(path.into());
        self
    }

    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(GuestFile {
            path: path.to_string(),
            contents: contents.into(),
            mode,
        });
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn vsock(mut self, vsock: VsockConfig) -> Self {
        self.vsock = Some(vsock);
        self
    }

    /// The guest of a VM under a collector's `--vm-dir`: its vsock bridged to the entry's
    /// directory, its stream key (if it has one) at [`GUEST_KEY_PATH`] (mode 0400) for the
    /// guest commands' `--stream-key`.
    pub fn vm_entry(self, entry: &VmEntry) -> Self {
        let config = self.vsock(entry.vsock());
        match entry.key_file() {
            Some(key) => config.file(GUEST_KEY_PATH, key, 0o400),
            None => config,
        }
    }

    pub fn watcher(mut self, watcher: Watcher) -> Self {
        self.watcher = Some(watcher);
        self
    }
}

/// A guest run that finished: the command's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Files the scenario left under the guest's /results, by path relative to it.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Completed {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn file_str(&self, name: &str) -> Option<String> {
        self.files
            .get(name)
            .map(|d| String::from_utf8_lossy(d).into_owned())
    }
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmResult {
    /// Init sent all results (the command itself may have failed: see `exit_code`).
    Completed(Completed),
    /// QEMU exited before init sent everything: kernel panic, init died, triple fault.
    Died { console_tail: String },
    /// Still running at the timeout; QEMU was killed.
    TimedOut { console_tail: String },
}

/// Everything known about one guest run.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    pub result: VmResult,
    /// The kernel image booted.
    pub kernel: PathBuf,
    /// The accelerator QEMU used: "tcg" or "kvm".
    pub accel: &'static str,
    /// QEMU start until init's first marker (kernel boot + initramfs unpack).
    pub boot_time: Option<Duration>,
    /// The scenario command's wall time as the host saw it (start/end markers).
    pub scenario_time: Option<Duration>,
    /// QEMU start to exit.
    pub wall_time: Duration,
    /// The whole console (ttyS0) output.
    pub console: String,
    /// The run's folder (console.log, results.raw), kept for post-mortems.
    pub run_dir: PathBuf,
}

impl VmOutcome {
    /// The results, or a panic that shows how the guest ended and its console tail: for tests.
    #[track_caller]
    pub fn expect_completed(&self) -> &Completed {
        match &self.result {
            VmResult::Completed(done) => done,
            other => panic!(
                "guest did not complete: {other}\n(run folder {})",
                self.run_dir.display()
            ),
        }
    }

    /// The last lines of the console.
    pub fn console_tail(&self) -> String {
        tail(&self.console, TAIL_LINES)
    }
}

impl fmt::Display for VmResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmResult::Completed(done) => write!(f, "completed, exit code {}", done.exit_code),
            VmResult::Died { console_tail } => {
                write!(f, "VM died; console tail:\n{console_tail}")
            }
            VmResult::TimedOut { console_tail } => {
                write!(f, "VM timed out; console tail:\n{console_tail}")
            }
        }
    }
}

const TAIL_LINES: usize = 40;

/// The last `lines` lines, preceded by the first "Kernel panic" line when that scrolled out
/// (a long stack trace follows it), since it is the line that says why the guest died.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if let Some(panic) = all[..start].iter().find(|l| l.contains("Kernel panic")) {
        out.push_str(panic);
        out.push_str("\n[...]\n");
    }
    out.push_str(&all[start..].join("\n"));
    out
}

/// Boots a guest and runs `config.command` in it.
pub fn run(config: &VmConfig) -> Result<VmOutcome> {
    if config.memory_mib < 32 {
        bail!(
            "memory {} MiB is too small for a guest (at least 32)",
            config.memory_mib
        );
    }
    if config.cpus == 0 {
        bail!("cpus must be at least 1");
    }
    let kernel = resolve(&config.kernel)?;
    let busybox = image::find_busybox()?;
    let spec = image::ImageSpec {
        busybox: fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?,
        applets: image::busybox_applets(&busybox)?,
        files: {
            let mut files = image::host_binaries(&config.binaries)?;
            files.extend(config.files.iter().cloned());
            if config.vsock.is_some() {
                files.extend(image::modules(&kernel.vsock_modules)?);
            }
            files
        },
        command: config.command.clone(),
        oom_score_adj: config.oom_score_adj,
    };
    let archive = image::build(&spec)?;
    let image = archive.to_newc();
    // The image sits in guest RAM twice while the kernel unpacks it, next to a ~40 MiB kernel;
    // too big, and the guest dies with "Initramfs unpacking failed", which says nothing useful.
    let image_mib = image.len() as u64 >> 20;
    if 2 * image_mib + 48 > u64::from(config.memory_mib) {
        bail!(
            "the guest image is {image_mib} MiB, too large for a {} MiB guest (needs about \
             {} MiB): use release or stripped binaries, or more memory",
            config.memory_mib,
            2 * image_mib + 48
        );
    }
    // The label names the run folder, which QEMU options embed: keep it to [A-Za-z0-9.-_].
    let label = sanitize(config.label.as_deref().unwrap_or(&config.kernel));
    let run_dir = new_run_dir(&label)?;
    let initrd = run_dir.join("initramfs.cpio");
    fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;

    let raw = qemu::boot(&qemu::Boot {
        kernel: &kernel,
        initrd: &initrd,
        run_dir: &run_dir,
        config,
        label: &label,
    })?;
    // The image is the bulk of a run folder and can be rebuilt: drop it.
    let _ = fs::remove_file(&initrd);

    let frames = match frames::parse(&raw.results) {
        Ok(frames) => frames,
        // A guest that died mid-send leaves a damaged stream: its death is the result.
        Err(_) if !raw.results.windows(10).any(|w| w == b"GUARD-DONE") => frames::Frames::default(),
        Err(e) => {
            return Err(e).with_context(|| format!("parsing results from {}", run_dir.display()));
        }
    };
    let console_tail = tail(&raw.console, TAIL_LINES);
    let result = if frames.done {
        let text = |name: &str| {
            frames
                .get(name)
                .map(|d| String::from_utf8_lossy(d).into_owned())
        };
        let exit_code = text("exit")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow!("guest sent no exit code (run folder {})", run_dir.display()))?;
        let files = frames
            .frames
            .iter()
            .filter_map(|(name, data)| {
                name.strip_prefix("results/")
                    .map(|rel| (rel.to_string(), data.clone()))
            })
            .collect();
        VmResult::Completed(Completed {
            exit_code,
            stdout: frames.get("stdout").unwrap_or_default().to_vec(),
            stderr: frames.get("stderr").unwrap_or_default().to_vec(),
            files,
        })
    } else if raw.timed_out {
        VmResult::TimedOut { console_tail }
    } else {
        VmResult::Died { console_tail }
    };
    Ok(VmOutcome {
        result,
        kernel: kernel.image,
        accel: raw.accel,
        boot_time: raw.boot_time,
        scenario_time: raw.scenario_time,
        wall_time: raw.wall_time,
        console: raw.console,
        run_dir,
    })
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Run folders kept under `<target>/vm-runs`; older ones are pruned.
const KEEP_RUNS: usize = 40;

fn new_run_dir(label: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let root = paths::target_dir().join("vm-runs");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    prune_runs(&root);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let dir = root.join(format!(
        "{stamp}-{}-{}-{label}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn prune_runs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    if dirs.len() < KEEP_RUNS {
        return;
    }
    // Names start with a millisecond timestamp: lexical order is age order for years to come.
    dirs.sort();
    for old in &dirs[..dirs.len() - KEEP_RUNS] {
        let _ = fs::remove_dir_all(old);
    }
}

//! Running QEMU: command line, console capture, markers, progress, timeout.

use super::control::{self, VmControl};
use super::{GuestKernel, Machine, VmConfig, vsock};
use crate::paths;
use crate::progress::{Progress, Total};
use anyhow::{Context as _, Result, bail};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow (10–50× hardware), works everywhere.
    Tcg,
    /// KVM, unconditionally.
    Kvm,
    /// KVM if a short probe boot succeeds on this machine, else TCG (the default). On some
    /// hosts /dev/kvm exists but guests hang in the BIOS, hence a probe rather than a check
    /// for the device. The probe costs up to 10 s once per host boot (cached in
    /// `<target>/vm-runs/kvm-probe`).
    Auto,
}

impl Accel {
    /// `$GUARD_VM_ACCEL` (tcg, kvm or auto), Auto when unset or unrecognized.
    pub fn from_env() -> Self {
        match std::env::var("GUARD_VM_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("tcg") => Accel::Tcg,
            Ok("auto") | Err(_) => Accel::Auto,
            Ok(other) => {
                eprintln!("[vm] ignoring GUARD_VM_ACCEL={other:?} (use tcg, kvm or auto)");
                Accel::Auto
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            "auto" => Ok(Accel::Auto),
            other => bail!("unknown accelerator {other:?}: use tcg, kvm or auto"),
        }
    }
}

pub(super) struct Boot<'a> {
    pub kernel: &'a GuestKernel,
    pub initrd: &'a Path,
    pub run_dir: &'a Path,
    pub config: &'a VmConfig,
    pub label: &'a str,
}

pub(super) struct RawRun {
    pub accel: &'static str,
    pub console: String,
    pub results: Vec<u8>,
    pub timed_out: bool,
    pub boot_time: Option<Duration>,
    pub scenario_time: Option<Duration>,
    pub wall_time: Duration,
}

/// Kills QEMU if the harness unwinds or returns early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Plain progress lines (not a terminal): one every 10 s.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often the console's last line is looked at for the progress display.
const PROGRESS_TICK: Duration = Duration::from_millis(500);

pub(super) fn qemu_binary() -> String {
    std::env::var("GUARD_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

fn base_command(
    accel: &str,
    kernel: &GuestKernel,
    memory_mib: u32,
    cpus: u32,
    shared_memory: bool,
) -> Command {
    let mut cmd = Command::new(qemu_binary());
    // vhost-user devices map guest memory: it must be a shared memfd backend (vsock.rs).
    let memory = if shared_memory {
        ",memory-backend=mem"
    } else {
        ""
    };
    match kernel.machine {
        // QEMU puts the virtio-mmio devices on the kernel command line itself.
        Machine::Microvm => {
            cmd.args(["-M", &format!("microvm,acpi=off{memory}")]);
        }
        Machine::Pc if shared_memory => {
            cmd.args(["-M", &format!("pc{memory}")]);
        }
        Machine::Pc => {}
    }
    cmd.args(["-accel", accel])
        .args(["-m", &memory_mib.to_string()])
        .args(["-smp", &cpus.to_string()])
        // No default NIC, VGA or monitor: less to emulate, faster boot.
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        // A guest reboot (panic=-1) ends QEMU instead of looping.
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(&kernel.image);
    cmd
}

/// The second serial port (ttyS1) that carries the results frames into `path`. The PC has
/// it; microvm has one ISA serial port only, so it gets a second one at COM2's address.
fn results_port(cmd: &mut Command, machine: Machine, path: &Path) {
    match machine {
        Machine::Pc => {
            cmd.arg("-serial").arg(format!("file:{}", path.display()));
        }
        Machine::Microvm => {
            cmd.arg("-chardev")
                .arg(format!("file,id=results,path={}", path.display()))
                .args(["-device", "isa-serial,chardev=results,iobase=0x2f8,irq=3"]);
        }
    }
}

/// QEMU's monitor socket: in the run folder, unless that path is too long for a Unix socket
/// (107 bytes: a long label in a deep target folder), then a short one in the temporary folder,
/// removed with this.
struct MonitorSocket {
    path: PathBuf,
    temporary: bool,
}

impl MonitorSocket {
    fn new(run_dir: &Path) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = run_dir.join("monitor.sock");
        if path.as_os_str().len() <= 100 {
            return Self {
                path,
                temporary: false,
            };
        }
        Self {
            path: std::env::temp_dir().join(format!(
                "guard-qemu-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )),
            temporary: true,
        }
    }
}

impl Drop for MonitorSocket {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(super) fn boot(boot: &Boot<'_>) -> Result<RawRun> {
    let config = boot.config;
    let accel = match config.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
        Accel::Auto => {
            if kvm_works(boot.kernel) {
                "kvm"
            } else {
                "tcg"
            }
        }
    };
    let results_path = boot.run_dir.join("results.raw");
    let console_path = boot.run_dir.join("console.log");
    let mut cmdline = vec![
        "console=ttyS0",
        // A panic reboots at once, and -no-reboot turns that into QEMU exiting: VM death is
        // seen immediately instead of at the timeout. An oops is a death too.
        "panic=-1",
        "oops=panic",
        // The guest ends by rebooting (-no-reboot makes QEMU exit): microvm has no ACPI
        // power-off, and a triple-fault reboot works without ACPI.
        "reboot=t",
        "psi=1",
        "quiet",
        // The boot's check that the timer interrupt comes through the IO-APIC counts ticks
        // against a busy loop: under TCG on a loaded host it misses and panics ("IO-APIC +
        // timer doesn't work"; 8 guest tests of one suite died so with 4 builds beside it).
        // The check is for broken real boards; QEMU's timer is known to work.
        "no_timer_check",
        "rdinit=/init",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if config.watcher.is_some() {
        // control::VmControl::panic_guest injects an NMI: make it a kernel panic. The PC's
        // guest sees an unknown NMI; microvm's, without port 0x61, reads reason 0xff and takes
        // it for a PCI system error, which only panic_on_unrecovered_nmi makes fatal.
        cmdline.push("unknown_nmi_panic".into());
        cmdline.push("sysctl.kernel.panic_on_unrecovered_nmi=1".into());
    }
    cmdline.extend(config.extra_cmdline.iter().cloned());

    let bridge = match &config.vsock {
        Some(vsock) => Some(vsock::Bridge::start(vsock, boot.run_dir)?),
        None => None,
    };
    let mut cmd = base_command(
        accel,
        boot.kernel,
        config.memory_mib,
        config.cpus,
        bridge.is_some(),
    );
    if let Some(bridge) = &bridge {
        cmd.args(vsock::qemu_args(
            boot.kernel.machine,
            config.memory_mib,
            &bridge.vhost_socket,
        ));
    }
    let monitor_socket = MonitorSocket::new(boot.run_dir);
    let monitor = monitor_socket.path.as_path();
    if config.watcher.is_some() {
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()));
    }
    cmd.arg("-initrd")
        .arg(boot.initrd)
        .args(["-append", &cmdline.join(" ")])
        // ttyS0: the console, on QEMU's stdout; ttyS1: the results frames, into a file.
        .args(["-serial", "stdio"]);
    results_port(&mut cmd, boot.kernel.machine, &results_path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} (run `cargo xtask setup`)", qemu_binary()))?;
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = started + config.timeout;
    let mut console: Vec<u8> = Vec::new();
    let mut scanned = 0usize;
    let mut boot_at: Option<Duration> = None;
    let mut run_start: Option<Duration> = None;
    let mut run_end: Option<Duration> = None;
    let mut next_progress = started + PROGRESS_TICK;
    let mut timed_out = false;
    let tag = format!("[vm {}]", boot.label);
    let mut progress = config
        .progress
        .then(|| Progress::with_plain_every(tag.clone(), Total::Unknown, PROGRESS_EVERY));
    if config.progress {
        eprintln!(
            "{tag} booting {} ({accel}, {:?}, {} MiB, {} vCPU, timeout {} s)",
            boot.kernel.image.display(),
            boot.kernel.machine,
            config.memory_mib,
            config.cpus,
            config.timeout.as_secs()
        );
    }
    let mut next_tick = started + control::TICK;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        if let Some(watcher) = &config.watcher
            && now >= next_tick
        {
            next_tick = now + control::TICK;
            let control = VmControl {
                console: &console,
                elapsed: started.elapsed(),
                qemu_pid: child.0.id(),
                monitor,
                bridge_pid: bridge.as_ref().map(vsock::Bridge::pid),
            };
            let mut hook = watcher.0.lock().unwrap_or_else(|e| e.into_inner());
            (*hook)(&control);
        }
        let mut until = deadline.min(next_progress);
        if config.watcher.is_some() {
            until = until.min(next_tick);
        }
        let wait = until.saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(chunk) => {
                let at = started.elapsed();
                console.extend_from_slice(&chunk);
                // Markers are whole lines; scan only lines completed since the last chunk.
                while let Some(pos) = console[scanned..].iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&console[scanned..scanned + pos]);
                    if let Some(echo) = &config.echo_console
                        && line.contains(echo.as_str())
                    {
                        println!("{}", line.trim_end());
                    }
                    if line.contains("GUARD-BOOT") && boot_at.is_none() {
                        boot_at = Some(at);
                        if let Some(progress) = &mut progress {
                            progress.say(&format!("{tag} booted in {:.2} s", at.as_secs_f64()));
                        }
                    } else if line.contains("GUARD-RUN-START") {
                        run_start = Some(at);
                    } else if line.contains("GUARD-RUN-END") {
                        run_end = Some(at);
                        if let Some(progress) = &mut progress
                            && let Some(start) = run_start
                        {
                            progress.say(&format!(
                                "{tag} scenario ran {:.2} s",
                                at.saturating_sub(start).as_secs_f64()
                            ));
                        }
                    }
                    scanned += pos + 1;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // QEMU closed its stdout: it exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(progress) = &mut progress
            && Instant::now() >= next_progress
        {
            next_progress = Instant::now() + PROGRESS_TICK;
            let text = String::from_utf8_lossy(&console);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no console output yet)");
            progress.update(0, &format!("running; last console line: {}", last.trim()));
        }
    }
    if timed_out {
        let _ = child.0.kill();
    }
    let status = child.0.wait().context("waiting for QEMU")?;
    let wall_time = started.elapsed();
    let _ = reader.join();
    // Output that raced the exit.
    while let Ok(chunk) = rx.try_recv() {
        console.extend_from_slice(&chunk);
    }
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    let console = String::from_utf8_lossy(&console).into_owned();
    let _ = std::fs::write(&console_path, &console);
    if !timed_out && !status.success() && console.is_empty() {
        // QEMU refused to start (bad kernel file, missing accelerator): a harness error.
        bail!(
            "QEMU failed ({status}) before the guest printed anything:\n{}",
            qemu_stderr.trim()
        );
    }
    let results = std::fs::read(&results_path).unwrap_or_default();
    if let Some(progress) = progress.take() {
        progress.clear();
    }
    if config.progress {
        let how = if timed_out {
            "timed out"
        } else if String::from_utf8_lossy(&results).contains("GUARD-DONE") {
            "completed"
        } else {
            "died"
        };
        eprintln!(
            "{tag} {how} after {:.2} s wall time",
            wall_time.as_secs_f64()
        );
    }
    Ok(RawRun {
        accel,
        console,
        results,
        timed_out,
        boot_time: boot_at,
        scenario_time: match (run_start, run_end) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start)),
            _ => None,
        },
        wall_time,
    })
}

/// Whether KVM boots a guest here. Boots the kernel with no root file system: it either
/// prints its banner and panics quickly (KVM works) or hangs (KVM broken). Cached per host
/// boot in `<target>/vm-runs/kvm-probe`.
fn kvm_works(kernel: &GuestKernel) -> bool {
    static RESULT: OnceLock<bool> = OnceLock::new();
    *RESULT.get_or_init(|| {
        let boot_id =
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let cache = paths::target_dir().join("vm-runs").join("kvm-probe");
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Some((id, verdict)) = text.trim().rsplit_once(' ')
            && id == boot_id.trim()
        {
            return verdict == "yes";
        }
        let works = probe_kvm(kernel);
        let _ = std::fs::create_dir_all(cache.parent().unwrap_or(Path::new(".")));
        let _ = std::fs::write(
            &cache,
            format!("{} {}\n", boot_id.trim(), if works { "yes" } else { "no" }),
        );
        eprintln!(
            "[vm] KVM probe: {}",
            if works {
                "KVM works, using it"
            } else {
                "KVM does not boot a guest here, using TCG"
            }
        );
        works
    })
}

fn probe_kvm(kernel: &GuestKernel) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut cmd = base_command("kvm", kernel, 128, 1, false);
    cmd.args(["-append", "console=ttyS0 panic=-1"])
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(child) = cmd.spawn() else { return false };
    let mut child = KillOnDrop(child);
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    // Under working KVM the kernel banner appears within a second; a broken KVM hangs in the
    // BIOS and never gets there. KillOnDrop stops the probe guest either way.
    rx.recv_timeout(KVM_PROBE_TIMEOUT).is_ok()
}

const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

//! Acting on a running guest from the host: destroy it, panic its kernel, stall its vsock
//! link. A test hands [`VmConfig::watcher`](super::VmConfig::watcher) a closure; the harness
//! calls it every [`TICK`] with a [`VmControl`] while the guest runs, so a test acts when a
//! condition holds (the host's copy of the log has an OOM kill) instead of after a fixed sleep.
use std::borrow::Cow;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// How often a watcher is called.
pub const TICK: Duration = Duration::from_millis(100);

/// What a watcher runs each tick.
type Hook = dyn FnMut(&VmControl<'_>) + Send;

/// A test's hook into a running guest (see the module doc).
#[derive(Clone)]
pub struct Watcher(pub(super) Arc<Mutex<Hook>>);

impl Watcher {
    pub fn new(hook: impl FnMut(&VmControl<'_>) + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(hook)))
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Watcher(..)")
    }
}

/// What a watcher can see and do.
pub struct VmControl<'a> {
    pub(super) console: &'a [u8],
    pub(super) elapsed: Duration,
    pub(super) qemu_pid: u32,
    pub(super) monitor: &'a Path,
    pub(super) bridge_pid: Option<u32>,
}

impl VmControl<'_> {
    /// The console (ttyS0) so far.
    pub fn console(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.console)
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Destroys the guest as a host does: SIGKILL to QEMU, nothing flushed, no goodbye.
    pub fn kill(&self) {
        signal(self.qemu_pid, libc::SIGKILL);
    }

    /// Panics the guest's kernel: an NMI through QEMU's monitor, which the harness's
    /// `unknown_nmi_panic` and `panic_on_unrecovered_nmi` turn into a panic (and `panic=-1` with `-no-reboot` into QEMU's
    /// exit). Works on kernels without sysrq, such as libkrunfw's.
    pub fn panic_guest(&self) -> Result<()> {
        let mut monitor = UnixStream::connect(self.monitor)
            .with_context(|| format!("connecting to QEMU's monitor {}", self.monitor.display()))?;
        monitor.set_read_timeout(Some(Duration::from_secs(5)))?;
        monitor
            .write_all(b"nmi\n")
            .context("writing to QEMU's monitor")?;
        // The monitor prints a prompt on connect and another once the command ran: hanging up
        // before the second can drop the command.
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while seen.windows(6).filter(|w| w == b"(qemu)").count() < 2 {
            match monitor.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(error) => {
                    return Err(error).context("waiting for QEMU's monitor to run `nmi`");
                }
            }
        }
        Ok(())
    }

    /// Stalls the guest's vsock link: the bridge is stopped (SIGSTOP), so the guest's
    /// packets queue and its writes block, as on a host that stops servicing the device.
    pub fn stall_vsock(&self) {
        if let Some(pid) = self.bridge_pid {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// Lets a stalled link flow again.
    pub fn resume_vsock(&self) {
        if let Some(pid) = self.bridge_pid {
            signal(pid, libc::SIGCONT);
        }
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain signal to a process this harness started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

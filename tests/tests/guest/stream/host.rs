//! The host end of the guest stream tests: a collector following a directory of VMs, a
//! watcher's view of its copies, and the guests' boot and stream options.
use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use guard::forensic::{self, Follower};
use guard::stream::{Collector, GuestStatus, StreamVerdict, VmDir};
use guard_tests::guest::Guest;
use xtask::vm::{self, Completed, GUEST_KEY_PATH, VmConfig, VmEntry, VmOutcome};

/// The port the guests stream to.
pub(super) const PORT: u32 = 7000;

/// The one-container waves as the enforcement suite runs them (waves.rs).
pub(super) const WAVES: &str = "--scenario waves --no-budget --memory 60%";

/// A host end: a collector following a directory of VMs (`guard collect --vm-dir`), each VM a
/// subdirectory with its own key where its VMM's vsock connections arrive.
pub(super) struct HostEnd {
    collector: Collector,
    statuses: mpsc::Receiver<GuestStatus>,
    /// Statuses read while waiting for another guest's.
    others: Mutex<Vec<GuestStatus>>,
    /// Short (Unix socket paths hold 107 bytes) and removed on drop.
    scratch: PathBuf,
    /// The collector's VM directory.
    vms: PathBuf,
}

/// How long a new VM directory may take to get its listener (inotify, else the rescan).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

impl HostEnd {
    /// A collector that takes only streams that prove their VM's key.
    pub(super) fn start(label: &str) -> Self {
        Self::start_with(label, false)
    }

    /// `no_auth`: VMs without a key are listened for too, unauthenticated (`--no-auth`).
    pub(super) fn start_with(label: &str, no_auth: bool) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "gs-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let vms = scratch.join("vms");
        std::fs::create_dir_all(&vms).unwrap();
        let (sender, statuses) = mpsc::channel();
        let sender = Mutex::new(sender);
        let collector = Collector::new(scratch.join("collected"), move |status| {
            eprintln!("collector: {status}");
            let _ = sender.lock().unwrap().send(status.clone());
        })
        .unwrap();
        let mut vm_dir = VmDir::new(&vms, PORT);
        vm_dir.no_auth = no_auth;
        collector.watch_vm_dir(vm_dir).unwrap();
        Self {
            collector,
            statuses,
            others: Mutex::default(),
            scratch,
            vms,
        }
    }

    /// A VM under the collector's directory with a key of its own (the guest gets it at
    /// [`GUEST_KEY_PATH`]), once the collector listens for it.
    pub(super) fn vm(&self, guest: &str) -> VmEntry {
        self.listening(VmEntry::create(&self.vms, guest).unwrap())
    }

    /// A VM without a key (a collector started with `no_auth` listens for it).
    pub(super) fn vm_without_key(&self, guest: &str) -> VmEntry {
        self.listening(VmEntry::create_without_key(&self.vms, guest).unwrap())
    }

    fn listening(&self, entry: VmEntry) -> VmEntry {
        let socket = entry.vsock().host_socket(PORT);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !(self.collector.listening().contains(&entry.name) && socket.exists()) {
            assert!(
                Instant::now() < deadline,
                "the collector did not listen for {} within {LISTEN_TIMEOUT:?}",
                entry.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        entry
    }

    /// Every stream of `guest` that ends within `timeout` after the guest is gone, until one
    /// ends with a verdict matching `last`.
    /// Statuses of other guests met on the way are kept for their own call.
    pub(super) fn streams_until(
        &self,
        guest: &str,
        last: impl Fn(&StreamVerdict) -> bool,
        timeout: Duration,
        context: &str,
    ) -> Vec<GuestStatus> {
        let deadline = Instant::now() + timeout;
        let mut ended = Vec::new();
        let mut others = self.others.lock().unwrap();
        loop {
            let status = match others
                .iter()
                .position(|s| s.guest.as_deref() == Some(guest))
            {
                Some(at) => others.remove(at),
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.statuses.recv_timeout(left).unwrap_or_else(|_| {
                        panic!(
                            "no final verdict for {guest} within {timeout:?}; streams: \
                             {ended:#?}\n{context}"
                        )
                    })
                }
            };
            if status.guest.as_deref() != Some(guest) {
                others.push(status);
                continue;
            }
            if let Some(verdict) = &status.verdict {
                let done = last(verdict);
                ended.push(status);
                if done {
                    return ended;
                }
            }
        }
    }

    pub(super) fn copy(&self, guest: &str) -> PathBuf {
        self.collector.guest_dir(guest)
    }
}

impl Drop for HostEnd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The records of a log directory, read as they are appended: a watcher's view of the host's
/// copy while the guest runs.
pub(super) struct CopyWatch {
    follower: Follower,
    records: Vec<forensic::Record>,
}

impl CopyWatch {
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            follower: Follower::from_start(dir),
            records: Vec::new(),
        }
    }

    pub(super) fn poll(&mut self) -> &[forensic::Record] {
        let records = &mut self.records;
        let _ = self.follower.poll(&mut |entry| {
            if let Ok(entry) = entry {
                records.push(entry.record);
            }
        });
        &self.records
    }
}

/// The `wave` record of `name` among `records`, and the number of records after it.
pub(super) fn wave<'a>(
    records: &'a [forensic::Record],
    name: &str,
) -> Option<(&'a forensic::Record, usize)> {
    let at = records
        .iter()
        .position(|r| r.kind == "wave" && r.payload["wave"] == name)?;
    Some((&records[at], records.len() - at - 1))
}

pub(super) fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    forensic::layout::list_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|file| (file.name(), std::fs::read(&file.path).unwrap()))
        .collect()
}

/// The guest's files under `/results/<prefix>/`, as (file name, bytes), sorted.
pub(super) fn guest_files(done: &Completed, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("{prefix}/");
    let mut files: Vec<(String, Vec<u8>)> = done
        .files
        .iter()
        .filter_map(|(path, bytes)| {
            path.strip_prefix(&prefix)
                .filter(|name| name.ends_with(".jsonl"))
                .map(|name| (name.to_string(), bytes.clone()))
        })
        .collect();
    files.sort();
    files
}

pub(super) fn boot(guest: &Guest, label: &str, script: &str, vm: &VmEntry) -> VmConfig {
    VmConfig::shell(&guest.kernel, script)
        .binary(guest.bin_dir.join("guard"))
        .binary(guest.bin_dir.join("guard-stress"))
        .timeout(Duration::from_secs(600))
        .label(format!("{label}-{}", guest.kernel))
        .vm_entry(vm)
}

/// The stream options of a guest command for VM `name`: the collector's port, the name the
/// host gave the VM, the key the harness put in the guest.
pub(super) fn stream_options(name: &str) -> String {
    format!("--stream vsock:{PORT} --stream-name {name} --stream-key {GUEST_KEY_PATH}")
}

pub(super) fn run(config: &VmConfig) -> VmOutcome {
    let outcome = vm::run(config).expect("the VM harness itself failed");
    eprintln!(
        "{}: boot {:?}, scenario {:?}, wall {:?}",
        config.label.as_deref().unwrap_or("?"),
        outcome.boot_time,
        outcome.scenario_time,
        outcome.wall_time
    );
    outcome
}

/// `guard log verify`'s exit code for `dir`.
pub(super) fn guard_log_verify(guest: &Guest, dir: &Path) -> i32 {
    std::process::Command::new(guest.bin_dir.join("guard"))
        .args(["log", "--dir"])
        .arg(dir)
        .arg("verify")
        .status()
        .expect("guard log verify runs")
        .code()
        .unwrap_or(-1)
}

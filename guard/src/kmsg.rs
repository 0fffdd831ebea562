//! OOM kills as the kernel log reports them, by scope: the one place where a guest without
//! tracing says whether the global OOM killer or a memory cgroup's struck.
//!
//! `__oom_kill_process` prints one line per kill, never rate-limited (the dump before it is):
//! `Memory cgroup out of memory: Killed process <pid> (<comm>) …` for a memcg OOM,
//! `Out of memory: Killed process <pid> (<comm>) …` for the global one. [`KmsgWatch`] reads
//! `/dev/kmsg` from the moment it starts and tallies them; a reader that falls behind the
//! kernel's log buffer is told so (EPIPE), and the tally counts it instead of pretending.
//! Only the kernel's own records count (facility 0): the guest's root can write any text to
//! `/dev/kmsg`, but the kernel logs it at a user facility.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::OpenOptionsExt,
    },
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Serialize;

/// The kernel log's device.
pub const KMSG_PATH: &str = "/dev/kmsg";

/// The kernel log could not be watched ([`KmsgWatch::start`]).
#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    /// `/dev/kmsg` could not be opened or moved to its end (no such device, not permitted).
    #[error("opening {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The reading thread could not be spawned.
    #[error("starting the thread that reads {path}: {source}")]
    Thread {
        /// The device.
        path: PathBuf,
        /// The spawn's error.
        source: io::Error,
    },
}

/// Which OOM killer chose the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScope {
    /// The global OOM killer: the whole guest was out of memory
    /// (`Out of memory: Killed process …`).
    Global,
    /// A memory cgroup's OOM killer: a cgroup hit its memory.max
    /// (`Memory cgroup out of memory: Killed process …`).
    Memcg,
}

/// One kill as the kernel log reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedKill {
    /// Which killer.
    pub scope: OomScope,
    /// The victim's pid.
    pub pid: u32,
    /// The victim's command name, as logged between the parentheses.
    pub comm: String,
}

/// The facility of the kernel's own messages. A line written to `/dev/kmsg` from userspace
/// never has it: the kernel gives such a line `LOG_USER` (1) unless it names another facility,
/// and a named facility 0 is taken as none.
const KERNEL_FACILITY: u32 = 0;

/// The kill a `/dev/kmsg` record reports, if it is one: `prio,seq,time,flags;message`, where
/// `prio` is the facility times 8 plus the level. Only the kernel's own records (facility 0)
/// count: anyone who may write to `/dev/kmsg` can log the same text at another facility.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::kmsg::{OomScope, parse_kill};
///
/// let line = "3,1742,98765432,-;Memory cgroup out of memory: Killed process 1160 (stress) \
///             total-vm:526892kB, anon-rss:52112kB, file-rss:4kB, shmem-rss:0kB";
/// let kill = parse_kill(line).unwrap();
/// assert_eq!((kill.scope, kill.pid, kill.comm.as_str()), (OomScope::Memcg, 1160, "stress"));
/// let global = parse_kill("3,7,8,-;Out of memory: Killed process 77 (sh) total-vm:1kB").unwrap();
/// assert_eq!(global.scope, OomScope::Global);
/// assert_eq!(parse_kill("6,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG"), None);
/// // `echo "<3>Out of memory: Killed process 77 (sh)" > /dev/kmsg` is logged at facility 1
/// // (prio 8 + 3): not the kernel's.
/// assert_eq!(parse_kill("11,9,10,-;Out of memory: Killed process 77 (sh) total-vm:1kB"), None);
/// # }
/// ```
pub fn parse_kill(record: &str) -> Option<LoggedKill> {
    let (prefix, message) = record.split_once(';')?;
    let prio: u32 = prefix.split(',').next()?.parse().ok()?;
    if prio >> 3 != KERNEL_FACILITY {
        return None;
    }
    parse_message(message)
}

/// The kill a kernel message (without the record's prefix) reports, if it is one.
fn parse_message(message: &str) -> Option<LoggedKill> {
    let (scope, rest) = if let Some(rest) = message.strip_prefix("Memory cgroup out of memory: ") {
        (OomScope::Memcg, rest)
    } else if let Some(rest) = message.strip_prefix("Out of memory: ") {
        (OomScope::Global, rest)
    } else {
        return None;
    };
    let rest = rest.strip_prefix("Killed process ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let comm = rest.strip_prefix('(')?;
    let comm = &comm[..comm.rfind(')')?];
    Some(LoggedKill {
        scope,
        pid: pid.parse().ok()?,
        comm: comm.to_string(),
    })
}

/// How many global kills' pids the tally keeps for attribution (global kills are the rare
/// disaster case: a guest that had this many has nothing left to attribute).
const MAX_GLOBAL_PIDS: usize = 65_536;

/// OOM kills the kernel logged since the watch started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OomTally {
    /// Kills by the global OOM killer.
    pub global: u64,
    /// Kills by a memory cgroup's OOM killer.
    pub memcg: u64,
    /// Times the reader fell behind the kernel's log buffer: kills may be missing.
    pub overruns: u64,
    /// The global kills' victims (the evidence a review needs first), the first 64.
    pub global_victims: Vec<LoggedKill>,
    /// Every global kill's pid (up to [`MAX_GLOBAL_PIDS`]), to attribute them to containers.
    #[serde(skip)]
    global_pids: BTreeSet<u32>,
}

impl OomTally {
    fn add(&mut self, kill: LoggedKill) {
        match kill.scope {
            OomScope::Memcg => self.memcg += 1,
            OomScope::Global => {
                self.global += 1;
                if self.global_pids.len() < MAX_GLOBAL_PIDS {
                    self.global_pids.insert(kill.pid);
                }
                if self.global_victims.len() < 64 {
                    self.global_victims.push(kill);
                }
            }
        }
    }

    /// How many of `victims` (pids the probes saw chosen as OOM victims, repeats allowed) the
    /// kernel log reports as killed by the global OOM killer. A pid the kernel reused for a
    /// victim of the other scope would count wrongly; within one incident that is not seen.
    pub fn global_kills_among(&self, victims: &[u32]) -> u64 {
        let victims: BTreeSet<u32> = victims.iter().copied().collect();
        victims.intersection(&self.global_pids).count() as u64
    }
}

/// The open log and what was read from it, shared by the reading thread and callers that want
/// the tally as of now.
struct Reader {
    file: File,
    tally: OomTally,
    /// Called with each kill as it is read (tier 1 makes it an event), before it is tallied.
    on_kill: Option<OnKill>,
    /// A read error other than an overrun: the tally stops there.
    failed: bool,
}

impl Reader {
    /// Reads every record the kernel has logged so far. Returns false once reading failed.
    fn read_available(&mut self) -> bool {
        // A record is at most 8 KiB (CONSOLE_EXT_LOG_MAX).
        let mut buffer = [0u8; 8192];
        while !self.failed {
            match self.file.read(&mut buffer) {
                Ok(0) => self.failed = true,
                Ok(length) => {
                    let record = String::from_utf8_lossy(&buffer[..length]);
                    if let Some(kill) = parse_kill(record.lines().next().unwrap_or("")) {
                        if let Some(on_kill) = &mut self.on_kill {
                            on_kill(&kill);
                        }
                        self.tally.add(kill);
                    }
                }
                // Records were overwritten before they were read.
                Err(error) if error.raw_os_error() == Some(libc::EPIPE) => self.tally.overruns += 1,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "reading {KMSG_PATH}: the OOM tally stops here");
                    self.failed = true;
                }
            }
        }
        false
    }
}

/// What a watch does with each kill besides tallying it.
pub type OnKill = Box<dyn FnMut(&LoggedKill) + Send>;

/// Tallies the kernel log's OOM kills from now on, in a thread of its own.
pub struct KmsgWatch {
    reader: Arc<Mutex<Reader>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KmsgWatch {
    /// Starts reading `/dev/kmsg` at its end: only what the kernel logs from now on counts.
    pub fn start() -> Result<Self, KmsgError> {
        Self::start_with(None)
    }

    /// Like [`KmsgWatch::start`], calling `on_kill` with each kill as it is read, on the
    /// reading thread or on the caller's of [`KmsgWatch::tally`] and
    /// [`KmsgWatch::catch_up`] (hold no lock it takes while calling those).
    pub fn start_with(on_kill: Option<OnKill>) -> Result<Self, KmsgError> {
        let path = PathBuf::from(KMSG_PATH);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|source| KmsgError::Open {
                path: path.clone(),
                source,
            })?;
        // SEEK_END on /dev/kmsg moves past every record already logged.
        use std::io::Seek as _;
        file.seek(io::SeekFrom::End(0))
            .map_err(|source| KmsgError::Open {
                path: path.clone(),
                source,
            })?;
        let fd = file.as_raw_fd();
        let reader = Arc::new(Mutex::new(Reader {
            file,
            tally: OomTally::default(),
            on_kill,
            failed: false,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("guard-kmsg".into())
            .spawn({
                let (reader, stop) = (reader.clone(), stop.clone());
                move || read_records(fd, &reader, &stop)
            })
            .map_err(|source| KmsgError::Thread { path, source })?;
        Ok(Self {
            reader,
            stop,
            thread: Some(thread),
        })
    }

    /// The kills so far, including every record logged before this call (read here, so that
    /// a kill the probes just reported is in it).
    pub fn tally(&self) -> OomTally {
        self.reader
            .lock()
            .map(|mut reader| {
                reader.read_available();
                reader.tally.clone()
            })
            .unwrap_or_default()
    }

    /// Reads every record the kernel has logged so far (each kill handed to `on_kill`).
    pub fn catch_up(&self) {
        if let Ok(mut reader) = self.reader.lock() {
            reader.read_available();
        }
    }

    /// How many of `victims` the log reports killed by the global OOM killer, and how often
    /// its reader fell behind, as of now (read here, like [`KmsgWatch::tally`], without a copy
    /// of the tally).
    pub fn global_kills_among(&self, victims: &[u32]) -> (u64, u64) {
        self.reader
            .lock()
            .map(|mut reader| {
                reader.read_available();
                (
                    reader.tally.global_kills_among(victims),
                    reader.tally.overruns,
                )
            })
            .unwrap_or_default()
    }

    /// Stops reading and returns the final tally (what is logged until now is read first).
    pub fn finish(mut self) -> OomTally {
        self.stop_thread();
        self.tally()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KmsgWatch {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// How long the thread waits for a record before it checks for a stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the descriptor stays open while
    // the reader (which owns the file) lives, and the thread holds a reference to it.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
}

/// Reads as records arrive, woken the moment one does: a burst of OOM reports must not
/// overrun the kernel's log buffer before it is read.
fn read_records(fd: RawFd, reader: &Mutex<Reader>, stop: &AtomicBool) {
    loop {
        let reading = reader
            .lock()
            .map(|mut reader| reader.read_available())
            .unwrap_or(false);
        if !reading || stop.load(Ordering::Relaxed) {
            return;
        }
        wait_readable(fd, POLL_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_are_parsed_by_scope() {
        let memcg = "3,1742,98765432,-;Memory cgroup out of memory: Killed process 1160 \
                     (guard-stress) total-vm:526892kB, anon-rss:52112kB, file-rss:4kB, \
                     shmem-rss:0kB, UID:0 pgtables:172kB oom_score_adj:0";
        assert_eq!(
            parse_kill(memcg),
            Some(LoggedKill {
                scope: OomScope::Memcg,
                pid: 1160,
                comm: "guard-stress".into()
            })
        );
        let global = "3,7,8,-;Out of memory: Killed process 77 (a (b) c) total-vm:1kB";
        assert_eq!(
            parse_kill(global),
            Some(LoggedKill {
                scope: OomScope::Global,
                pid: 77,
                comm: "a (b) c".into()
            })
        );
    }

    #[test]
    fn other_messages_are_not_kills() {
        for line in [
            "6,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)",
            "4,5,6,-;guard-stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
            "3,1,2,-;Out of memory: Killed process x (y)",
            "3,1,2,-;Out of memory: Killed process 12",
            "6,1,2,-;Memory cgroup stats for /guard/a:",
            // A message without the record's prefix: not a record of /dev/kmsg.
            "Out of memory: Killed process 77 (sh) total-vm:1kB",
            "",
        ] {
            assert_eq!(parse_kill(line), None, "{line}");
        }
    }

    #[test]
    fn only_the_kernels_own_lines_count() {
        // What `echo "<N>…" > /dev/kmsg` makes of each prefix: no facility given or facility 0
        // named is LOG_USER (prio 8 + level); any other is kept.
        let message = "Out of memory: Killed process 77 (sh) total-vm:1kB";
        for prio in [8, 11, 14, 3 * 8 + 3, 23 * 8 + 7] {
            assert_eq!(
                parse_kill(&format!("{prio},5,6,-;{message}")),
                None,
                "{prio}"
            );
        }
        // Two-sided: the same message at the kernel's facility, every level, is a kill.
        for prio in 0..8 {
            assert!(
                parse_kill(&format!("{prio},5,6,-;{message}")).is_some(),
                "{prio}"
            );
        }
        // A prefix that is not a number is no record.
        assert_eq!(parse_kill(&format!("x,5,6,-;{message}")), None);
    }

    #[test]
    fn the_tally_keeps_global_victims() {
        let mut tally = OomTally::default();
        tally.add(parse_kill("3,1,1,-;Out of memory: Killed process 5 (sh) x").unwrap());
        tally.add(
            parse_kill("3,2,2,-;Memory cgroup out of memory: Killed process 6 (a) x").unwrap(),
        );
        assert_eq!((tally.global, tally.memcg), (1, 1));
        assert_eq!(tally.global_victims[0].pid, 5);
    }

    #[test]
    fn global_kills_are_found_among_a_containers_victims() {
        let mut tally = OomTally::default();
        for line in [
            "3,1,1,-;Out of memory: Killed process 5 (sh) x",
            "3,2,2,-;Out of memory: Killed process 9 (sh) x",
            "3,3,3,-;Memory cgroup out of memory: Killed process 6 (a) x",
        ] {
            tally.add(parse_kill(line).unwrap());
        }
        // 6 was a memcg kill, 7 no kill at all; 5 marked twice is one kill.
        assert_eq!(tally.global_kills_among(&[5, 5, 6, 7]), 1);
        assert_eq!(tally.global_kills_among(&[5, 9]), 2);
        assert_eq!(tally.global_kills_among(&[]), 0);
    }
}

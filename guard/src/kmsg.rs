//! OOM kills as the kernel log reports them, by scope: the one place where a guest without
//! tracing says whether the global OOM killer or a memory cgroup's struck.
//!
//! `__oom_kill_process` prints one line per kill, never rate-limited (the dump before it is):
//! `Memory cgroup out of memory: Killed process <pid> (<comm>) …` for a memcg OOM,
//! `Out of memory: Killed process <pid> (<comm>) …` for the global one. [`KmsgWatch`] reads
//! `/dev/kmsg` from the moment it starts and tallies them; a reader that falls behind the
//! kernel's log buffer is told so (EPIPE), and the tally counts it instead of pretending.
use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Serialize;

pub const KMSG_PATH: &str = "/dev/kmsg";

#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("starting the thread that reads {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

/// Which OOM killer chose the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScope {
    Global,
    Memcg,
}

/// One kill as the kernel log reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedKill {
    pub scope: OomScope,
    pub pid: u32,
    pub comm: String,
}

/// The kill a kernel log message reports, if it is one. Takes the message text, with or
/// without `/dev/kmsg`'s `level,seq,time,flags;` prefix.
pub fn parse_kill(record: &str) -> Option<LoggedKill> {
    let message = match record.split_once(';') {
        Some((prefix, message)) if prefix.split(',').count() >= 3 => message,
        _ => record,
    };
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

/// OOM kills the kernel logged since the watch started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OomTally {
    pub global: u64,
    pub memcg: u64,
    /// Times the reader fell behind the kernel's log buffer: kills may be missing.
    pub overruns: u64,
    /// The global kills' victims (the evidence a review needs first).
    pub global_victims: Vec<LoggedKill>,
}

impl OomTally {
    fn add(&mut self, kill: LoggedKill) {
        match kill.scope {
            OomScope::Memcg => self.memcg += 1,
            OomScope::Global => {
                self.global += 1;
                if self.global_victims.len() < 64 {
                    self.global_victims.push(kill);
                }
            }
        }
    }
}

/// Tallies the kernel log's OOM kills from now on, in a thread of its own.
pub struct KmsgWatch {
    tally: Arc<Mutex<OomTally>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KmsgWatch {
    /// Starts reading `/dev/kmsg` at its end: only what the kernel logs from now on counts.
    pub fn start() -> Result<Self, KmsgError> {
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
        let tally = Arc::new(Mutex::new(OomTally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("guard-kmsg".into())
            .spawn({
                let (tally, stop) = (tally.clone(), stop.clone());
                move || read_records(file, &tally, &stop)
            })
            .map_err(|source| KmsgError::Thread { path, source })?;
        Ok(Self {
            tally,
            stop,
            thread: Some(thread),
        })
    }

    /// The kills so far.
    pub fn tally(&self) -> OomTally {
        self.tally
            .lock()
            .map(|tally| tally.clone())
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

/// How long a read waits for a record before it checks for a stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

fn wait_readable(file: &File, timeout: Duration) {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
}

/// One record per read(2), as /dev/kmsg hands them out; polls so that a stop is seen.
fn read_records(mut file: File, tally: &Mutex<OomTally>, stop: &AtomicBool) {
    // A record is at most 8 KiB (CONSOLE_EXT_LOG_MAX).
    let mut buffer = vec![0u8; 8192];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return,
            Ok(length) => {
                let record = String::from_utf8_lossy(&buffer[..length]);
                if let (Some(kill), Ok(mut tally)) = (
                    parse_kill(record.lines().next().unwrap_or("")),
                    tally.lock(),
                ) {
                    tally.add(kill);
                }
            }
            // Records were overwritten before they were read.
            Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {
                if let Ok(mut tally) = tally.lock() {
                    tally.overruns += 1;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // Woken the moment a record arrives: a burst of OOM reports must not overrun
                // the kernel's log buffer before it is read.
                wait_readable(&file, POLL_TIMEOUT);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, "reading {KMSG_PATH}: the OOM tally stops here");
                return;
            }
        }
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
        let global = "Out of memory: Killed process 77 (a (b) c) total-vm:1kB";
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
            "Out of memory: Killed process x (y)",
            "Out of memory: Killed process 12",
            "Memory cgroup stats for /guard/a:",
            "",
        ] {
            assert_eq!(parse_kill(line), None, "{line}");
        }
    }

    #[test]
    fn the_tally_keeps_global_victims() {
        let mut tally = OomTally::default();
        tally.add(parse_kill("Out of memory: Killed process 5 (sh) x").unwrap());
        tally.add(parse_kill("Memory cgroup out of memory: Killed process 6 (a) x").unwrap());
        assert_eq!((tally.global, tally.memcg), (1, 1));
        assert_eq!(tally.global_victims[0].pid, 5);
    }
}

//! A deadline on libcontainer's exec handshake. An exec clones helpers (`youki:[1:INTER]`,
//! `youki:[2:INIT]`) that join the container's cgroup before the command runs, so under the
//! container's (or the budget's) memory pressure the OOM killer may pick them. Seen in guests:
//! the intermediate killed after it cloned the init, the init alive and holding a copy of the
//! handshake channel's sender, and the agent's exec waiting on that channel forever. Past the
//! deadline the watchdog kills the helpers left in the cgroup: the channel closes, the exec
//! returns an error, and the agent goes on.
use std::{path::Path, sync::mpsc, thread::JoinHandle, time::Duration};

use tracing::warn;

/// How long an exec may take before its helpers are presumed stuck. An exec takes well under
/// a second on hardware and a few under emulation and memory pressure.
pub const EXEC_DEADLINE: Duration = Duration::from_secs(60);
/// How often the helpers are looked for again once the deadline has passed.
const RECHECK: Duration = Duration::from_secs(1);
/// The prefix libcontainer gives its helper processes' names.
const HELPER_PREFIX: &str = "youki:";

/// A watchdog thread for one exec; [`Deadline::disarm`] stops it.
pub(super) struct Deadline {
    done: mpsc::Sender<()>,
    thread: Option<JoinHandle<u32>>,
}

impl Deadline {
    /// Starts watching the exec into the container whose cgroup is `cgroup`.
    pub fn arm(cgroup: &Path, deadline: Duration) -> Self {
        let (done, finished) = mpsc::channel();
        let cgroup = cgroup.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("guard-exec-deadline".into())
            .spawn(move || watch(&cgroup, &finished, deadline))
            .map_err(|error| warn!(%error, "cannot start the exec deadline's thread"))
            .ok();
        Self { done, thread }
    }

    /// Stops the watchdog; returns how many stuck helpers it killed.
    pub fn disarm(self) -> u32 {
        let _ = self.done.send(());
        self.thread
            .and_then(|thread| thread.join().ok())
            .unwrap_or(0)
    }
}

fn watch(cgroup: &Path, finished: &mpsc::Receiver<()>, deadline: Duration) -> u32 {
    let mut killed = 0;
    let mut wait = deadline;
    loop {
        match finished.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                killed += kill_helpers(cgroup);
                wait = RECHECK;
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return killed,
        }
    }
}

/// Kills the libcontainer helpers in `cgroup` (by name: the container's own processes have
/// exec'd their commands and carry those names).
pub(super) fn kill_helpers(cgroup: &Path) -> u32 {
    let mut killed = 0;
    for pid in crate::cgroup::read_ids(cgroup, "cgroup.procs").unwrap_or_default() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with(HELPER_PREFIX) {
            // SAFETY: kill(2) with a pid read from the container's cgroup.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                warn!(cgroup = %cgroup.display(), pid, comm = comm.trim(), "killed an exec helper stuck past the deadline");
                killed += 1;
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_exec_kills_nothing() {
        let deadline = Deadline::arm(Path::new("/nonexistent"), Duration::from_secs(60));
        assert_eq!(deadline.disarm(), 0);
    }

    #[test]
    fn past_the_deadline_only_helpers_are_killed() {
        // A fake cgroup holding this test process and a `sleep` whose name is a helper's
        // (run through a link named like one): the helper is killed, the test lives on.
        let dir = std::env::temp_dir().join(format!("guard-exec-deadline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("youki:[2:INIT]");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut helper = std::process::Command::new(&link)
            .arg("600")
            .spawn()
            .unwrap();
        // Named once it has exec'd: wait for the name, not for a fixed time.
        let comm = format!("/proc/{}/comm", helper.id());
        while !std::fs::read_to_string(&comm)
            .unwrap()
            .starts_with(HELPER_PREFIX)
        {
            std::thread::yield_now();
        }
        std::fs::write(
            dir.join("cgroup.procs"),
            format!("{}\n{}\n", std::process::id(), helper.id()),
        )
        .unwrap();
        let deadline = Deadline::arm(&dir, Duration::from_millis(1));
        let waited = std::time::Instant::now();
        let status = loop {
            if let Some(status) = helper.try_wait().unwrap() {
                break status;
            }
            if waited.elapsed() > Duration::from_secs(30) {
                let _ = helper.kill();
                panic!("the helper was not killed past the deadline");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert_eq!(deadline.disarm(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

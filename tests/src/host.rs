//! Host-kernel test fixtures: throwaway cgroups in the v2 hierarchy and the stress workload.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use guard::{
    Guard, GuardOptions, cgroup::Hierarchy, forensic::LogOptions, sinks::event_log::EventLog,
};

/// Options for exact-count tests: every event streamed (the default rate bound could suppress
/// some).
pub fn unbounded() -> GuardOptions {
    let mut options = GuardOptions::default();
    options.ring.max_events_per_sec = 0;
    options
}

/// A fresh cgroup `name`, and a guard (started with [`unbounded`]) watching it as container
/// `name`.
pub async fn watched_container(name: &str) -> (TestCgroup, Guard) {
    let cgroup = TestCgroup::create(name);
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch(name, &cgroup.path).unwrap();
    (cgroup, guard)
}

/// A forensic log of `guard`'s events (default options) in a fresh folder
/// `guard-<tag>-<pid>` under the temporary directory. The caller closes the log and removes
/// the folder.
pub fn event_log(guard: &Guard, tag: &str) -> (PathBuf, EventLog) {
    let dir = std::env::temp_dir().join(format!("guard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = EventLog::start(guard, &dir, LogOptions::default(), serde_json::Value::Null).unwrap();
    (dir, log)
}

/// True when this process may load BPF programs and create cgroups. Outside CI a non-root run
/// skips with a printed reason; in CI (`CI=true`) that is a failure, never a silent skip.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: host BPF tests must run as root in CI");
    }
    eprintln!("SKIP {test}: needs root (BPF programs and cgroups)");
    false
}

/// A cgroup created for one test and removed when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestCgroup {
    /// Creates a fresh cgroup directly under the v2 root (or under `parent`).
    pub fn create(name: &str) -> Self {
        let hierarchy = Hierarchy::find().expect("a cgroup2 hierarchy is mounted");
        let unique = format!(
            "guard-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_at(hierarchy.mount.join(unique))
    }

    /// Creates a sub-cgroup of this one.
    pub fn child(&self, name: &str) -> Self {
        Self::create_at(self.path.join(name))
    }

    fn create_at(path: PathBuf) -> Self {
        std::fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("creating cgroup {}: {error}", path.display()));
        Self { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup whose last task is still being torn down is briefly busy: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(error) = std::fs::remove_dir(&self.path) {
            if Instant::now() > deadline || error.kind() == std::io::ErrorKind::NotFound {
                eprintln!("warning: removing {}: {error}", self.path.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `guard-stress [--cgroup DIR] ARGS…` to completion and returns its JSON tally line.
pub fn run_stress(stress_bin: &str, cgroup: Option<&Path>, args: &[&str]) -> String {
    let mut command = Command::new(stress_bin);
    if let Some(cgroup) = cgroup {
        command.arg("--cgroup").arg(cgroup);
    }
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {stress_bin}: {error}"));
    assert!(
        output.status.success(),
        "guard-stress {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Writes `pid` into `cgroup`'s `cgroup.procs` (0 = the writer itself).
pub fn move_to_cgroup(pid: u32, cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|error| panic!("moving {pid} into {}: {error}", cgroup.display()));
}

/// The value of `"key":N` in a guard-stress tally line.
pub fn tally(line: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let start = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + needle.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {line} is not a number"))
}

//! Guest-VM test fixtures: which kernels can boot, where the guest's binaries come from, and
//! running a scenario with the guard inside.
//!
//! The guest gets the release `guard` and `guard-stress` from `$GUARD_BIN_DIR` (set by
//! `cargo xtask test`, which builds them first), else from the workspace's `target/release`.
//! Under CI a missing kernel, QEMU or binary fails the test: the guest suite is never skipped
//! there. Elsewhere it skips with a printed reason.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use xtask::vm::{self, Completed, VmConfig, VmResult};

/// `per_kernel!(f, g);` declares, for each function `f(kernel: &str)`, a module `f` of
/// `#[test]` functions, one per guest kernel, each calling `f` with its kernel's name: `cargo
/// test` lists them as `…::f::linux_6_1`, `…::f::linux_6_12`, so a filter like `linux_6_12`
/// runs one kernel's guests alone.
///
/// The kernel list is here, once: a kernel is added with one line, and [`KERNELS`] and
/// [`KERNEL_FACTS`] follow. Each line names the test, the kernel (as `xtask vm` resolves it),
/// and what the suites expect of it: its release series and the tier guard must reach there
/// (a kernel that lost a feature fails the suites instead of quietly testing less). The
/// `@`-arms are internal.
#[macro_export]
macro_rules! per_kernel {
    // The guest kernels: `test name = kernel name (release series, guard's tier)`.
    (@with $arm:ident $($args:tt)*) => {
        $crate::per_kernel! { @$arm [$($args)*]
            linux_6_1 = "6.1" ("6.1", 3),
            linux_6_12 = "6.12" ("6.12", 3),
            linux_lean = "lean" ("6.12", 1),
            linux_lean_guard = "lean-guard" ("6.12", 3),
        }
    };
    (@tests [$function:ident] $($test:ident = $kernel:literal $facts:tt,)+) => {
        mod $function {
            $(
                #[test]
                fn $test() {
                    super::$function($kernel);
                }
            )+
        }
    };
    (@facts [] $($test:ident = $kernel:literal ($release:literal, $tier:literal),)+) => {
        [$($crate::guest::KernelFacts {
            test: stringify!($test),
            name: $kernel,
            release: $release,
            tier: $tier,
        }),+]
    };
    ($($function:ident),+ $(,)?) => {
        $($crate::per_kernel! { @with tests $function })+
    };
}

/// `vsock_kernels!(f, g);`: like [`per_kernel!`], on the kernels the vsock stream tests run on:
/// Debian's 6.12 (vsock as modules, the harness loads them, PCI) and `lean-guard` (vsock built
/// in, `-M microvm` as the micro-VM runtimes boot it). The stream's code does not change with
/// the tier or the kernel series: `lean` and 6.1 would add boots, not coverage.
#[macro_export]
macro_rules! vsock_kernels {
    ($($function:ident),+ $(,)?) => {
        $(
            mod $function {
                #[test]
                fn linux_6_12() {
                    super::$function("6.12");
                }
                #[test]
                fn linux_lean_guard() {
                    super::$function("lean-guard");
                }
            }
        )+
    };
}

/// What the suites expect of one guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFacts {
    /// The tests' name for it (`linux_6_12`).
    pub test: &'static str,
    /// Its name for `xtask vm` (`6.12`, `lean`).
    pub name: &'static str,
    /// Its release series: `uname -r` starts with this and a dot.
    pub release: &'static str,
    /// The tier guard reaches on it: 0 cgroup files only, 1 kernel sources (perf, kernel
    /// log), 2 tracepoints, 3 + kprobes.
    pub tier: u8,
}

impl KernelFacts {
    /// guard's BPF programs run there (tier 2 and up).
    pub fn bpf(&self) -> bool {
        self.tier >= 2
    }
}

/// Every guest kernel and what is expected of it, from [`per_kernel!`]'s list.
pub const KERNEL_FACTS: &[KernelFacts] = &per_kernel!(@with facts);

/// The guest kernels every guest test runs on, in [`per_kernel!`]'s order.
pub const KERNELS: [&str; KERNEL_FACTS.len()] = {
    let mut kernels = [""; KERNEL_FACTS.len()];
    let mut i = 0;
    while i < kernels.len() {
        kernels[i] = KERNEL_FACTS[i].name;
        i += 1;
    }
    kernels
};

// A test named for another kernel than it boots would mislead every report: refuse to build.
const _: () = {
    let mut i = 0;
    while i < KERNEL_FACTS.len() {
        assert!(
            is_test_name(KERNEL_FACTS[i].test, KERNEL_FACTS[i].name),
            "per_kernel!: a kernel's test name must be `linux_` and its name with `_` for `.` \
             and `-`"
        );
        assert!(KERNEL_FACTS[i].tier <= 3, "per_kernel!: tiers are 0 to 3");
        i += 1;
    }
};

/// What the suites expect of `kernel`.
pub fn facts(kernel: &str) -> KernelFacts {
    *KERNEL_FACTS
        .iter()
        .find(|facts| facts.name == kernel)
        .unwrap_or_else(|| panic!("{kernel} is not in per_kernel!'s list"))
}

/// Whether `test` is `kernel`'s test name: `linux_6_12` for "6.12", `linux_lean_guard` for
/// "lean-guard".
const fn is_test_name(test: &str, kernel: &str) -> bool {
    const PREFIX: &[u8] = b"linux_";
    let (test, kernel) = (test.as_bytes(), kernel.as_bytes());
    if test.len() != PREFIX.len() + kernel.len() {
        return false;
    }
    let mut i = 0;
    while i < test.len() {
        let expected = if i < PREFIX.len() {
            PREFIX[i]
        } else if kernel[i - PREFIX.len()] == b'.' || kernel[i - PREFIX.len()] == b'-' {
            b'_'
        } else {
            kernel[i - PREFIX.len()]
        };
        if test[i] != expected {
            return false;
        }
        i += 1;
    }
    true
}

fn unavailable(reason: String) -> Option<Guest> {
    if vm::in_ci() {
        panic!("guest VM test cannot run under CI: {reason}");
    }
    eprintln!("SKIPPED (not under CI): {reason}");
    None
}

/// What a guest test needs, checked up front.
pub struct Guest {
    pub kernel: String,
    pub bin_dir: PathBuf,
}

/// The guest for `kernel`, or None (skip) outside CI when something is missing.
pub fn guest(kernel: &str) -> Option<Guest> {
    let kernel = vm::kernel_or_skip(kernel)?;
    let bin_dir = std::env::var_os("GUARD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::paths::target_dir().join("release"));
    for binary in ["guard", "guard-stress"] {
        if !bin_dir.join(binary).is_file() {
            return unavailable(format!(
                "{} is missing: run `cargo build --release -p guard -p guard-tests --bins` \
                 (cargo xtask test does)",
                bin_dir.join(binary).display()
            ));
        }
    }
    Some(Guest { kernel, bin_dir })
}

/// The guest's memory for a kernel: 128 MiB, except Debian 6.1. Its 128 MiB guest starts the
/// agent with about 36 MiB of MemAvailable: the limits' waves drew the global OOM killer
/// beside the memcg kills there (2026-12-03), and the probe suites' deliberate global OOM
/// (a 400 MiB allocation outside every container) once ended in "System is deadlocked on
/// memory" (2026-12-05, 1 run in many): after the victim, what was left (the initramfs, the
/// results in tmpfs, the agent at -1000) was unkillable. 256 MiB gives it room.
pub fn memory_mib(kernel: &str) -> u32 {
    if kernel == "6.1" { 256 } else { 128 }
}

impl Guest {
    /// Runs a shell script in a guest of [`memory_mib`] with `guard` and `guard-stress` in
    /// /bin; the guest must complete (a VM death or a timeout fails the test with the console
    /// tail).
    pub fn run(&self, label: &str, script: &str) -> Completed {
        let config = VmConfig::shell(&self.kernel, script)
            .memory_mib(memory_mib(&self.kernel))
            .binary(self.bin_dir.join("guard"))
            .binary(self.bin_dir.join("guard-stress"))
            .timeout(Duration::from_secs(600))
            .label(format!("{label}-{}", self.kernel));
        let outcome = vm::run(&config).expect("the VM harness itself failed");
        eprintln!(
            "{label}-{}: boot {:?}, scenario {:?}, wall {:?}",
            self.kernel, outcome.boot_time, outcome.scenario_time, outcome.wall_time
        );
        match &outcome.result {
            VmResult::Completed(done) => done.clone(),
            _ => panic!(
                "the {} guest did not complete {label}:\n{}",
                self.kernel,
                outcome.console_tail()
            ),
        }
    }
}

/// A scenario's JSON output file, parsed.
pub fn json_file(done: &Completed, name: &str) -> serde_json::Value {
    let text = done.file_str(name).unwrap_or_else(|| {
        panic!(
            "the guest left no /results/{name}\nstdout:\n{}\nstderr:\n{}",
            done.stdout_str(),
            done.stderr_str()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("/results/{name}: {error}\n{text}"))
}

/// A JSON-lines file the guest left, parsed (empty when absent).
pub fn json_lines(done: &Completed, name: &str) -> Vec<serde_json::Value> {
    done.file_str(name)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{name}: {error}: {line}"))
        })
        .collect()
}

/// Writes the forensic log the guest left under `/results/<name>/` into a fresh host folder
/// (labelled with `kernel`) and returns it.
pub fn unpack_log(done: &Completed, name: &str, kernel: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "guard-guest-{name}-{kernel}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("{name}/");
    for (path, bytes) in &done.files {
        if let Some(file) = path.strip_prefix(&prefix) {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
    }
    assert!(
        dir.join("guard-000000.jsonl").is_file(),
        "no log in {:?}",
        done.files.keys()
    );
    dir
}

/// Asserts that the independent Python verifier (`tests/verify_log.py`) accepts the log in
/// `dir`, showing its output when it does not.
pub fn assert_log_verifies(dir: &Path) {
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/verify_log.py");
    let verdict = std::process::Command::new("python3")
        .arg(verifier)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        verdict.status.success(),
        "the guest's log in {} must verify: {}{}",
        dir.display(),
        String::from_utf8_lossy(&verdict.stdout),
        String::from_utf8_lossy(&verdict.stderr)
    );
}

/// The probe suites' shared boot (`guest/fork_denied.rs`, `guest/oom_victim.rs`,
/// `guest/tier0.rs`): one guest boot per kernel runs every scenario (boots are the slow part
/// under TCG); each test asserts on its own scenario's results.
pub mod probes {
    use std::sync::OnceLock;

    use serde_json::Value;
    use xtask::vm::Completed;

    use super::{KERNELS, guest, json_lines};

    /// Each scenario writes `/results/<name>.out`: the workload's tally line (if it lived to print
    /// it), then `guard exec --json`'s report.
    const SCENARIOS: &str = r#"
watch() { name=$1; shift; guard exec --cgroup /sys/fs/cgroup/$name --json --events /results/$name.events "$@" > /results/$name.out 2> /results/$name.err; }
watch pids --pids-max 64 --log /results/pids-log -- guard-stress hold 200
watch pids-unlimited -- guard-stress hold 200
watch memory --memory-max 16777216 -- guard-stress alloc 100
watch memory-unprobed --memory-max 16777216 --max-tier 0 -- guard-stress alloc 100
watch pids-tier0 --pids-max 64 --max-tier 0 -- guard-stress hold 200
# The workload moves itself into a grandchild with limits of its own (its shell first leaves
# for a sibling: a cgroup with processes cannot pass controllers on), is denied forks there and
# is OOM-killed there: all of it the container's. Where guard has probes it adopts the new
# sub-cgroups through inotify; the workload waits until guard (its parent) watches a/b, seen in
# guard's inotify fdinfo, so the events are named deterministically (the first microseconds of
# a sub-cgroup are attributed but may be unnamed, as docs/ARCHITECTURE.md says).
watch nested --pids-max 400 --memory-max 100663296 -- sh -c 'd=/sys/fs/cgroup/nested; mkdir $d/init && echo $$ > $d/init/cgroup.procs && echo "+memory +pids" > $d/cgroup.subtree_control && mkdir $d/a && echo "+memory +pids" > $d/a/cgroup.subtree_control && mkdir $d/a/b && echo 16 > $d/a/b/pids.max && echo 16777216 > $d/a/b/memory.max || exit 1; ino=$(printf %x $(stat -c %i $d/a/b)); n=0; while [ -d /sys/kernel/tracing/events ] && ! grep -qs "ino:$ino " /proc/$PPID/fdinfo/* && [ $n -lt 600 ]; do n=$((n+1)); sleep 0.1; done; echo "adoption waits: $n" >&2; guard-stress --cgroup $d/a/b hold 40; guard-stress --cgroup $d/a/b alloc 100; echo $$ > /sys/fs/cgroup/cgroup.procs; rmdir $d/a/b $d/a $d/init'
# The workload leaves the container for the root cgroup, then exhausts the guest: a global OOM.
watch outside -- sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs && exec guard-stress alloc 400'
# A sub-cgroup's limit is hit (a memcg kill), then the workload, under a container limit
# larger than the guest, exhausts the guest (a global kill): the container's memory.events
# (oom 1, oom_kill 2) cannot tell the two apart, the kernel log can.
watch mixed --memory-max 1073741824 -- sh -c 'd=/sys/fs/cgroup/mixed; mkdir $d/init && echo $$ > $d/init/cgroup.procs && echo +memory > $d/cgroup.subtree_control && mkdir $d/small && echo 16777216 > $d/small/memory.max || exit 1; guard-stress --cgroup $d/small alloc 100; exec guard-stress alloc 400'
# The memory bomb's kill, then the guest's root logs the same victim as the global OOM killer's
# (with no facility and with facility 0 named, both logged by the kernel at LOG_USER): the
# verdict must still count one memcg kill and no global one.
watch forged --memory-max 16777216 -- sh -c 'guard-stress alloc 100 & p=$!; wait $p; for prio in 3 0; do echo "<$prio>Out of memory: Killed process $p (guard-stress) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0" > /dev/kmsg; done; echo "forged $p" >&2'
echo scenarios: done
"#;

    /// The guest results for `kernel`, booting it once for all tests (None: skipped).
    pub fn results(kernel: &'static str) -> Option<&'static Completed> {
        static RESULTS: [OnceLock<Option<Completed>>; KERNELS.len()] =
            [const { OnceLock::new() }; KERNELS.len()];
        let index = KERNELS.iter().position(|k| *k == kernel).unwrap();
        RESULTS[index]
            .get_or_init(|| {
                let guest = guest(kernel)?;
                let done = guest.run("probes", SCENARIOS);
                assert!(
                    done.stdout_str().contains("scenarios: done"),
                    "{}\n{}",
                    done.stdout_str(),
                    done.stderr_str()
                );
                Some(done)
            })
            .as_ref()
    }

    /// One scenario's results: the tally line, `guard exec --json`'s output, and its events.
    pub struct Scenario {
        pub tally: Option<Value>,
        pub output: Value,
        pub events: Vec<Value>,
    }

    impl Scenario {
        pub fn report(&self) -> &Value {
            &self.output["report"]
        }
        pub fn tally(&self, key: &str) -> u64 {
            self.tally.as_ref().expect("the workload printed its tally")[key]
                .as_u64()
                .unwrap()
        }
        pub fn bpf(&self, key: &str) -> u64 {
            self.report()["counters"]["bpf"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("no bpf.{key} in {}", self.report()))
        }
        pub fn kernel(&self, file: &str, key: &str) -> u64 {
            self.report()["kernel_since_watch"][file][key]
                .as_u64()
                .unwrap_or(0)
        }
        pub fn verdict(&self, limit: &str) -> &str {
            self.report()[limit]["verdict"].as_str().unwrap()
        }
        pub fn events_of(&self, kind: &str) -> Vec<&Value> {
            self.events
                .iter()
                .filter(|event| event["detail"]["kind"] == kind)
                .collect()
        }
    }

    /// Scenario `name`'s results from the guest.
    pub fn scenario(done: &Completed, name: &str) -> Scenario {
        let text = done.file_str(&format!("{name}.out")).unwrap_or_else(|| {
            panic!(
                "no {name}.out; stderr: {}",
                done.file_str(&format!("{name}.err")).unwrap_or_default()
            )
        });
        let (tally, report) = match text.split_once('\n') {
            Some((first, rest)) if first.starts_with("{\"mode\"") => {
                (Some(serde_json::from_str(first).unwrap()), rest)
            }
            _ => (None, text.as_str()),
        };
        let output: Value = serde_json::from_str(report).unwrap_or_else(|error| {
            panic!(
                "{name}: {error}\n{text}\nstderr: {}",
                done.file_str(&format!("{name}.err")).unwrap_or_default()
            )
        });
        Scenario {
            tally,
            output,
            events: json_lines(done, &format!("{name}.events")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_their_test_names_agree() {
        assert!(is_test_name("linux_6_12", "6.12"));
        assert!(is_test_name("linux_lean_guard", "lean-guard"));
        // Two-sided: the compile-time check refuses a name for another kernel.
        assert!(!is_test_name("linux_6_1", "6.12"));
        assert!(!is_test_name("linux_6_12", "6.1"));
        assert!(!is_test_name("linux_6.12", "6.12"));
        assert!(!is_test_name("kernel_6_12", "6.12"));
    }

    fn called(kernel: &str) {
        assert!(KERNELS.contains(&kernel), "{kernel}");
    }

    // The macro itself: `called::linux_6_1`, … run as tests here (unit tests: no VM boots).
    per_kernel!(called);
}

//! Guest tests of the probes (issue: probes and evidence), on the Debian 6.1 and 6.12 guests:
//! a pids.max bomb, a memory bomb in a container, an OOM kill outside every container, and the
//! tier-0 fallback, each asserted on BPF counters reconciled with the kernel's own files, and
//! each shown two-sided (the same workload without the limit or without the probes fails the
//! enforcement assertions).
//!
//! One guest boot per kernel runs every scenario (boots are the slow part under TCG); each
//! test asserts on its own scenario's results.
use std::sync::OnceLock;

use guard_tests::guest::{KERNELS, assert_log_verifies, guest, json_lines, unpack_log};
use serde_json::Value;
use xtask::vm::Completed;

/// Each scenario writes `/results/<name>.out`: the workload's tally line (if it lived to print
/// it), then `guard exec --json`'s report.
const SCENARIOS: &str = r#"
watch() { name=$1; shift; guard exec --cgroup /sys/fs/cgroup/$name --json --events /results/$name.events "$@" > /results/$name.out 2> /results/$name.err; }
watch pids --pids-max 64 --log /results/pids-log -- guard-stress hold 200
watch pids-unlimited -- guard-stress hold 200
watch memory --memory-max 16777216 -- guard-stress alloc 100
watch memory-unprobed --memory-max 16777216 --max-tier 0 -- guard-stress alloc 100
watch pids-tier0 --pids-max 64 --max-tier 0 -- guard-stress hold 200
# The workload leaves the container for the root cgroup, then exhausts the guest: a global OOM.
watch outside -- sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs && exec guard-stress alloc 400'
echo scenarios: done
"#;

/// The guest results for `kernel`, booting it once for all tests (None: skipped).
fn results(kernel: &'static str) -> Option<&'static Completed> {
    static RESULTS: [OnceLock<Option<Completed>>; 2] = [OnceLock::new(), OnceLock::new()];
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

struct Scenario {
    tally: Option<Value>,
    output: Value,
    events: Vec<Value>,
}

impl Scenario {
    fn report(&self) -> &Value {
        &self.output["report"]
    }
    fn tally(&self, key: &str) -> u64 {
        self.tally.as_ref().expect("the workload printed its tally")[key]
            .as_u64()
            .unwrap()
    }
    fn bpf(&self, key: &str) -> u64 {
        self.report()["counters"]["bpf"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no bpf.{key} in {}", self.report()))
    }
    fn kernel(&self, file: &str, key: &str) -> u64 {
        self.report()["kernel_since_watch"][file][key]
            .as_u64()
            .unwrap_or(0)
    }
    fn verdict(&self, limit: &str) -> &str {
        self.report()[limit]["verdict"].as_str().unwrap()
    }
    fn events_of(&self, kind: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|event| event["detail"]["kind"] == kind)
            .collect()
    }
}

fn scenario(done: &Completed, name: &str) -> Scenario {
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

fn pids_bomb_is_denied_and_reconciled(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "pids");
    let denied = bomb.tally("eagain");
    assert!(denied > 0, "{:?}", bomb.tally);
    assert!(bomb.tally("succeeded") < 64, "{:?}", bomb.tally);
    // Probe, kernel and workload agree exactly; the kretprobe names pids.max as the cause.
    assert_eq!(bomb.bpf("fork_denied"), denied);
    assert_eq!(bomb.bpf("fork_denied_pids_max"), denied);
    assert_eq!(bomb.kernel("pids_events", "max"), denied);
    assert_eq!(bomb.bpf("forks"), bomb.tally("succeeded"));
    let events = bomb.events_of("fork_denied");
    assert_eq!(events.len() as u64, denied);
    assert!(
        events
            .iter()
            .all(|e| e["detail"]["cause"] == "pids_max" && e["container"] == "pids")
    );
    assert_eq!(bomb.verdict("pids"), "enforced");

    // The guest's forensic log comes back verifiable by the independent verifier, and holds
    // every denial the counters saw.
    let log = unpack_log(done, "pids-log", kernel);
    assert_log_verifies(&log);
    let logged = std::fs::read_to_string(log.join("guard-000000.jsonl")).unwrap();
    let logged_denials = logged
        .lines()
        .filter(|line| line.contains(r#""kind":"fork_denied""#))
        .count();
    assert_eq!(logged_denials as u64, denied);
    assert!(
        logged
            .lines()
            .any(|line| line.contains(r#""kind":"report""#))
    );

    // Two-sided: without pids.max the same bomb is never denied and nothing is "enforced".
    let unlimited = scenario(done, "pids-unlimited");
    assert_eq!(unlimited.tally("eagain"), 0);
    assert_eq!(unlimited.bpf("fork_denied"), 0);
    assert_ne!(unlimited.verdict("pids"), "enforced");
}

#[test]
fn pids_bomb_is_denied_and_reconciled_6_1() {
    pids_bomb_is_denied_and_reconciled("6.1");
}

#[test]
fn pids_bomb_is_denied_and_reconciled_6_12() {
    pids_bomb_is_denied_and_reconciled("6.12");
}

fn memory_bomb_is_killed_in_its_container(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "memory");
    assert_eq!(
        bomb.output["signal"], 9,
        "the hog must be OOM-killed: {}",
        bomb.output
    );
    let kills = bomb.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", bomb.events);
    let victim = &kills[0];
    assert_eq!(victim["container"], "memory");
    assert_eq!(victim["detail"]["victim_pid"], bomb.output["command_pid"]);
    assert_eq!(victim["detail"]["comm"], "guard-stress");
    assert_eq!(victim["detail"]["outside_containers"], false);
    assert_eq!(bomb.bpf("oom_kills"), 1);
    assert_eq!(bomb.kernel("memory_events", "oom_kill"), 1);
    assert!(
        bomb.kernel("memory_events_local", "oom") >= 1,
        "memcg scope: {}",
        bomb.report()["kernel_since_watch"]
    );
    assert_eq!(bomb.report()["oom"]["memcg_kills"], 1);
    assert_eq!(bomb.report()["oom"]["global_kills"], 0);
    // Memory pressure came first: memcg reclaim events precede the kill.
    let first_reclaim = bomb
        .events_of("reclaim")
        .first()
        .map(|e| e["ktime_ns"].as_u64().unwrap());
    assert!(bomb.bpf("reclaim_runs") > 0);
    assert!(first_reclaim.is_some_and(|t| t < victim["ktime_ns"].as_u64().unwrap()));
    assert_eq!(bomb.verdict("memory"), "enforced");
    assert_eq!(
        bomb.output["global"]["bpf"]["oom_kills"], 0,
        "no global OOM"
    );

    // Two-sided: with the probes off (tier 0) the same kill is seen only in the kernel's file;
    // no victim, no attribution, no BPF counter, so the attribution assertions above fail.
    let unprobed = scenario(done, "memory-unprobed");
    assert_eq!(unprobed.output["signal"], 9);
    assert!(unprobed.report()["counters"]["bpf"].is_null());
    assert!(unprobed.events_of("oom_victim").is_empty());
    assert_eq!(unprobed.kernel("memory_events", "oom_kill"), 1);
}

#[test]
fn memory_bomb_is_killed_in_its_container_6_1() {
    memory_bomb_is_killed_in_its_container("6.1");
}

#[test]
fn memory_bomb_is_killed_in_its_container_6_12() {
    memory_bomb_is_killed_in_its_container("6.12");
}

fn oom_kill_outside_containers_is_global(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let outside = scenario(done, "outside");
    assert_eq!(outside.output["signal"], 9, "{}", outside.output);
    // Not the container's: it left for the root cgroup before allocating.
    assert_eq!(outside.bpf("oom_kills"), 0);
    assert_eq!(
        outside.output["global"]["bpf"]["oom_kills"], 1,
        "{}",
        outside.output
    );
    let kills = outside.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", outside.events);
    assert_eq!(kills[0]["detail"]["outside_containers"], true);
    assert!(kills[0]["container"].is_null());
    assert_eq!(
        kills[0]["detail"]["victim_pid"],
        outside.output["command_pid"]
    );
}

#[test]
fn oom_kill_outside_containers_is_global_6_1() {
    oom_kill_outside_containers_is_global("6.1");
}

#[test]
fn oom_kill_outside_containers_is_global_6_12() {
    oom_kill_outside_containers_is_global("6.12");
}

fn tier_0_still_gives_a_verdict(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "pids-tier0");
    assert_eq!(bomb.report()["tier"], 0);
    assert!(bomb.report()["counters"]["bpf"].is_null());
    assert_eq!(bomb.kernel("pids_events", "max"), bomb.tally("eagain"));
    assert_eq!(bomb.verdict("pids"), "enforced");
    let flags = bomb.report()["flags"].to_string();
    assert!(flags.contains("tier 0"), "{flags}");
    // Live evidence at tier 0 is the kernel's own file, streamed via inotify as it changes.
    let snapshots = bomb.events_of("kernel_file");
    assert!(
        snapshots
            .iter()
            .any(|e| e["detail"]["file"] == "pids.events"
                && e["detail"]["counts"]["max"].as_u64() > Some(0)),
        "{:?}",
        bomb.events
    );
}

#[test]
fn tier_0_still_gives_a_verdict_6_1() {
    tier_0_still_gives_a_verdict("6.1");
}

#[test]
fn tier_0_still_gives_a_verdict_6_12() {
    tier_0_still_gives_a_verdict("6.12");
}

//! Guest tests of tier 1 (the kernel's own live sources, no tracing): on `lean` (libkrunfw's
//! config: no tracepoints, perf with its cgroup filter) it is the kernel's tier; on Debian
//! 6.12 it is forced by `--max-tier 1` beside tier 3 in the same boot. A storm of forks in a
//! container gives exactly that many fork records from perf, in the events, the counters and
//! the forensic log; every OOM kill is an `oom_victim` from the kernel log with its pid, comm
//! and scope, attributed to its container through the task map, and their number equals
//! `memory.events` oom_kill. Two-sided: the same scenarios at tier 0 give no record at all,
//! and on 6.12 tier 3's BPF counts agree with tier 1's.
use std::sync::OnceLock;

use guard_tests::guest::{
    assert_log_verifies, guest,
    probes::{Scenario, scenario},
    unpack_log,
};
use serde_json::Value;
use xtask::vm::Completed;

/// The storm: forks, one at a time, each child exiting at once.
const FORKS: u64 = 500;

/// `tier1_kernels!(f)`: `f` on `lean` (tier 1 is its tier) and on Debian 6.12 (forced).
macro_rules! tier1_kernels {
    ($($function:ident),+ $(,)?) => {
        $(
            mod $function {
                #[test]
                fn linux_lean() {
                    super::$function("lean");
                }
                #[test]
                fn linux_6_12() {
                    super::$function("6.12");
                }
            }
        )+
    };
}

const SCENARIOS: &str = r#"
t() { tier=$1; name=$2; shift 2; guard exec --cgroup /sys/fs/cgroup/$name --max-tier $tier ${SUMMARIES:---summaries off} --json --events /results/$name.events --log /results/$name-log "$@" > /results/$name.out 2> /results/$name.err; }
t 1 storm -- guard-stress fork 500
t 1 storm-parallel -- sh -c 'for i in 1 2 3 4 5; do guard-stress fork 100 > /dev/null & done; wait'
t 1 oom --memory-max 16777216 -- guard-stress alloc 100
t 1 waves --memory-max 16777216 -- sh -c 'for i in 1 2 3; do guard-stress alloc 100; done; exit 0'
t 1 nested --memory-max 100663296 -- sh -c 'd=/sys/fs/cgroup/nested; mkdir $d/init && echo $$ > $d/init/cgroup.procs && echo "+memory" > $d/cgroup.subtree_control && mkdir $d/small && echo 16777216 > $d/small/memory.max || exit 1; guard-stress --cgroup $d/small alloc 100; echo $$ > /sys/fs/cgroup/cgroup.procs; rmdir $d/small $d/init; exit 0'
t 1 pids --pids-max 64 --audit -- guard-stress hold 200
t 1 pids-noaudit --pids-max 64 -- guard-stress hold 200
t 0 storm-tier0 -- guard-stress fork 500
t 0 oom-tier0 --memory-max 16777216 -- guard-stress alloc 100
t 3 storm-tier3 -- guard-stress fork 500
# Last: whether the assignment outlives the call differs between shells.
SUMMARIES=" " t 1 storm-summarized -- guard-stress fork 500
echo scenarios: done
"#;

/// The guest results for `kernel`, booting it once for every test here (None: skipped).
fn results(kernel: &'static str) -> Option<&'static Completed> {
    static LEAN: OnceLock<Option<Completed>> = OnceLock::new();
    static DEBIAN: OnceLock<Option<Completed>> = OnceLock::new();
    let cell = if kernel == "lean" { &LEAN } else { &DEBIAN };
    cell.get_or_init(|| {
        let done = guest(kernel)?.run("tier1", SCENARIOS);
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

/// The log's records of `kind` for `container`, by their payloads: the one place the tests
/// here count records (other records, such as interval summaries, may come between them).
fn records_of(log: &str, kind: &str, container: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["kind"] == kind && record["container"] == container)
        .collect()
}

/// The scenario's forensic log (verified by the independent verifier) as text.
fn log_of(done: &Completed, name: &str, kernel: &str) -> String {
    let dir = unpack_log(done, &format!("{name}-log"), kernel);
    assert_log_verifies(&dir);
    // Every file, in order: the log's byte budget rotates a RAM-backed log at an eighth of it.
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

fn sources(run: &Scenario, key: &str) -> u64 {
    run.report()["counters"]["sources"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no sources.{key} in {}", run.report()))
}

fn a_fork_storm_gives_exactly_its_fork_records(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let storm = scenario(done, "storm");
    assert_eq!(storm.tally("succeeded"), FORKS, "{:?}", storm.tally);
    let report = storm.report();
    assert_eq!(report["tier"], 1, "{report}");
    assert!(report["counters"]["bpf"].is_null(), "{report}");
    assert_eq!(sources(&storm, "forks"), FORKS, "{report}");
    assert_eq!(sources(&storm, "lost"), 0, "{report}");
    // Every child exited, and guard-stress was exec'd in the container.
    assert!(sources(&storm, "exits") >= FORKS, "{report}");
    assert!(sources(&storm, "execs") >= 1, "{report}");
    // Every child's exit statistics reached its container's row through the task map.
    assert!(sources(&storm, "tasks_accounted") >= FORKS, "{report}");
    let forks = storm.events_of("fork");
    assert_eq!(forks.len() as u64, FORKS);
    assert!(
        forks
            .iter()
            .all(|e| e["container"] == "storm" && e["source"] == "perf")
    );
    let log = log_of(done, "storm", kernel);
    assert_eq!(records_of(&log, "fork", "storm").len() as u64, FORKS);
    assert!(
        records_of(&log, "fork", "storm")
            .iter()
            .all(|record| record["payload"]["source"] == "perf")
    );
    let start = log.lines().next().unwrap();
    assert!(start.contains(r#""tier":1"#), "{start}");
    assert!(
        start.contains(r#""sources":["perf","kmsg","taskstats","cgroup_files"]"#),
        "{start}"
    );

    // With the log's default summaries the same storm is a few records, and still every
    // fork counted: its individual records plus the summaries' counts.
    let summarized = scenario(done, "storm-summarized");
    assert_eq!(
        sources(&summarized, "forks"),
        FORKS,
        "{}",
        summarized.report()
    );
    let records = guard_tests::log_records(&unpack_log(done, "storm-summarized-log", kernel));
    assert_eq!(
        guard_tests::logged_count(&records, "fork", Some("storm-summarized")),
        FORKS
    );
    assert!(
        records.len() < (FORKS / 2) as usize,
        "{} records",
        records.len()
    );
    let events = summarized.events.iter();
    assert_eq!(
        guard_tests::logged_count(events, "fork", Some("storm-summarized")),
        FORKS
    );

    // Five storms at once: every fork, the shell's five included, and nothing lost.
    let parallel = scenario(done, "storm-parallel");
    assert_eq!(
        sources(&parallel, "forks"),
        5 * 100 + 5,
        "{}",
        parallel.report()
    );
    assert_eq!(sources(&parallel, "lost"), 0, "{}", parallel.report());

    // Two-sided: at tier 0 the same storm leaves no record and no row.
    let off = scenario(done, "storm-tier0");
    let tier3 = scenario(done, "storm-tier3");
    eprintln!(
        "{kernel}: {FORKS} forks took {} ms at tier 1, {} ms at tier 0, {} ms at tier {}",
        storm.output["elapsed_ms"],
        off.output["elapsed_ms"],
        tier3.output["elapsed_ms"],
        tier3.report()["tier"]
    );
    assert_eq!(off.report()["tier"], 0);
    assert!(
        off.report()["counters"]["sources"].is_null(),
        "{}",
        off.report()
    );
    assert!(off.events_of("fork").is_empty());
    // On a kernel with tracepoints, tier 3's BPF counters count the same storm alike.
    if kernel == "6.12" {
        assert_eq!(tier3.report()["tier"], 3, "{}", tier3.report());
        assert_eq!(tier3.bpf("forks"), FORKS);
        assert_eq!(tier3.events_of("fork").len() as u64, FORKS);
        assert!(tier3.events_of("fork").iter().all(|e| e["source"] == "bpf"));
    } else {
        assert_eq!(tier3.report()["tier"], 1, "lean caps itself at 1");
    }
}

tier1_kernels!(a_fork_storm_gives_exactly_its_fork_records);

/// Every kill of `run` is an `oom_victim` from the kernel log, the container's, with pid,
/// comm and scope; as many as memory.events oom_kill and the sources' count.
fn kills_attributed(run: &Scenario, container: &str, scope: &str) -> Vec<u64> {
    let kills = run.events_of("oom_victim");
    let kernel_kills = run.kernel("memory_events", "oom_kill");
    assert!(kernel_kills > 0, "{}", run.report());
    assert_eq!(kills.len() as u64, kernel_kills, "{:?}", run.events);
    assert_eq!(sources(run, "oom_kills"), kernel_kills, "{}", run.report());
    assert_eq!(run.report()["oom"]["source_kills"], kernel_kills);
    for kill in &kills {
        assert_eq!(kill["container"], container, "{kill}");
        assert_eq!(kill["source"], "kmsg", "{kill}");
        assert_eq!(kill["detail"]["comm"], "guard-stress", "{kill}");
        assert_eq!(kill["detail"]["scope"], scope, "{kill}");
        assert_eq!(kill["detail"]["outside_containers"], false, "{kill}");
    }
    kills
        .iter()
        .map(|kill| kill["detail"]["victim_pid"].as_u64().unwrap())
        .collect()
}

fn every_oom_kill_is_attributed_with_pid_and_comm(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let oom = scenario(done, "oom");
    assert_eq!(oom.output["signal"], 9, "{}", oom.output);
    let pids = kills_attributed(&oom, "oom", "memcg");
    assert_eq!(pids, [oom.output["command_pid"].as_u64().unwrap()]);
    assert_eq!(oom.verdict("memory"), "enforced", "{}", oom.report());
    let log = log_of(done, "oom", kernel);
    let logged = records_of(&log, "oom_victim", "oom");
    assert_eq!(logged.len(), 1, "{log}");
    assert_eq!(logged[0]["payload"]["source"], "kmsg");

    // Three kills in a row, each a process the shell forked after the watch (the task map
    // knows it from its fork record).
    let waves = scenario(done, "waves");
    let pids = kills_attributed(&waves, "waves", "memcg");
    assert_eq!(pids.len(), 3, "{:?}", waves.events);
    assert_eq!(waves.verdict("memory"), "enforced", "{}", waves.report());

    // A kill in a sub-cgroup with its own limit is the container's.
    let nested = scenario(done, "nested");
    kills_attributed(&nested, "nested", "memcg");

    // Two-sided: at tier 0 the kernel log is not read, no victim is named.
    let off = scenario(done, "oom-tier0");
    assert_eq!(off.kernel("memory_events", "oom_kill"), 1);
    assert!(off.events_of("oom_victim").is_empty(), "{:?}", off.events);
    assert!(off.report()["oom"]["source_kills"].is_null());
}

tier1_kernels!(every_oom_kill_is_attributed_with_pid_and_comm);

/// With audit on, each denied fork is a `fork_denied` record of the container and their number
/// is `pids.events max`; two-sided: without audit the same bomb has the count alone.
fn each_denied_fork_is_a_record_where_audit_is_on(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "pids");
    let denied = bomb.tally("eagain");
    assert!(denied > 0, "{:?}", bomb.tally);
    let report = bomb.report();
    assert_eq!(bomb.kernel("pids_events", "max"), denied, "{report}");
    assert_eq!(sources(&bomb, "fork_denied"), denied, "{report}");
    let events = bomb.events_of("fork_denied");
    assert_eq!(events.len() as u64, denied, "{:?}", bomb.events);
    assert!(
        events
            .iter()
            .all(|e| e["container"] == "pids" && e["source"] == "audit")
    );
    assert_eq!(bomb.verdict("pids"), "enforced", "{report}");
    let start = log_of(done, "pids", kernel);
    assert!(
        start
            .lines()
            .next()
            .unwrap()
            .contains(r#""sources":["perf","kmsg","audit","taskstats","cgroup_files"]"#)
    );
    // Two-sided: without audit, no record and no count but the kernel's.
    let plain = scenario(done, "pids-noaudit");
    assert!(plain.events_of("fork_denied").is_empty());
    assert!(plain.report()["counters"]["sources"]["fork_denied"].is_null());
    assert_eq!(plain.verdict("pids"), "enforced");
}

tier1_kernels!(each_denied_fork_is_a_record_where_audit_is_on);

/// Memory pressure from delay accounting: the OOM waves' tasks (the shell and its three
/// `guard-stress alloc`, each reclaiming at memory.max until killed) exit with their
/// direct-reclaim delays, summed in the container's row. Two-sided: at tier 0 there is no row.
fn exited_tasks_bring_their_reclaim_delays(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let waves = scenario(done, "waves");
    let report = waves.report();
    eprintln!("{kernel}: waves: {}", report["counters"]["sources"]);
    assert!(waves.kernel("memory_events", "oom_kill") >= 3, "{report}");
    assert!(sources(&waves, "tasks_accounted") >= 4, "{report}");
    assert!(sources(&waves, "reclaim_delays") > 0, "{report}");
    assert!(sources(&waves, "reclaim_delay_ns") > 0, "{report}");
    let start = log_of(done, "waves", kernel);
    assert!(
        start.lines().next().unwrap().contains(r#""taskstats""#),
        "{start}"
    );
    let plain = scenario(done, "oom-tier0");
    assert!(plain.report()["counters"]["sources"].is_null());
}

tier1_kernels!(exited_tasks_bring_their_reclaim_delays);

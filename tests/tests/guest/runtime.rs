//! Guest tests of the container runtime (`guard run`, libcontainer) on the 6.1 and 6.12 guest
//! kernels: where a container's cgroup is, what limits it sees from inside, the agent's and
//! the container's OOM scores, and that containers leave no cgroup behind.
//!
//! Requirements as in `vm.rs` (kernels, QEMU, busybox; never skipped under CI), plus the
//! `guard` binary: `$GUARD_BIN_DIR/guard` (build it with `cargo build --release -p guard`),
//! else `guard` next to `guard-stress` in cargo's target dir. Each test boots one guest per
//! kernel (~6–10 s of TCG each) and puts all of its checks in that boot.
//!
//! The container rootfs is made in the guest: busybox plus applet links in /tmp/rootfs. The
//! scenario synchronises with containers through files, never fixed sleeps: a container
//! announces itself on stdout, then polls for a `/go-<id>` file that the scenario creates once
//! it has looked at the container from outside.
//!
//! Every `guard run` here passes `--no-budget`: these tests prove the runtime (paths, limits
//! read back, scores, isolation) with the limits they ask for, in guests whose copies of /lib
//! leave too little for a guest budget (on 6.1, 31 MiB of MemAvailable against 31 MiB of
//! reserves: `guard run` refuses with "the guest is too small for a budget"). The budget is
//! proven by `tenants.rs`.

use guard_tests::{
    guest::{assert_log_verifies, unpack_log},
    per_kernel,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;
use xtask::vm::{self, Completed, VmConfig, VmResult};

/// Skips (None) outside CI when something is missing; fails under CI.
pub(crate) fn requirements(kernel: &str) -> Option<PathBuf> {
    let problem = match vm::resolve_kernel(kernel) {
        Err(e) => Some(format!("{e:#}")),
        Ok(_) => match xtask::vm::image::find_busybox() {
            Err(e) => Some(format!("{e:#}")),
            Ok(_) => {
                let qemu = std::env::var("GUARD_QEMU").unwrap_or("qemu-system-x86_64".into());
                if std::process::Command::new(&qemu)
                    .arg("--version")
                    .output()
                    .is_err()
                {
                    Some(format!("{qemu} is not installed; run `cargo xtask setup`"))
                } else {
                    None
                }
            }
        },
    };
    let problem = problem.or_else(|| {
        guard_binary().is_none().then(|| {
            "no guard binary: build it (`cargo build --release -p guard`) and set GUARD_BIN_DIR \
             to its folder"
                .to_string()
        })
    });
    match problem {
        None => guard_binary(),
        Some(reason) if vm::in_ci() => panic!("guest runtime test cannot run under CI: {reason}"),
        Some(reason) => {
            eprintln!("SKIPPED (not CI): {reason}");
            None
        }
    }
}

fn guard_binary() -> Option<PathBuf> {
    let dir = match std::env::var_os("GUARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_BIN_EXE_guard-stress"))
            .parent()?
            .to_path_buf(),
    };
    let guard = dir.join("guard");
    guard.is_file().then_some(guard)
}

/// Shell prelude: a busybox rootfs, and helpers to run a guarded container in the background
/// and to wait for files.
pub(crate) const PRELUDE: &str = r#"
set -u
mkdir -p /tmp/rootfs/bin /tmp/rootfs/proc /tmp/rootfs/sys /tmp/rootfs/dev
cp /bin/busybox /tmp/rootfs/bin/busybox
for applet in sh cat echo sleep ls test true; do ln -s busybox /tmp/rootfs/bin/$applet; done
# wait_for FILE: poll (bounded: 120 s) until FILE exists and is not empty.
wait_for() {
    n=0
    while [ ! -s "$1" ]; do
        n=$((n + 1)); [ $n -gt 2400 ] && { echo "timed out waiting for $1" >&2; return 1; }
        sleep 0.05
    done
}
# The container body: report what it sees from inside, then wait for /go-$ID.
body='echo "inside cgroup=$(cat /proc/self/cgroup) memory.max=$(cat /sys/fs/cgroup/memory.max) pids.max=$(cat /sys/fs/cgroup/pids.max) swap.max=$(cat /sys/fs/cgroup/memory.swap.max) score=$(cat /proc/self/oom_score_adj)"
if echo 1 > /sys/fs/cgroup/pids.max 2>/dev/null; then echo cgroupfs=rw; else echo cgroupfs=ro; fi
while [ ! -e /go-$ID ]; do sleep 0.05; done'
# start ID [guard run options…]: runs container ID in the background; its stdout (the
# container's output and the human report) goes to /results/ID.out, stderr to ID.err, the
# JSON report to ID.json; waits until the container has started (pid file written), sampling
# the agent's oom_score_adj all the while into /results/ID.agent-scores.
start() {
    id=$1; shift
    guard run --no-budget --id "$id" --rootfs /tmp/rootfs --pid-file /tmp/$id.pid --report /results/$id.json \
        --env ID=$id "$@" -- sh -c "$body" > /results/$id.out 2> /results/$id.err &
    agent=$!
    echo $agent > /tmp/$id.guard
    n=0
    while [ ! -s /tmp/$id.pid ]; do
        cat /proc/$agent/oom_score_adj >> /results/$id.agent-scores 2>/dev/null
        n=$((n + 1)); [ $n -gt 100000 ] && { echo "timed out waiting for /tmp/$id.pid" >&2; return 1; }
    done
}
# release ID: lets container ID finish and waits for its guard run.
release() {
    touch /tmp/rootfs/go-$1
    wait "$(cat /tmp/$1.guard)"
    echo "$1 exit=$?"
}
"#;

fn boot(kernel: &str, guard: PathBuf, label: &str, scenario: &str) -> Completed {
    boot_with(kernel, &[guard], label, scenario)
}

fn boot_with(kernel: &str, binaries: &[PathBuf], label: &str, scenario: &str) -> Completed {
    let script = format!("{PRELUDE}\n{scenario}");
    let config = binaries
        .iter()
        .fold(VmConfig::shell(kernel, &script), |config, binary| {
            config.binary(binary)
        })
        .timeout(Duration::from_secs(300))
        .label(format!("{label}-{kernel}"));
    let outcome = vm::run(&config).expect("the harness itself failed");
    eprintln!(
        "{label}-{kernel}: boot {:?} | scenario {:?} | wall {:?}",
        outcome.boot_time, outcome.scenario_time, outcome.wall_time
    );
    match &outcome.result {
        VmResult::Completed(done) => {
            let done = done.clone();
            assert_eq!(
                done.exit_code,
                0,
                "scenario failed in the {kernel} guest\nstdout:\n{}\nstderr:\n{}\nfiles: {:?}",
                done.stdout_str(),
                done.stderr_str(),
                done.files
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect::<BTreeMap<_, _>>()
            );
            done
        }
        other => panic!(
            "{label}-{kernel}: guest did not complete: {other}\n(run folder {})",
            outcome.run_dir.display()
        ),
    }
}

/// `key=value` fields of the first line of `text` that starts with `prefix`.
fn fields(text: &str, prefix: &str) -> BTreeMap<String, String> {
    let line = text
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"));
    line[prefix.len()..]
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn file(done: &Completed, name: &str) -> String {
    done.file_str(name).unwrap_or_else(|| {
        panic!(
            "no {name} from the guest; files: {:?}\nstdout:\n{}\nstderr:\n{}",
            done.files.keys().collect::<Vec<_>>(),
            done.stdout_str(),
            done.stderr_str()
        )
    })
}

/// The check the acceptance criterion names: the container's cgroup, seen from the guest,
/// ends in `/guard/<id>`.
fn cgroup_is_guard_id(proc_cgroup: &str, id: &str) -> bool {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .is_some_and(|path| path.trim().ends_with(&format!("/guard/{id}")))
}

fn number(map: &BTreeMap<String, String>, key: &str) -> u64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {map:?}"))
}

/// Cgroup path and inside view with default limits; the same check fails without the explicit
/// cgroupsPath; the agent keeps -1000 and the container has the configured score.
fn cgroup_limits_and_scores(kernel: &str) {
    let Some(guard) = requirements(kernel) else {
        return;
    };
    let done = boot(
        kernel,
        guard,
        "runtime-cgroup",
        r#"
        echo "vm memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo) swap=$(test -e /proc/swaps && echo yes || echo no)"
        echo "agent-before score=$(cat /proc/self/oom_score_adj)"
        # Default limits, a non-default container score to show the configured value is used.
        start c1 --oom-score-adj 250
        pid=$(cat /tmp/c1.pid)
        cat /proc/$pid/cgroup > /results/c1.cgroup
        echo "agent guard_run=$(cat /proc/$(cat /tmp/c1.guard)/oom_score_adj) shell=$(cat /proc/self/oom_score_adj)"
        echo "container init=$(cat /proc/$pid/oom_score_adj)"
        release c1
        # The same container without cgroupsPath: youki picks its own cgroup name.
        start c2 --omit-cgroups-path
        cat /proc/$(cat /tmp/c2.pid)/cgroup > /results/c2.cgroup
        release c2
        # From an OCI bundle (relative rootfs, no cgroup namespace or cgroupfs of its own: the
        # guard adds both).
        mkdir -p /tmp/bundle && ln -s /tmp/rootfs /tmp/bundle/rootfs
        cat > /tmp/bundle/config.json <<'JSON'
{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
 "process": {"args": ["sh", "-c", "echo \"bundle cgroup=$(cat /proc/self/cgroup) pids.max=$(cat /sys/fs/cgroup/pids.max) score=$(cat /proc/self/oom_score_adj)\""],
             "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}
JSON
        guard run --no-budget --id bun --bundle /tmp/bundle --pids 77 --quiet --log /results/run-log > /results/bun.out 2> /results/bun.err
        echo "bundle exit=$?"
        echo "left=$(ls /sys/fs/cgroup/guard 2>/dev/null | grep -c -v '\.' ) end"
        "#,
    );
    let out = done.stdout_str();
    let c1_out = file(&done, "c1.out");
    let c1_cgroup = file(&done, "c1.cgroup");
    assert!(
        cgroup_is_guard_id(&c1_cgroup, "c1"),
        "c1's cgroup from the guest: {c1_cgroup:?}"
    );
    let inside = fields(&c1_out, "inside ");
    // Inside the cgroup namespace the container is at the root of its own view.
    assert_eq!(inside["cgroup"], "0::/", "{c1_out}");
    let vm_bytes = number(&fields(&out, "vm "), "memtotal_kb") * 1024;
    let memory_max = number(&inside, "memory.max");
    assert!(
        memory_max < vm_bytes,
        "memory.max {memory_max} not below the VM's {vm_bytes}"
    );
    assert_eq!(number(&inside, "pids.max"), 512, "{c1_out}");
    // No swap for the container: memory.swap.max 0, or a kernel without swap at all
    // (CONFIG_SWAP off, as in libkrunfw's: no /proc/swaps, no memory.swap.max).
    if fields(&out, "vm ")["swap"] == "yes" {
        assert_eq!(number(&inside, "swap.max"), 0, "{c1_out}");
    } else {
        assert_eq!(inside["swap.max"], "", "{c1_out}");
    }
    assert!(c1_out.contains("cgroupfs=ro"), "{c1_out}");
    // Scores: the agent (guard run, and the shell standing for the agent) stays at -1000
    // after the container started; the container's processes have the configured 250.
    assert_eq!(fields(&out, "agent-before ")["score"], "-1000", "{out}");
    let agent = fields(&out, "agent ");
    assert_eq!(agent["guard_run"], "-1000", "{out}");
    assert_eq!(agent["shell"], "-1000", "{out}");
    assert_eq!(fields(&out, "container ")["init"], "250", "{out}");
    assert_eq!(inside["score"], "250", "{c1_out}");
    // Sampled without pause while c1 (score 250) was created: the agent never left -1000.
    let samples = file(&done, "c1.agent-scores");
    let scores: BTreeSet<&str> = samples.lines().collect();
    eprintln!(
        "{kernel}: {} samples of the agent's score during create: {scores:?}",
        samples.lines().count()
    );
    assert_eq!(
        scores,
        BTreeSet::from(["-1000"]),
        "the agent's score during create"
    );
    let report = file(&done, "c1.json");
    assert!(
        report.contains(r#""agent_oom_score_adj_after_start": -1000"#),
        "{report}"
    );
    assert!(report.contains(r#""kind": "limits_applied""#), "{report}");
    assert!(out.contains("c1 exit=0"), "{out}");

    // Two-sided: without cgroupsPath the same check fails (the cgroup is youki's choice).
    let c2_cgroup = file(&done, "c2.cgroup");
    assert!(
        !cgroup_is_guard_id(&c2_cgroup, "c2"),
        "without cgroupsPath c2 still landed in /guard/c2: {c2_cgroup:?}"
    );
    assert!(c2_cgroup.contains("c2"), "{c2_cgroup}");
    assert!(out.contains("c2 exit=0"), "{out}");
    // The bundle's container: same secure defaults.
    assert!(
        out.contains("bundle exit=0"),
        "{out}\n{}",
        file(&done, "bun.err")
    );
    let bundle = fields(&file(&done, "bun.out"), "bundle ");
    assert_eq!(bundle["cgroup"], "0::/", "{out}");
    assert_eq!(bundle["pids.max"], "77", "{out}");
    assert_eq!(bundle["score"], "0", "{out}");
    assert!(out.contains("bundle exit=0"), "{out}");
    assert!(out.contains("left=0 end"), "{out}");
    // The bundle's run wrote the forensic log: it verifies independently, and its one
    // limits_applied record holds the kernel's read-back of the requested pids.max.
    let bun_err = file(&done, "bun.err");
    assert!(bun_err.contains("guard: forensic log in "), "{bun_err}");
    let log = unpack_log(&done, "run-log", kernel);
    assert_log_verifies(&log);
    let records = log_records(&log);
    let applied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "limits_applied")
        .collect();
    assert_eq!(applied.len(), 1, "{records:#?}");
    assert_eq!(applied[0]["container"], "bun", "{:#}", applied[0]);
    assert_eq!(
        applied[0]["payload"]["read_back"]["pids_max"],
        serde_json::json!({"value": 77}),
        "{:#}",
        applied[0]
    );
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    let position = |kind: &str| kinds.iter().position(|k| *k == kind);
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"stop"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "report").count(),
        1,
        "{kinds:?}"
    );
    assert!(position("limits_applied") < position("report"), "{kinds:?}");
    let _ = std::fs::remove_dir_all(&log);
}

/// Every record of the log in `dir`, in order (files guard-NNNNNN.jsonl by number).
pub(crate) fn log_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("guard-") && name.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

per_kernel!(cgroup_limits_and_scores);

/// Start, stop (the runtime's kill), restart under the same id, normal exit: no cgroup and
/// no runtime state left. Two concurrent containers: independent cgroups and limits.
fn lifecycle_and_concurrency(kernel: &str) {
    let Some(guard) = requirements(kernel) else {
        return;
    };
    let done = boot(
        kernel,
        guard,
        "runtime-lifecycle",
        r#"
        start r1 --memory 24M --pids 40
        test -d /sys/fs/cgroup/guard/r1 && echo "r1 first=present"
        # Stop: SIGTERM to the agent (guard run), which kills the container through the runtime.
        kill -TERM "$(cat /tmp/r1.guard)"
        wait "$(cat /tmp/r1.guard)"; echo "r1 stopped=$?"
        echo "after-stop cgroup=$(test -e /sys/fs/cgroup/guard/r1 && echo left || echo gone) state=$(ls /run/guard/containers | wc -l)"
        mv /results/r1.json /results/r1-first.json
        rm -f /tmp/r1.pid
        # Restarted, with a command exec'd into it (libcontainer's tenant path rewrites the
        # caller's score too).
        start r1 --memory 24M --pids 40 --exec 'echo "exec cgroup=$(cat /proc/self/cgroup) score=$(cat /proc/self/oom_score_adj) pids.max=$(cat /sys/fs/cgroup/pids.max)"'
        echo "r1 again=$(cat /sys/fs/cgroup/guard/r1/pids.max)"
        release r1
        echo "after-restart cgroup=$(test -e /sys/fs/cgroup/guard/r1 && echo left || echo gone) state=$(ls /run/guard/containers | wc -l)"

        # a's limits come from a config file, pids overridden by the flag (the flag wins).
        printf 'memory = "24M"\npids = 99\n' > /tmp/a.toml
        start a --config /tmp/a.toml --pids 32
        start b --memory 40M --pids 100
        for id in a b; do
            echo "outside-$id memory.max=$(cat /sys/fs/cgroup/guard/$id/memory.max) pids.max=$(cat /sys/fs/cgroup/guard/$id/pids.max) cgroup=$(cut -d: -f3 /proc/$(cat /tmp/$id.pid)/cgroup)"
        done
        release a
        echo "b-still memory.max=$(cat /sys/fs/cgroup/guard/b/memory.max) a=$(test -e /sys/fs/cgroup/guard/a && echo left || echo gone)"
        release b
        echo "final children=$(find /sys/fs/cgroup/guard -mindepth 1 -type d | wc -l) state=$(ls /run/guard/containers | wc -l) bundles=$(ls /run/guard/bundles | wc -l)"
        "#,
    );
    let out = done.stdout_str();
    assert!(out.contains("r1 first=present"), "{out}");
    // Stopped: guard run killed it (SIGKILL), reports the signal (128+9) and cleans up.
    assert!(out.contains("r1 stopped=137"), "{out}");
    assert!(out.contains("after-stop cgroup=gone state=0"), "{out}");
    let first = file(&done, "r1-first.json");
    assert!(first.contains(r#""exit_signal": 9"#), "{first}");
    assert!(out.contains("r1 again=40"), "{out}");
    // The exec'd process: inside the container's cgroup namespace and limits, with the
    // container's score; the agent is still at -1000 afterwards.
    let exec = fields(&file(&done, "r1.out"), "exec ");
    assert_eq!(exec["cgroup"], "0::/");
    assert_eq!(exec["score"], "0");
    assert_eq!(exec["pids.max"], "40");
    let second = file(&done, "r1.json");
    assert!(second.contains(r#""exit_code": 0"#), "{second}");
    assert!(
        second.contains(r#""agent_oom_score_adj_after_execs": -1000"#),
        "{second}"
    );
    assert!(out.contains("r1 exit=0"), "{out}");
    assert!(out.contains("after-restart cgroup=gone state=0"), "{out}");

    // a: memory.max from its config file, pids.max from the flag over the file's 99.
    let a = fields(&out, "outside-a ");
    let b = fields(&out, "outside-b ");
    assert_eq!(number(&a, "memory.max"), 24 << 20, "{out}");
    assert_eq!(number(&b, "memory.max"), 40 << 20, "{out}");
    assert_eq!(number(&a, "pids.max"), 32, "{out}");
    assert_eq!(number(&b, "pids.max"), 100, "{out}");
    assert_eq!(a["cgroup"], "/guard/a", "{out}");
    assert_eq!(b["cgroup"], "/guard/b", "{out}");
    // Each sees only its own limits from inside.
    let inside_a = fields(&file(&done, "a.out"), "inside ");
    let inside_b = fields(&file(&done, "b.out"), "inside ");
    assert_eq!(number(&inside_a, "pids.max"), 32);
    assert_eq!(number(&inside_b, "pids.max"), 100);
    // Removing a leaves b's cgroup and limits untouched.
    assert!(
        out.contains(&format!("b-still memory.max={} a=gone", 40 << 20)),
        "{out}"
    );
    assert!(
        out.contains("a exit=0") && out.contains("b exit=0"),
        "{out}"
    );
    assert!(out.contains("final children=0 state=0 bundles=0"), "{out}");
    // Distinct cgroup ids in the limits_applied records.
    let id_of = |name: &str| {
        let report = file(&done, name);
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(r#""cgroup_id": "#))
            .map(|v| v.trim_end_matches(',').to_string())
            .unwrap_or_else(|| panic!("no cgroup_id in {name}: {report}"))
    };
    assert_ne!(id_of("a.json"), id_of("b.json"));
}

per_kernel!(lifecycle_and_concurrency);

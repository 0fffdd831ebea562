//! The log stream from real guests over real vsock, as the field carries it: the guest's
//! `guard --stream vsock:PORT --stream-key FILE` connects to CID 2, rust-vmm's
//! `vhost-device-vsock` maps the connection onto the host Unix socket `<uds>_PORT` of that VM
//! (as Firecracker and libkrun do), and a collector following a directory of VMs (each its own
//! subdirectory, socket and key, as `guard collect --vm-dir` does) checks each guest's proof
//! and chain as records arrive. The host acts on the guest
//! (kills QEMU, panics the guest kernel, stalls the link) when its own copy shows the moment
//! has come, never after a fixed sleep.
//!
//! Two-sided: each test asserts a verdict that a different outcome would not give (a death
//! read as `complete`, a rewrite accepted, a copy that differs from the guest's bytes).
mod custody;
mod host;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use guard::forensic;
use guard::stream::StreamVerdict;
use guard_tests::{
    guest::{assert_log_verifies, facts, guest, json_file},
    vsock_kernels,
};
use serde_json::Value;
use xtask::vm::{VmConfig, VmOutcome, VmResult, Watcher};

use host::{
    CopyWatch, HostEnd, WAVES, boot, files_of, guard_log_verify, guest_files, run, stream_options,
    wave,
};

/// How the host ends the guest mid-wave.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// QEMU killed (SIGKILL): the VM destroyed, as a host does to a misbehaving sandbox.
    Destroyed,
    /// The guest kernel panics (an NMI made a panic), QEMU exits.
    KernelPanic,
}

/// The waves stream to the host; once the host's copy holds the pids bomb's and the memory
/// bomb's wave records and the third wave's first record, the guest dies. The copy must verify
/// up to its last record, say `guest died after seq N`, hold the denials and OOM kills recorded
/// before the death, and miss nothing the collector acknowledged.
fn guest_death(kernel: &str, death: Death) {
    let Some(guest) = guest(kernel) else { return };
    let name = format!("dies-{}", kernel.replace('.', "-"));
    let host = HostEnd::start("death");
    let mut watch = CopyWatch::new(&host.copy(&name));
    let struck = Arc::new(Mutex::new(None::<u64>));
    let seen = struck.clone();
    let config = boot(
        &guest,
        &format!("stream-death-{death:?}"),
        &format!("guard selftest {WAVES} {}", stream_options(&name)),
        &host.vm(&name),
    )
    .watcher(Watcher::new(move |control| {
        if seen.lock().unwrap().is_some() {
            return;
        }
        let records = watch.poll();
        let ready = wave(records, "pids_bomb").is_some()
            && wave(records, "memory_bomb").is_some_and(|(_, after)| after > 0);
        if ready {
            *seen.lock().unwrap() = records.last().map(|r| r.seq);
            match death {
                Death::Destroyed => control.kill(),
                Death::KernelPanic => control.panic_guest().expect("QEMU's monitor takes nmi"),
            }
        }
    }));
    let outcome = run(&config);
    let held_at_death = struck.lock().unwrap().unwrap_or_else(|| {
        let stderr = match &outcome.result {
            VmResult::Completed(done) => done.stderr_str(),
            _ => String::new(),
        };
        panic!(
            "the guest was never struck: {}\nits stderr:\n{stderr}",
            outcome.result
        )
    });
    assert!(
        matches!(outcome.result, VmResult::Died { .. }),
        "the struck guest must be dead, not {}",
        outcome.result
    );
    if let Death::KernelPanic = death {
        assert!(
            outcome.console.contains("Kernel panic"),
            "the guest's kernel must have panicked:\n{}",
            outcome.console_tail()
        );
    }
    let streams = host.streams_until(
        &name,
        |verdict| !matches!(verdict, StreamVerdict::Refused { .. }),
        Duration::from_secs(120),
        &outcome.console_tail(),
    );
    let last = streams.last().unwrap();
    let copy = host.copy(&name);
    let report = forensic::verify(&copy).unwrap();
    assert!(report.is_clean(), "the host's copy must verify: {report:?}");
    let last_seq = report.last_seq.expect("the copy holds records");
    assert_eq!(
        last.verdict,
        Some(StreamVerdict::GuestDied {
            after_seq: Some(last_seq)
        }),
        "{last}"
    );
    // Nothing the collector counted is missing from its files, and everything the host had
    // seen when it struck is still there.
    assert_eq!(last.records, last_seq + 1, "{last}");
    assert!(last_seq >= held_at_death, "{last_seq} < {held_at_death}");
    assert!(
        report.ended_abruptly().is_some(),
        "the copy's session must read as ended abruptly: {report:?}"
    );
    assert_eq!(
        guard_log_verify(&guest, &copy),
        4,
        "guard log verify: verified, ended abruptly"
    );
    assert_log_verifies(&copy);
    // The evidence recorded before the death.
    let mut records = CopyWatch::new(&copy);
    let records = records.poll();
    let (pids, _) = wave(records, "pids_bomb").unwrap();
    let (memory, after) = wave(records, "memory_bomb").unwrap();
    let denied = pids.payload["kernel"]["pids_events"]["max"]
        .as_u64()
        .unwrap_or(0);
    let killed = memory.payload["kernel"]["memory_events"]["oom_kill"]
        .as_u64()
        .unwrap_or(0);
    assert!(denied > 0, "the pids bomb's denials: {}", pids.payload);
    assert!(killed > 0, "the memory bomb's OOM kill: {}", memory.payload);
    if facts(kernel).bpf() {
        assert_eq!(
            pids.payload["bpf"]["fork_denied"].as_u64(),
            Some(denied),
            "the probes' denials match the kernel's"
        );
        assert!(
            records
                .iter()
                .any(|r| r.kind == "fork_denied" && r.seq < pids.seq),
            "the denials' own records arrived"
        );
        assert!(
            records
                .iter()
                .any(|r| r.kind == "oom_victim" && r.seq < memory.seq),
            "the OOM kill's own record arrived"
        );
    }
    assert!(
        after > 0,
        "records of the third wave arrived before the death"
    );
    eprintln!(
        "{kernel} {death:?}: the host holds seq 0..={last_seq} ({} streams), {denied} denials, \
         {killed} OOM kill(s) in the memory bomb; struck at seq {held_at_death}",
        streams.len()
    );
}

fn guest_destroyed_mid_wave(kernel: &str) {
    guest_death(kernel, Death::Destroyed);
}

fn guest_kernel_panics_mid_wave(kernel: &str) {
    guest_death(kernel, Death::KernelPanic);
}

/// Guest root keeps the first K records of its log, writes a new session after them (a freshly
/// computed chain that verifies on its own) and streams again: the collector says `forked at
/// seq K` and keeps the original, byte for byte.
fn rewritten_history_is_a_fork(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    const KEEP: u64 = 3;
    let name = "rewrite";
    let host = HostEnd::start("rewrite");
    let stream = stream_options(name);
    let script = format!(
        r#"set -e
stream="--log /results/log {stream}"
guard exec --cgroup /sys/fs/cgroup/first --pids-max 16 $stream -- guard-stress hold 40 > /results/first.out
mkdir /results/original && cp /results/log/* /results/original/
# The rewrite: the first {KEEP} records kept, the rest replaced by a new session.
rm -f /results/log/guard-000001.jsonl /results/log/guard-00000[2-9].jsonl
head -n {KEEP} /results/log/guard-000000.jsonl > /tmp/kept
cat /tmp/kept > /results/log/guard-000000.jsonl
# The host refuses the rewritten history: the command says so with status 5.
guard exec --cgroup /sys/fs/cgroup/second $stream -- true > /results/second.out || echo $? > /results/second.status
guard log --dir /results/log verify --json > /results/rewritten-verify.json || true
"#
    );
    let outcome = run(&boot(&guest, "stream-rewrite", &script, &host.vm(name)));
    let done = outcome.expect_completed();
    assert_eq!(done.exit_code, 0, "{}", done.stderr_str());
    assert_eq!(
        done.file_str("second.status").unwrap_or_default().trim(),
        "5",
        "the rewriting guest's command exits 5 (its log was not delivered): {}",
        done.stderr_str()
    );
    let rewritten = json_file(done, "rewritten-verify.json");
    assert!(
        matches!(rewritten["verdict"].as_str(), Some("ok" | "ended_abruptly")),
        "the rewritten log verifies on its own: {rewritten}"
    );
    let streams = host.streams_until(
        name,
        |verdict| matches!(verdict, StreamVerdict::Forked { .. }),
        Duration::from_secs(60),
        &done.stderr_str(),
    );
    assert!(
        streams[0].verdict.as_ref().unwrap().is_complete(),
        "the first session arrived complete: {streams:#?}"
    );
    assert_eq!(
        streams.last().unwrap().verdict,
        Some(StreamVerdict::Forked { at_seq: KEEP }),
        "{streams:#?}"
    );
    let original = guest_files(done, "original");
    assert!(!original.is_empty());
    assert_eq!(
        files_of(&host.copy(name)),
        original,
        "the host keeps the original history"
    );
    assert_ne!(
        guest_files(done, "log"),
        original,
        "the guest's log was rewritten"
    );
    assert_log_verifies(&host.copy(name));
}

/// Three guests stream into one collector at once: three complete copies, each the guest's
/// own log byte for byte.
fn three_guests_fan_in(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    let host = HostEnd::start("fan-in");
    let names: Vec<String> = (1..=3)
        .map(|i| format!("fan-{i}-{}", kernel.replace('.', "-")))
        .collect();
    let configs: Vec<VmConfig> = names
        .iter()
        .map(|name| {
            let script = format!(
                "guard exec --cgroup /sys/fs/cgroup/job --pids-max 32 --log /results/log \
                 {} -- guard-stress hold 100 > /results/job.out",
                stream_options(name)
            );
            boot(&guest, &format!("stream-{name}"), &script, &host.vm(name))
        })
        .collect();
    let outcomes: Vec<VmOutcome> = std::thread::scope(|scope| {
        let running: Vec<_> = configs
            .iter()
            .map(|config| scope.spawn(move || run(config)))
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, outcome) in names.iter().zip(&outcomes) {
        let done = outcome.expect_completed();
        assert_eq!(done.exit_code, 0, "{name}: {}", done.stderr_str());
        let streams = host.streams_until(
            name,
            |verdict| !matches!(verdict, StreamVerdict::Refused { .. }),
            Duration::from_secs(60),
            &done.stderr_str(),
        );
        assert!(
            streams
                .last()
                .unwrap()
                .verdict
                .as_ref()
                .unwrap()
                .is_complete(),
            "{name}: {streams:#?}"
        );
        let copy = host.copy(name);
        assert_eq!(files_of(&copy), guest_files(done, "log"), "{name}");
        assert_log_verifies(&copy);
        assert_eq!(guard_log_verify(&guest, &copy), 0, "{name}");
    }
}

/// The link stalls for two waves (the vsock bridge stopped, from the memory bomb's start to the
/// fork+alloc bomb's end): the guard's counters stay exact and the waves proceed, their records
/// written while nothing reaches the host; when the link returns, the stream resumes (on the
/// same connection, or on a new one when a send waited past its timeout) and the host's copy is
/// complete, the guest's log byte for byte.
fn stalled_link_resumes(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    let name = format!("stall-{}", kernel.replace('.', "-"));
    let host = HostEnd::start("stall");
    let mut watch = CopyWatch::new(&host.copy(&name));
    #[derive(Default, Debug)]
    struct Stall {
        stalled_at: Option<usize>,
        resumed_at: Option<usize>,
    }
    let stall = Arc::new(Mutex::new(Stall::default()));
    let seen = stall.clone();
    let config = boot(
        &guest,
        "stream-stall",
        &format!("guard selftest {WAVES} {}", stream_options(&name)),
        &host.vm(&name),
    )
    .watcher(Watcher::new(move |control| {
        let mut stall = seen.lock().unwrap();
        let held = watch.poll().len();
        let console = control.console();
        if stall.stalled_at.is_none() && console.contains("===== wave memory_bomb") {
            control.stall_vsock();
            stall.stalled_at = Some(held);
        } else if stall.stalled_at.is_some()
            && stall.resumed_at.is_none()
            && console.contains("wave fork_alloc_bomb done")
        {
            stall.resumed_at = Some(held);
            control.resume_vsock();
        }
    }));
    let outcome = run(&config);
    let done = outcome.expect_completed();
    assert_eq!(done.exit_code, 0, "{}", done.stderr_str());
    let stall = stall.lock().unwrap();
    let (Some(stalled_at), Some(resumed_at)) = (stall.stalled_at, stall.resumed_at) else {
        panic!("the link was never stalled and resumed: {stall:?}");
    };
    let streams = host.streams_until(
        &name,
        StreamVerdict::is_complete,
        Duration::from_secs(120),
        &done.stderr_str(),
    );
    let copy = host.copy(&name);
    let log = guest_files(done, "log");
    assert_eq!(files_of(&copy), log, "the resumed copy is the guest's log");
    assert_log_verifies(&copy);
    // The memory bomb's records were written while the link was stalled.
    let summary = json_file(done, "waves.json");
    let memory = summary["waves"]
        .as_array()
        .and_then(|waves| waves.iter().find(|w| w["wave"] == "memory_bomb"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        memory["kernel"]["memory_events"]["oom_kill"].as_u64() > Some(0),
        "the memory bomb was OOM-killed during the stall: {memory}"
    );
    if facts(kernel).bpf() {
        for wave in summary["waves"].as_array().unwrap() {
            assert_eq!(
                wave["bpf"]["fork_denied"], wave["kernel"]["pids_events"]["max"],
                "counters exact through the stall: {wave}"
            );
        }
    }
    let records_total: usize = log
        .iter()
        .map(|(_, bytes)| bytes.iter().filter(|&&b| b == b'\n').count())
        .sum();
    eprintln!(
        "{kernel}: stalled at {stalled_at} records held, resumed at {resumed_at}; {} stream(s); \
         {records_total} records complete on the host",
        streams.len()
    );
    assert_eq!(
        stalled_at, resumed_at,
        "nothing arrived while the link was stalled"
    );
    let mut records = CopyWatch::new(&copy);
    let (memory_wave, _) = wave(records.poll(), "memory_bomb").unwrap();
    assert!(
        memory_wave.seq as usize >= resumed_at,
        "the memory bomb's wave record (seq {}) was written during the stall and arrived after it",
        memory_wave.seq
    );
}

vsock_kernels!(
    guest_destroyed_mid_wave,
    guest_kernel_panics_mid_wave,
    rewritten_history_is_a_fork,
    three_guests_fan_in,
    stalled_link_resumes,
);

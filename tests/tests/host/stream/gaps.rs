//! A guest whose log went through an outage (a full disk): its seqs jump once, right before a
//! `gap` record that names exactly the seqs it could not write. The host accepts that jump and
//! the copy completes, byte for byte, through a reconnect and a resend over the held gap; a
//! gap that lies about its range, or a jump with no gap at all, is refused.
use std::time::Duration;

use guard::forensic::{self, GENESIS};
use guard::stream::StreamVerdict;

use super::harness::*;

/// A gap payload naming `first..=last`, all of them `oom_kill` unless `count` says otherwise.
fn gap_payload(first: u64, last: u64, count: u64) -> String {
    format!(
        r#"{{"first_seq":{first},"last_seq":{last},"kinds":{{"oom_kill":{count}}},"error":"No space left on device (os error 28)","since_wall":"2026-12-01T00:00:00.000000000Z","since_mono_ns":1,"retries":2}}"#
    )
}

/// start 0, oom_kill 1..=3, then `tail` as (seq, kind, payload) chained on: the lines.
fn log_lines(tail: &[(u64, &str, String)]) -> Vec<Vec<u8>> {
    let mut prev = GENESIS.to_string();
    let mut lines = Vec::new();
    let head = [
        (0, "start", r#"{"guest":"outage"}"#.to_string()),
        (1, "oom_kill", r#"{"i":1}"#.to_string()),
        (2, "oom_kill", r#"{"i":2}"#.to_string()),
        (3, "oom_kill", r#"{"i":3}"#.to_string()),
    ];
    for (seq, kind, payload) in head.iter().chain(tail) {
        let payload = payload.replace("{prev}", &prev);
        let line = forge(*seq, kind, &payload, &prev);
        prev = head_after(&line);
        lines.push(line);
    }
    lines
}

/// What the independent verifier (`tests/verify_log.py`) says of a log of `lines`.
fn python_says(scratch: &TempDir, name: &str, lines: &[Vec<u8>]) -> String {
    let dir = scratch.0.join(format!("py-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("guard-000000.jsonl"), lines.concat()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/verify_log.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Seqs 4..=6 missing, named by the gap at 7; then an event and the stop.
fn honest() -> Vec<Vec<u8>> {
    log_lines(&[
        (7, "gap", gap_payload(4, 6, 3)),
        (8, "oom_kill", r#"{"i":8}"#.to_string()),
        (9, "stop", r#"{"count":9,"head":"{prev}"}"#.to_string()),
    ])
}

#[test]
fn an_honest_gap_is_accepted_and_the_copy_completes() {
    let scratch = TempDir::new("honest-gap");
    let log = scratch.0.join("guest-log");
    std::fs::create_dir_all(&log).unwrap();
    let lines = honest();
    // The guest's log first as it stood before the outage ended: up to seq 3, no stop.
    let file = log.join("guard-000000.jsonl");
    std::fs::write(&file, lines[..4].concat()).unwrap();
    let report = forensic::verify(&log).unwrap();
    assert!(report.is_clean(), "{report:?}");

    let host = Host::start(&scratch);
    let guest = host.listen("vm-gap", None);
    let stats = ship(&guest, &log, Duration::from_secs(5));
    assert!(!stats.delivered, "no stop yet: {stats:?}");
    assert_eq!(
        host.verdict_of(Some("vm-gap")).verdict,
        Some(StreamVerdict::GuestDied { after_seq: Some(3) })
    );
    // Space returned: the gap and the rest. The sender resumes after seq 3 across the jump.
    std::fs::write(&file, lines.concat()).unwrap();
    let report = forensic::verify(&log).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.gaps, report.missing_records), (1, 3));
    assert!(python_says(&scratch, "honest", &lines).ends_with(": OK\n"));
    let stats = ship(&guest, &log, Duration::from_secs(30));
    assert!(stats.delivered, "{stats:?}");
    assert_eq!(stats.acked_next_seq, 10, "{stats:?}");
    assert_eq!(
        host.verdict_of(Some("vm-gap")).verdict,
        Some(StreamVerdict::Complete { last_seq: 9 })
    );
    let copy = host.collector.guest_dir("vm-gap");
    assert_eq!(files_of(&copy), files_of(&log));
    let held = forensic::verify(&copy).unwrap();
    assert!(held.is_clean() && held.gaps == 1, "{held:?}");
    drop(host);

    // A new collector reads the copy from disk; a guest that sends it all again (as after a
    // head it could not match) is matched line by line across the held gap.
    let host = Host::start(&scratch);
    let guest = host.listen("vm-gap", None);
    let (mut raw, _) = Raw::handshake(&guest.socket, "vm-gap", None);
    for line in &lines {
        raw.send(line).unwrap();
    }
    raw.connection.shutdown();
    let status = host.stream_of("vm-gap");
    assert_eq!(
        status.verdict,
        Some(StreamVerdict::Complete { last_seq: 9 }),
        "{status}"
    );
    assert_eq!(
        files_of(&host.collector.guest_dir("vm-gap")),
        files_of(&log)
    );
}

/// Whether a stream's verdict is the refusal a case expects.
type Refused = fn(&Option<StreamVerdict>) -> bool;

#[test]
fn a_lying_gap_or_a_bare_jump_is_refused() {
    let scratch = TempDir::new("lying-gap");
    let host = Host::start(&scratch);
    let cases: [(&str, Vec<Vec<u8>>, Refused); 4] = [
        // Names 5..=6 where 4..=6 are missing.
        (
            "vm-late",
            log_lines(&[(7, "gap", gap_payload(5, 6, 2))]),
            |v| matches!(v, Some(StreamVerdict::Invalid { seq: Some(7), defect }) if defect.contains("gap record does not name the missing seqs")),
        ),
        // The right range, kinds that add up to less.
        (
            "vm-count",
            log_lines(&[(7, "gap", gap_payload(4, 6, 2))]),
            |v| matches!(v, Some(StreamVerdict::Invalid { seq: Some(7), defect }) if defect.contains("add up to 2")),
        ),
        // A gap where nothing is missing.
        (
            "vm-none",
            log_lines(&[(4, "gap", gap_payload(4, 6, 3))]),
            |v| matches!(v, Some(StreamVerdict::Invalid { seq: Some(4), .. })),
        ),
        // A jump with no gap record at all.
        (
            "vm-bare",
            log_lines(&[(7, "oom_kill", r#"{"i":7}"#.to_string())]),
            |v| *v == Some(StreamVerdict::Gap { from: 4, to: 6 }),
        ),
    ];
    for (name, lines, refused) in cases {
        let guest = host.listen(name, None);
        let (mut raw, _) = Raw::handshake(&guest.socket, name, None);
        for line in &lines {
            // The host may end the stream at the bad line.
            let _ = raw.send(line);
        }
        raw.connection.shutdown();
        let status = host.verdict_of(Some(name));
        assert!(refused(&status.verdict), "{name}: {status}");
        // The copy holds what came before the lie, and verifies.
        let copy = host.collector.guest_dir(name);
        let held = forensic::verify(&copy).unwrap();
        assert_eq!(held.last_seq, Some(3), "{name}: {held:?}");
        assert!(held.problem.is_none(), "{name}: {held:?}");
        // The independent verifier refuses the same lie.
        let said = python_says(&scratch, name, &lines);
        assert!(said.contains(": BAD "), "{name}: {said}");
    }
}

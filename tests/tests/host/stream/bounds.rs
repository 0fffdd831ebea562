//! Connections that drive the collector's time and memory: a hello sent a byte at a time, a
//! stream gone quiet, lines longer than the bound or held open to eat the line memory, and
//! reconnection storms. Each meets its bound with a verdict that says so, while a real
//! guest's copy completes byte for byte.
use std::time::{Duration, Instant};

use super::harness::*;
use guard::forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use guard::stream::{
    CollectorOptions, FailureKind, RefusalCode, Sender, SenderOptions, StreamVerdict,
    wire::{Control, Hello, VERSION},
};

fn quick(scratch: &TempDir) -> CollectorOptions {
    let mut options = CollectorOptions::new(scratch.0.join("collected"));
    options.limits.handshake_deadline = Duration::from_secs(1);
    options.limits.idle_timeout = Duration::from_secs(1);
    options
}

/// The handshake has one deadline, not one per read: a hello trickling in a byte every 50 ms
/// is refused at the deadline although no read ever waited long. A stream that goes quiet is
/// cut at the idle timeout; one whose sender sends heartbeats is not.
#[test]
fn slow_and_idle_connections_meet_their_deadlines() {
    let scratch = TempDir::new("slow");
    let host = Host::with(&scratch, quick(&scratch));
    let vm = host.guest("vm-slow");
    let mut slow = Raw::connect(&vm.socket);
    let hello = Control::Hello(Hello {
        version: VERSION,
        guest: "vm-slow".into(),
        boot_id: "b".repeat(40),
    })
    .to_line();
    let trickle = std::thread::spawn(move || {
        for byte in &hello {
            if slow.send(&[*byte]).is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    });
    let status = host.verdict_of(Some("vm-slow"));
    assert!(
        matches!(
            &status.verdict,
            Some(StreamVerdict::Refused {
                code: RefusalCode::Timeout,
                ..
            })
        ),
        "{status}"
    );
    assert!(
        !trickle.join().unwrap(),
        "the connection was closed mid-hello"
    );

    // Authenticated, then silent: cut.
    let (_quiet, answer) = Raw::handshake(&vm.socket, "vm-slow", vm.key.as_ref());
    assert!(matches!(answer, Control::Resume(_)), "{answer:?}");
    let status = host.stream_of("vm-slow");
    assert!(
        matches!(&status.verdict, Some(StreamVerdict::Cut { reason, .. }) if reason.contains("silent for")),
        "{status}"
    );

    // A sender with nothing to send for 3 s keeps its stream with heartbeats; without them
    // (an hour apart), the same pause costs it its connection (and it reconnects).
    for (heartbeat, reconnects) in [
        (Duration::from_millis(200), false),
        (Duration::from_secs(3600), true),
    ] {
        let guest = host.guest(&format!("vm-beat-{}", heartbeat.as_millis()));
        let log = scratch.0.join(&guest.name);
        let mut writer =
            LogWriter::create(&log, options(), &StartInfo::new(1, json!(null))).unwrap();
        writer.flush().unwrap();
        let sender = Sender::start(
            &log,
            SenderOptions {
                heartbeat_interval: heartbeat,
                ..guest.options()
            },
        )
        .unwrap();
        wait_for("the start acknowledged", || {
            sender.stats().acked_next_seq >= 1
        });
        std::thread::sleep(Duration::from_secs(3));
        writer
            .append("fork", None, &json!({"after": "the pause"}))
            .unwrap();
        writer.close().unwrap();
        let stats = sender.finish(Duration::from_secs(30));
        assert!(stats.delivered, "{stats:?}");
        assert_eq!(
            stats.connections >= 2,
            reconnects,
            "heartbeat {heartbeat:?}: {stats:?}"
        );
        assert_eq!(stats.heartbeats_sent >= 5, !reconnects, "{stats:?}");
        assert_eq!(
            files_of(&host.collector.guest_dir(&guest.name)),
            files_of(&log)
        );
    }
}

/// A handshake line past 64 KiB, a record line past 4 MiB, and three streams each holding 3 MiB
/// of an unfinished line against a 6 MiB line memory: each costs only its own connection (the
/// largest holder is cut when the memory runs out), and a real guest completes meanwhile.
/// With the budget out of reach, nothing is cut.
#[test]
fn long_lines_and_the_line_memory_budget() {
    for (budget, cut_expected) in [(6usize << 20, true), (1 << 30, false)] {
        let scratch = TempDir::new("long");
        let mut options = CollectorOptions::new(scratch.0.join("collected"));
        options.limits.line_memory = budget;
        let host = Host::with(&scratch, options);
        let vm = host.guest("vm-long");
        let mut long_hello = Raw::connect(&vm.socket);
        let _ = long_hello.send(&vec![b'{'; 100 << 10]);
        let status = host.verdict_of(Some("vm-long"));
        assert!(
            status.to_string().contains("longer than 64 KiB"),
            "{status}"
        );
        let (mut root, _) = Raw::handshake(&vm.socket, "vm-long", vm.key.as_ref());
        let _ = root.send(&vec![b'x'; guard::stream::wire::MAX_RECORD_BYTES + 10]);
        let status = host.stream_of("vm-long");
        assert!(
            status.to_string().contains("a line longer than"),
            "{status}"
        );

        let hogs: Vec<Raw> = (0..3)
            .map(|i| {
                let hog = host.listen(&format!("hog-{i}"), None);
                let (mut raw, _) = Raw::handshake(&hog.socket, &hog.name, None);
                let _ = raw.send(&vec![b'y'; 3 << 20]);
                raw
            })
            .collect();
        let real = host.guest("vm-real");
        let log = scratch.0.join("log");
        write_session(&log, 300, false);
        assert!(ship(&real, &log, Duration::from_secs(60)).delivered);
        assert_eq!(
            files_of(&host.collector.guest_dir("vm-real")),
            files_of(&log)
        );
        let cut = host.collector.counters().cut;
        assert_eq!(
            cut > 0,
            cut_expected,
            "budget {budget}: {:?}",
            host.collector.counters()
        );
        drop(hogs);
    }
}

fn big_log(dir: &std::path::Path, records: u64) {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("big".into()),
        rotate_bytes: None,
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(1, json!(null))).unwrap();
    for i in 0..records {
        writer
            .append("fork", Some("tenant"), &json!({"i": i}))
            .unwrap();
    }
    writer.close().unwrap();
}

/// Fifty reconnections of a guest whose copy holds 20,000 records read the copy from disk
/// once (the verified tail stays in memory); a sender whose copy is forked backs off instead
/// of reconnecting in a loop.
#[test]
fn reconnect_storms_cost_no_reverification() {
    let scratch = TempDir::new("storm");
    let host = Host::start(&scratch);
    let vm = host.guest("vm-storm");
    let log = scratch.0.join("log");
    big_log(&log, 20_000);
    assert!(ship(&vm, &log, Duration::from_secs(120)).delivered);
    host.first_complete("vm-storm");
    let held = guard::forensic::verify(&log).unwrap().records;
    for _ in 0..50 {
        let (raw, answer) = Raw::handshake(&vm.socket, "vm-storm", vm.key.as_ref());
        assert!(
            matches!(&answer, Control::Resume(resume) if resume.next_seq == held),
            "{answer:?}"
        );
        raw.connection.shutdown();
        host.stream_of("vm-storm");
    }
    assert_eq!(
        host.collector.counters().copies_loaded,
        1,
        "{:?}",
        host.collector.counters()
    );

    // Another history under the same name: forked on every try, with the waits doubling.
    let other = scratch.0.join("other-log");
    write_session(&other, 5, false);
    let sender = Sender::start(&other, vm.options()).unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let stats = sender.stats();
    drop(sender);
    assert_eq!(
        stats.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::Forked),
        "{stats:?}"
    );
    assert!(
        stats.connections <= 7,
        "{} connections in {:?}: {stats:?}",
        stats.connections,
        started.elapsed()
    );
}

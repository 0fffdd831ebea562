//! Every verdict a stream can reach, over Unix sockets on the host (the same code carries
//! vsock in a guest), with the stored copy checked by the verifier and against the guest's own
//! bytes; bad input costs only its own connection.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use super::harness::*;
use guard::forensic::{self, LogWriter, StartInfo, serde_json::json};
use guard::stream::{
    Address, CollectorOptions, RefusalCode, Sender, SenderOptions, StreamVerdict, wire::Control,
};

#[test]
fn a_closed_session_arrives_complete_and_byte_for_byte() {
    let scratch = TempDir::new("complete");
    let host = Host::start(&scratch);
    let guest = host.guest("vm-a");
    let log = scratch.0.join("guest-log");
    write_session(&log, 100, false);
    let stats = ship(&guest, &log, Duration::from_secs(30));
    let status = host.verdict_of(Some("vm-a"));
    let report = forensic::verify(&log).unwrap();
    let last = report.last_seq.unwrap();
    assert_eq!(
        status.verdict,
        Some(StreamVerdict::Complete { last_seq: last })
    );
    assert_eq!(stats.acked_next_seq, last + 1, "{stats:?}");
    assert!(
        stats.delivered && stats.authenticated && stats.healthy(),
        "{stats:?}"
    );
    assert!(status.authenticated, "{status}");
    let copy = host.collector.guest_dir("vm-a");
    assert!(report.files > 1, "the test must cross a rotation");
    assert_eq!(files_of(&copy), files_of(&log));
    assert!(forensic::verify(&copy).unwrap().is_clean());
}

#[test]
fn a_stream_without_a_stop_says_the_guest_died_and_a_reconnect_resumes() {
    let scratch = TempDir::new("died");
    let host = Host::start(&scratch);
    let guest = host.guest("vm-b");
    let log = scratch.0.join("guest-log");
    write_session(&log, 30, true);
    // finish waits for a stop that never comes, then ends the stream.
    let stats = ship(&guest, &log, Duration::from_secs(2));
    assert!(!stats.delivered, "no stop, nothing delivered: {stats:?}");
    let died = host.verdict_of(Some("vm-b"));
    let last = forensic::verify(&log).unwrap().last_seq.unwrap();
    assert_eq!(
        died.verdict,
        Some(StreamVerdict::GuestDied {
            after_seq: Some(last)
        })
    );
    assert_eq!(
        died.verdict.as_ref().unwrap().to_string(),
        format!("guest died after seq {last}")
    );
    // The guest comes back, continues its log and closes it: only the new records travel.
    write_session(&log, 5, false);
    let added = forensic::verify(&log).unwrap().last_seq.unwrap() - last;
    assert!(ship(&guest, &log, Duration::from_secs(30)).delivered);
    let resumed = host.verdict_of(Some("vm-b"));
    assert!(resumed.verdict.as_ref().unwrap().is_complete(), "{resumed}");
    assert_eq!((resumed.received, resumed.matched), (added, 0), "{resumed}");
    assert_eq!(files_of(&host.collector.guest_dir("vm-b")), files_of(&log));
}

#[test]
fn a_rewritten_history_is_a_fork_and_the_host_keeps_its_copy() {
    let scratch = TempDir::new("fork");
    let host = Host::start(&scratch);
    let guest = host.guest("vm-c");
    let log = scratch.0.join("guest-log");
    write_session(&log, 10, false);
    ship(&guest, &log, Duration::from_secs(30));
    assert!(host.verdict_of(Some("vm-c")).verdict.unwrap().is_complete());
    let held = files_of(&host.collector.guest_dir("vm-c"));
    // Guest root rewrites its log from seq K with a freshly computed chain: the first K lines
    // (up to 6, what the first file holds) are kept, the rest replaced by a new session.
    let first_file = forensic::layout::list_files(&log).unwrap()[0].path.clone();
    for file in forensic::layout::list_files(&log).unwrap().iter().skip(1) {
        std::fs::remove_file(&file.path).unwrap();
    }
    let text = std::fs::read_to_string(&first_file).unwrap();
    let kept: Vec<&str> = text.split_inclusive('\n').take(6).collect();
    let fork_at = kept.len() as u64;
    assert!(fork_at >= 3, "the first file holds at least 3 records");
    std::fs::write(&first_file, kept.concat()).unwrap();
    write_session(&log, 2, false);
    assert!(
        forensic::verify(&log).unwrap().is_clean(),
        "the rewrite verifies on its own"
    );
    let stats = ship(&guest, &log, Duration::from_secs(30));
    let forked = host.verdict_of(Some("vm-c"));
    assert_eq!(
        forked.verdict,
        Some(StreamVerdict::Forked { at_seq: fork_at }),
        "{forked}"
    );
    assert_eq!(forked.matched, fork_at);
    assert_eq!(files_of(&host.collector.guest_dir("vm-c")), held);
    // The sender knows: nothing it sent counts, its failure says forked, and it stopped at
    // once rather than wait out its finish.
    let failure = stats.failure.clone().expect("a failure");
    assert_eq!(
        failure.kind,
        guard::stream::FailureKind::Forked,
        "{stats:?}"
    );
    assert!(
        failure.detail.contains(&format!("forked at seq {fork_at}")),
        "{failure}"
    );
    assert!(!stats.delivered && stats.acked_next_seq == 0, "{stats:?}");
}

#[test]
fn three_guests_at_once_give_three_complete_copies() {
    let scratch = TempDir::new("fan-in");
    let host = Host::start(&scratch);
    let guests = ["vm-1", "vm-2", "vm-3"];
    for guest in guests {
        write_session(&scratch.0.join(guest), 200, false);
    }
    let senders: Vec<Sender> = guests
        .iter()
        .map(|guest| Sender::start(&scratch.0.join(guest), host.guest(guest).options()).unwrap())
        .collect();
    for sender in senders {
        sender.finish(Duration::from_secs(30));
    }
    let mut done: Vec<String> = (0..3)
        .map(|_| {
            let status = host.verdict_of_any();
            assert!(status.verdict.as_ref().unwrap().is_complete(), "{status}");
            status.guest.unwrap()
        })
        .collect();
    done.sort();
    assert_eq!(done, guests);
    for guest in guests {
        assert_eq!(
            files_of(&host.collector.guest_dir(guest)),
            files_of(&scratch.0.join(guest))
        );
    }
}

#[test]
fn bad_input_costs_only_its_own_connection() {
    let scratch = TempDir::new("bad");
    let mut options = CollectorOptions::new(scratch.0.join("collected"));
    options.limits.handshake_deadline = Duration::from_millis(500);
    let host = Host::with(&scratch, options);
    let log = scratch.0.join("guest-log");
    write_session(&log, 3, false);
    let lines = lines_of(&log);
    let refusal = |status: &guard::stream::GuestStatus| match &status.verdict {
        Some(StreamVerdict::Refused { code, reason }) => (*code, reason.clone()),
        other => panic!("not refused: {other:?}"),
    };

    // Garbage instead of a hello.
    let bad = host.guest("vm-bad");
    let mut garbage = Raw::connect(&bad.socket);
    garbage.send(b"\x00\xffGET / HTTP/1.0\r\n\n").unwrap();
    let (code, reason) = refusal(&host.verdict_of(Some("vm-bad")));
    assert_eq!(code, RefusalCode::BadHello);
    assert!(
        reason.starts_with("the first line is not a hello"),
        "{reason}"
    );
    // A client that connects and says nothing: the handshake's deadline.
    let _silent = Raw::connect(&bad.socket);
    let (code, reason) = refusal(&host.verdict_of(Some("vm-bad")));
    assert_eq!(code, RefusalCode::Timeout);
    assert!(reason.contains("no hello and proof within"), "{reason}");
    // The hello names a guest the transport is not.
    let (_raw, answer) = Raw::handshake(&bad.socket, "vm-other", None);
    assert!(
        matches!(&answer, Control::Refused { code: RefusalCode::NameMismatch, reason }
            if reason.contains("this transport is guest vm-bad's")),
        "{answer:?}"
    );
    host.verdict_of(Some("vm-bad"));

    // A gap: record 0, then record 2.
    let gap = host.listen("vm-gap", None);
    let (mut raw, _) = Raw::handshake(&gap.socket, "vm-gap", None);
    raw.send(&lines[0]).unwrap();
    raw.send(&lines[2]).unwrap();
    let status = host.verdict_of(Some("vm-gap"));
    assert_eq!(status.verdict, Some(StreamVerdict::Gap { from: 1, to: 1 }));
    assert!(
        !status.authenticated && status.to_string().contains("unauthenticated"),
        "{status}"
    );
    // The guest hears the verdict.
    let told = std::iter::from_fn(|| raw.answer()).find(|c| matches!(c, Control::Ended(_)));
    assert_eq!(
        told,
        Some(Control::Ended(StreamVerdict::Gap { from: 1, to: 1 }))
    );
    // A record altered in flight does not verify.
    let altered = host.listen("vm-alt", None);
    let (mut raw, _) = Raw::handshake(&altered.socket, "vm-alt", None);
    raw.send(&lines[0]).unwrap();
    let changed = String::from_utf8(lines[1].clone())
        .unwrap()
        .replacen("\"i\":0", "\"i\":7", 1);
    raw.send(changed.as_bytes()).unwrap();
    let status = host.verdict_of(Some("vm-alt"));
    assert!(
        matches!(
            &status.verdict,
            Some(StreamVerdict::Invalid { seq: Some(1), .. })
        ),
        "{status}"
    );
    // The same guest twice at once: the second is refused while the first is lively.
    let twice = host.listen("vm-twice", None);
    let (mut first, _) = Raw::handshake(&twice.socket, "vm-twice", None);
    first.send(&lines[0]).unwrap();
    let (_second, answer) = Raw::handshake(&twice.socket, "vm-twice", None);
    assert!(
        matches!(&answer, Control::Refused { code: RefusalCode::AlreadyStreaming, reason }
            if reason.contains("already streaming")),
        "{answer:?}"
    );
    for line in &lines[1..] {
        first.send(line).unwrap();
    }
    first.connection.shutdown();
    let status = host.stream_of("vm-twice");
    assert!(status.verdict.as_ref().unwrap().is_complete(), "{status}");

    // A hundred connections at once, saying nothing or garbage, beside a real guest.
    let real = host.guest("vm-real");
    let crowd: Vec<Raw> = (0..100)
        .map(|i| {
            let mut raw = Raw::connect(if i % 2 == 0 {
                &real.socket
            } else {
                &bad.socket
            });
            if i % 3 == 0 {
                let _ = raw.send(b"nonsense\n");
            }
            raw
        })
        .collect();
    assert!(ship(&real, &log, Duration::from_secs(30)).delivered);
    let status = host.stream_of("vm-real");
    assert!(status.verdict.as_ref().unwrap().is_complete(), "{status}");
    drop(crowd);
    // Nothing of one guest in another's copy.
    assert_eq!(
        files_of(&host.collector.guest_dir("vm-real")),
        files_of(&log)
    );
    for other in ["vm-bad", "vm-other"] {
        assert!(
            files_of(&host.collector.guest_dir(other)).is_empty(),
            "{other}"
        );
    }
}

/// A link that stalls mid-stream (a relay stops forwarding): the guest's log goes on being
/// written at full speed, the sender's write times out and it reconnects; once the link
/// returns, the resume fills everything in and the copy completes.
#[test]
fn a_stalled_link_delays_the_copy_and_never_the_log() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let scratch = TempDir::new("stall");
    let host = Host::start(&scratch);
    let guest = host.guest("vm-stall");
    let collector_path = guest.socket.clone();
    let relay_path = scratch.0.join("relay.sock");
    let relay = std::os::unix::net::UnixListener::bind(&relay_path).unwrap();
    let paused = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let paused = paused.clone();
        move || {
            for guest_side in relay.incoming().flatten() {
                let host_side = std::os::unix::net::UnixStream::connect(&collector_path).unwrap();
                let (mut from_host, mut to_guest) = (
                    host_side.try_clone().unwrap(),
                    guest_side.try_clone().unwrap(),
                );
                std::thread::spawn(move || std::io::copy(&mut from_host, &mut to_guest));
                let paused = paused.clone();
                std::thread::spawn(move || {
                    let (mut from_guest, mut to_host) = (guest_side, host_side);
                    let mut buffer = [0u8; 4096];
                    loop {
                        while paused.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        match std::io::Read::read(&mut from_guest, &mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to_host.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_host.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    let log = scratch.0.join("guest-log");
    let mut writer = LogWriter::create(&log, options(), &StartInfo::new(1, json!(null))).unwrap();
    let sender = Sender::start(
        &log,
        SenderOptions {
            address: Address::Unix(relay_path.clone()),
            ..guest.options()
        },
    )
    .unwrap();
    let append = |writer: &mut LogWriter, n: u64| {
        for i in 0..n {
            writer
                .append(
                    "fork",
                    Some("tenant"),
                    &json!({"i": i, "pad": "y".repeat(200)}),
                )
                .unwrap();
        }
        writer.flush().unwrap();
    };
    append(&mut writer, 50);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the first records acknowledged", &|| {
        sender.stats().acked_next_seq >= 51
    });
    paused.store(true, Ordering::Relaxed);
    // Far more than the sockets buffer: the sender's writes block, the log's do not.
    let started = Instant::now();
    append(&mut writer, 5_000);
    let appending = started.elapsed();
    wait("the stalled write to time out", &|| {
        sender.stats().last_error.is_some()
    });
    assert!(
        sender.stats().acked_next_seq < 5_051,
        "the link was stalled: {:?}",
        sender.stats()
    );
    paused.store(false, Ordering::Relaxed);
    writer.close().unwrap();
    let stats = sender.finish(Duration::from_secs(60));
    let last = forensic::verify(&log).unwrap().last_seq.unwrap();
    assert_eq!(stats.acked_next_seq, last + 1, "{stats:?}");
    let status = host.first_complete("vm-stall");
    assert!(stats.connections >= 2, "it reconnected: {stats:?}");
    assert_eq!(
        files_of(&host.collector.guest_dir("vm-stall")),
        files_of(&log),
        "{status}"
    );
    eprintln!("5,000 records appended in {appending:?} while the link was stalled; {stats:?}");
}

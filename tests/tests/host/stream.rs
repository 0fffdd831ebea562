//! The log stream over a Unix socket, on the host (the same code carries vsock in a guest):
//! every verdict a collector can reach, with the stored copy checked by the verifier and
//! against the guest's own bytes; bad input costs only its own connection.
use std::{
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::forensic_log::TempDir;
use guard::forensic::{self, FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use guard::stream::{
    Address, Collector, Connection, GuestStatus, Listener, Sender, SenderOptions, StreamVerdict,
    wire::{Control, Hello, VERSION},
};

/// A collector serving on a socket in `scratch`, its statuses on a channel.
struct Host {
    collector: Collector,
    address: Address,
    statuses: mpsc::Receiver<GuestStatus>,
}

impl Host {
    fn start(scratch: &TempDir, hello_timeout: Duration) -> Self {
        Self::start_in(scratch, &scratch.0.join("collected"), hello_timeout)
    }

    /// A collector storing under `dir`.
    fn start_in(scratch: &TempDir, dir: &Path, hello_timeout: Duration) -> Self {
        let (sender, statuses) = mpsc::channel();
        let sender = std::sync::Mutex::new(sender);
        let collector = Collector::new(dir, move |status| {
            let _ = sender.lock().unwrap().send(status.clone());
        })
        .unwrap()
        .with_hello_timeout(hello_timeout);
        let address = Address::Unix(scratch.0.join("collector.sock"));
        let listener = Listener::bind(&address).unwrap();
        let serving = collector.clone();
        std::thread::spawn(move || serving.serve(&listener));
        Self {
            collector,
            address,
            statuses,
        }
    }

    /// The verdict of the next stream of `guest` to end (statuses of others are skipped).
    fn verdict_of(&self, guest: Option<&str>) -> GuestStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = self
                .statuses
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no verdict for {guest:?} within 60 s"));
            if status.verdict.is_some() && status.guest.as_deref() == guest {
                return status;
            }
        }
    }
}

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("stream-test".into()),
        rotate_bytes: Some(2_000),
        ..LogOptions::default()
    }
}

/// A guest's log: a session of `events` records, closed with a stop unless `dies`.
fn write_session(dir: &Path, events: u64, dies: bool) {
    let mut writer = LogWriter::create(dir, options(), &StartInfo::new(1, json!(null))).unwrap();
    for i in 0..events {
        writer
            .append(
                "oom_kill",
                Some("tenant"),
                &json!({"i": i, "pad": "x".repeat(40)}),
            )
            .unwrap();
    }
    if dies {
        drop(writer);
    } else {
        writer.close().unwrap();
    }
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    forensic::layout::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|file| (file.name(), std::fs::read(&file.path).unwrap()))
        .collect()
}

fn ship(host: &Host, log: &Path, guest: &str, timeout: Duration) -> guard::stream::SenderStats {
    let sender = Sender::start(log, SenderOptions::new(host.address.clone(), guest)).unwrap();
    sender.finish(timeout)
}

#[test]
fn a_closed_session_arrives_complete_and_byte_for_byte() {
    let scratch = TempDir::new("complete");
    let host = Host::start(&scratch, Duration::from_secs(10));
    let log = scratch.0.join("guest-log");
    write_session(&log, 100, false);
    let stats = ship(&host, &log, "vm-a", Duration::from_secs(30));
    let status = host.verdict_of(Some("vm-a"));
    let report = forensic::verify(&log).unwrap();
    let last = report.last_seq.unwrap();
    assert_eq!(
        status.verdict,
        Some(StreamVerdict::Complete { last_seq: last })
    );
    assert_eq!(stats.acked_next_seq, last + 1, "{stats:?}");
    let copy = host.collector.guest_dir("vm-a");
    assert!(report.files > 1, "the test must cross a rotation");
    assert_eq!(files_of(&copy), files_of(&log));
    assert!(forensic::verify(&copy).unwrap().is_clean());
}

#[test]
fn a_stream_without_a_stop_says_the_guest_died_and_a_reconnect_resumes() {
    let scratch = TempDir::new("died");
    let host = Host::start(&scratch, Duration::from_secs(10));
    let log = scratch.0.join("guest-log");
    write_session(&log, 30, true);
    // finish waits for a stop that never comes, then ends the stream.
    ship(&host, &log, "vm-b", Duration::from_secs(2));
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
    ship(&host, &log, "vm-b", Duration::from_secs(30));
    let resumed = host.verdict_of(Some("vm-b"));
    assert!(resumed.verdict.as_ref().unwrap().is_complete(), "{resumed}");
    assert_eq!((resumed.received, resumed.matched), (added, 0), "{resumed}");
    assert_eq!(files_of(&host.collector.guest_dir("vm-b")), files_of(&log));
}

#[test]
fn a_rewritten_history_is_a_fork_and_the_host_keeps_its_copy() {
    let scratch = TempDir::new("fork");
    let host = Host::start(&scratch, Duration::from_secs(10));
    let log = scratch.0.join("guest-log");
    write_session(&log, 10, false);
    ship(&host, &log, "vm-c", Duration::from_secs(30));
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
    ship(&host, &log, "vm-c", Duration::from_secs(5));
    let forked = host.verdict_of(Some("vm-c"));
    assert_eq!(
        forked.verdict,
        Some(StreamVerdict::Forked { at_seq: fork_at }),
        "{forked}"
    );
    assert_eq!(forked.matched, fork_at);
    assert_eq!(files_of(&host.collector.guest_dir("vm-c")), held);
}

#[test]
fn three_guests_at_once_give_three_complete_copies() {
    let scratch = TempDir::new("fan-in");
    let host = Host::start(&scratch, Duration::from_secs(10));
    let guests = ["vm-1", "vm-2", "vm-3"];
    for guest in guests {
        write_session(&scratch.0.join(guest), 200, false);
    }
    let senders: Vec<Sender> = guests
        .iter()
        .map(|guest| {
            Sender::start(
                &scratch.0.join(guest),
                SenderOptions::new(host.address.clone(), *guest),
            )
            .unwrap()
        })
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

impl Host {
    /// Skips `guest`'s failed streams (a reconnecting sender's) until one is complete.
    fn first_complete(&self, guest: &str) -> GuestStatus {
        loop {
            let status = self.verdict_of(Some(guest));
            if status
                .verdict
                .as_ref()
                .is_some_and(StreamVerdict::is_complete)
            {
                return status;
            }
        }
    }

    fn verdict_of_any(&self) -> GuestStatus {
        loop {
            let status = self
                .statuses
                .recv_timeout(Duration::from_secs(60))
                .expect("a verdict within 60 s");
            if status.verdict.is_some() {
                return status;
            }
        }
    }
}

/// A hand-driven guest: says hello and reads the resume point.
fn raw_client(host: &Host, guest: &str) -> (Connection, BufReader<Connection>, Control) {
    let mut connection = Connection::connect(&host.address).unwrap();
    let hello = Control::Hello(Hello {
        version: VERSION,
        guest: guest.into(),
        boot_id: "b".into(),
    });
    connection.write_all(&hello.to_line()).unwrap();
    let mut reader = BufReader::new(connection.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (
        connection,
        reader,
        guard::forensic::serde_json::from_str(&line).unwrap(),
    )
}

#[test]
fn bad_input_costs_only_its_own_connection() {
    let scratch = TempDir::new("bad");
    let host = Host::start(&scratch, Duration::from_millis(500));
    let log = scratch.0.join("guest-log");
    write_session(&log, 3, false);
    let lines: Vec<Vec<u8>> =
        std::fs::read(forensic::layout::list_files(&log).unwrap()[0].path.clone())
            .unwrap()
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();

    // Garbage instead of a hello.
    let mut garbage = Connection::connect(&host.address).unwrap();
    garbage.write_all(b"\x00\xffGET / HTTP/1.0\r\n\n").unwrap();
    let status = host.verdict_of(None);
    assert!(
        status
            .verdict
            .as_ref()
            .unwrap()
            .to_string()
            .starts_with("refused: the first line is not a hello"),
        "{status}"
    );
    // A client that connects and says nothing.
    let _silent = Connection::connect(&host.address).unwrap();
    let status = host.verdict_of(None);
    assert!(
        status
            .verdict
            .as_ref()
            .unwrap()
            .to_string()
            .contains("no hello within"),
        "{status}"
    );
    // A name that is not a safe directory name.
    let (_c, _r, answer) = raw_client(&host, "../etc");
    assert!(matches!(answer, Control::Refused { .. }), "{answer:?}");
    host.verdict_of(None);

    // A gap: record 0, then record 2.
    let (mut gap, _reader, _) = raw_client(&host, "vm-gap");
    gap.write_all(&lines[0]).unwrap();
    gap.write_all(&lines[2]).unwrap();
    let status = host.verdict_of(Some("vm-gap"));
    assert_eq!(status.verdict, Some(StreamVerdict::Gap { from: 1, to: 1 }));
    // A record altered in flight does not verify.
    let (mut altered, _reader, _) = raw_client(&host, "vm-alt");
    altered.write_all(&lines[0]).unwrap();
    let changed = String::from_utf8(lines[1].clone())
        .unwrap()
        .replacen("\"i\":0", "\"i\":7", 1);
    altered.write_all(changed.as_bytes()).unwrap();
    let status = host.verdict_of(Some("vm-alt"));
    assert!(
        matches!(
            &status.verdict,
            Some(StreamVerdict::Invalid { seq: Some(1), .. })
        ),
        "{status}"
    );
    // A line over the bound.
    let (mut long, _reader, _) = raw_client(&host, "vm-long");
    let huge = vec![b'x'; guard::stream::wire::MAX_RECORD_BYTES + 10];
    let _ = long.write_all(&huge);
    let status = host.verdict_of(Some("vm-long"));
    assert!(
        status
            .verdict
            .as_ref()
            .unwrap()
            .to_string()
            .contains("longer than"),
        "{status}"
    );
    // The same guest twice at once: the second is refused, the first unharmed.
    let (mut first, _reader, _) = raw_client(&host, "vm-twice");
    let (_second, _r2, answer) = raw_client(&host, "vm-twice");
    assert!(
        matches!(&answer, Control::Refused { reason } if reason.contains("already streaming")),
        "{answer:?}"
    );
    host.verdict_of(None);
    for line in &lines {
        first.write_all(line).unwrap();
    }
    first.shutdown();
    let status = host.verdict_of(Some("vm-twice"));
    assert!(status.verdict.unwrap().is_complete());

    // A hundred connections at once, saying nothing or garbage, beside a real guest.
    let crowd: Vec<Connection> = (0..100)
        .map(|i| {
            let mut connection = Connection::connect(&host.address).unwrap();
            if i % 2 == 0 {
                let _ = connection.write_all(b"nonsense\n");
            }
            connection
        })
        .collect();
    ship(&host, &log, "vm-real", Duration::from_secs(30));
    let status = host.verdict_of(Some("vm-real"));
    assert!(status.verdict.as_ref().unwrap().is_complete(), "{status}");
    drop(crowd);
    // Nothing outside the collector's directory, nothing of one guest in another's.
    assert_eq!(
        files_of(&host.collector.guest_dir("vm-real")),
        files_of(&log)
    );
    assert!(!scratch.0.join("etc").exists());
}

/// The commands themselves: `guard exec --log L --stream unix:S` into `guard collect --listen
/// unix:S --streams 1`; the collector exits 0 on `complete`, its copy is the guest's log byte
/// for byte, and `guard log verify` accepts it.
#[test]
fn guard_exec_streams_into_an_unprivileged_guard_collect() {
    if !guard_tests::host::root_or_skip("guard_exec_streams_into_an_unprivileged_guard_collect") {
        return;
    }
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    let scratch = TempDir::new("cli");
    let guard = crate::forensic_log::guard_bin();
    // The collector runs unprivileged (nobody), in a folder of its own: it needs no more.
    const NOBODY: u32 = 65534;
    let home = scratch.0.join("collector");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = home.join("collect.sock");
    let copies = home.join("copies");
    // A copy nobody can run wherever the checkout is (a clone under /root is not).
    let collector_bin = scratch.0.join("guard");
    std::fs::copy(&guard, &collector_bin).unwrap();
    let collect = std::process::Command::new(&collector_bin)
        .args(["collect", "--streams", "1", "--json", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--dir")
        .arg(&copies)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _reap = KillOnDrop(collect.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the collector never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = scratch.0.join("log");
    let parent = guard_tests::host::TestCgroup::create("stream-cli");
    let cgroup = parent.path.join("job").display().to_string();
    let exec = std::process::Command::new(&guard)
        .args(["exec", "--cgroup", &cgroup, "--log"])
        .arg(&log)
        .arg("--stream")
        .arg(format!("unix:{}", socket.display()))
        .args(["--stream-name", "cli-guest", "--", "sh", "-c", "true"])
        .output()
        .unwrap();
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let collected = collect.wait_with_output().unwrap();
    let status: guard::forensic::serde_json::Value = guard::forensic::serde_json::from_slice(
        collected
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|line| !line.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert!(collected.status.success(), "{status}");
    assert_eq!(status["verdict"]["verdict"], "complete", "{status}");
    let copy = copies.join("cli-guest");
    assert_eq!(files_of(&copy), files_of(&log));
    // Everything the collector made is its socket and what is under --dir, owned by nobody.
    let mut made = vec![home.clone()];
    let mut pending = vec![home.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            made.push(path);
        }
    }
    for path in &made {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            std::fs::metadata(path).unwrap().uid(),
            NOBODY,
            "{}",
            path.display()
        );
        assert!(
            path == &home || path == &socket || path.starts_with(&copies),
            "the collector wrote {} outside --dir",
            path.display()
        );
    }
    let verify = std::process::Command::new(&guard)
        .args(["log", "--dir"])
        .arg(&copy)
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Kills a helper process if the test fails before it exits by itself.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A disk that fills under the collector: that stream fails with the error named, the copy
/// verifies up to its last complete line, and once there is room again the guest's next
/// connection cuts the torn line and completes the copy.
#[test]
fn a_full_disk_fails_its_stream_and_the_next_connection_completes_it() {
    if !guard_tests::host::root_or_skip("a_full_disk_fails_its_stream") {
        return;
    }
    let scratch = TempDir::new("full");
    let mount = scratch.0.join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 64 KiB tmpfs");
    let _unmount = Unmount(mount.clone());
    let host = Host::start_in(&scratch, &mount.join("collected"), Duration::from_secs(10));
    let log = scratch.0.join("guest-log");
    write_session(&log, 400, false);
    ship(&host, &log, "vm-full", Duration::from_secs(3));
    let full = host.verdict_of(Some("vm-full"));
    let verdict = full.verdict.as_ref().unwrap().to_string();
    assert!(verdict.contains("No space left on device"), "{full}");
    let copy = host.collector.guest_dir("vm-full");
    assert_eq!(forensic::verify(&copy).unwrap().problem, None);
    // Room again: the next connection repairs the copy and completes it.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    ship(&host, &log, "vm-full", Duration::from_secs(30));
    let status = host.first_complete("vm-full");
    assert!(status.records > full.records, "{status}");
    assert_eq!(files_of(&copy), files_of(&log));
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
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
    let host = Host::start(&scratch, Duration::from_secs(10));
    let Address::Unix(collector_path) = host.address.clone() else {
        unreachable!()
    };
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
        SenderOptions::new(Address::Unix(relay_path.clone()), "vm-stall"),
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

//! The process's own limits: a collector under a small open-file limit keeps accepting (its
//! connection caps stay under the limit, the oldest handshakes make room), and one under a
//! process limit reached after its start loses nothing (it never needs a thread per
//! connection). Both run `guard collect` as an unprivileged user, for whom the limits hold.
use std::{io::Read as _, path::Path, process::Child, time::Duration};

use super::cli::{KillOnDrop, NobodyHome, wait_for_socket};
use super::harness::*;
use guard::stream::{Sender, StreamKey};

/// A user no other test runs as: RLIMIT_NPROC counts this user's tasks only.
const LIMITED_UID: u32 = 64_999;

/// `guard collect` as `home`'s user for guests `names` (keys in `home/keys`), with `limits`.
fn collector(
    home: &NobodyHome,
    names: &[&str],
    extra: &[&str],
    limits: &[(libc::c_int, u64)],
) -> (Child, Vec<GuestEnd>) {
    let keys = home.home.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut args = vec![
        "--dir".to_string(),
        home.home.join("copies").display().to_string(),
    ];
    args.extend(["--key-dir".to_string(), keys.display().to_string()]);
    let mut guests = Vec::new();
    for name in names {
        let key = StreamKey::generate().unwrap();
        let file = keys.join(name);
        let _ = std::fs::remove_file(&file);
        key.write_new(&file).unwrap();
        std::os::unix::fs::chown(&file, Some(home.uid), Some(home.uid)).unwrap();
        let socket = home.home.join(format!("{name}.sock"));
        // One left by a collector killed earlier would pass for this one's.
        let _ = std::fs::remove_file(&socket);
        args.extend([
            "--listen".to_string(),
            format!("{name}=unix:{}", socket.display()),
        ]);
        guests.push(GuestEnd {
            name: name.to_string(),
            socket,
            key: Some(key),
        });
    }
    std::os::unix::fs::chown(&keys, Some(home.uid), Some(home.uid)).unwrap();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (home.collect(&args, limits), guests)
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Streams a fresh log as each of `guests`, all at once: Err with the senders' account unless
/// every copy is the log.
fn all_complete(guests: &[GuestEnd], copies: &Path, scratch: &TempDir) -> Result<(), String> {
    let senders: Vec<(Sender, std::path::PathBuf)> = guests
        .iter()
        .map(|guest| {
            let log = scratch.0.join(format!("log-{}", guest.name));
            let _ = std::fs::remove_dir_all(&log);
            write_session(&log, 200, false);
            (Sender::start(&log, guest.options()).unwrap(), log)
        })
        .collect();
    let mut failed = Vec::new();
    for ((sender, log), guest) in senders.into_iter().zip(guests) {
        let stats = sender.finish(Duration::from_secs(60));
        if !stats.delivered || files_of(&copies.join(&guest.name)) != files_of(&log) {
            failed.push(format!("{}: {stats:?}", guest.name));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// Under an open-file limit of 128, 400 connections that never say a word are open against
/// one guest's socket while two other guests stream: both complete, and the collector is still
/// there, its caps under the limit.
#[test]
fn the_open_file_limit_leaves_room_for_the_guests() {
    if !guard_tests::host::root_or_skip("the_open_file_limit_leaves_room_for_the_guests") {
        return;
    }
    let scratch = TempDir::new("nofile");
    let home = NobodyHome::new(&scratch);
    let (mut collect, guests) = collector(
        &home,
        &["vm-flooded", "vm-a", "vm-b", "vm-c"],
        &["--max-pending", "100000", "--handshake-timeout", "120000"],
        &[(libc::RLIMIT_NOFILE as libc::c_int, 128)],
    );
    let _reap = KillOnDrop(collect.id());
    wait_for_socket(&mut collect, &guests[3].socket);
    let flood: Vec<Raw> = (0..400).map(|_| Raw::connect(&guests[0].socket)).collect();
    if let Err(e) = all_complete(&guests[1..3], &home.home.join("copies"), &scratch) {
        let mut kinds = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(format!("/proc/{}/fd", collect.id())).unwrap() {
            let target = std::fs::read_link(entry.unwrap().path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let kind = target.split(['[', ':']).next().unwrap_or("").to_string();
            *kinds
                .entry(if target.contains("copies") {
                    "copy".to_string()
                } else {
                    kind
                })
                .or_insert(0) += 1;
        }
        panic!("{e}\nfds: {kinds:?}");
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", collect.id()))
        .unwrap()
        .count();
    assert!(fds < 128, "{fds} open files");
    drop(flood);
    // Still serving after the flood.
    all_complete(&guests[3..], &home.home.join("copies"), &scratch).unwrap();
    finish(collect, "at most");
}

/// Kills the collector and checks its stderr says `expected`.
fn finish(mut collect: Child, expected: &str) {
    assert!(collect.try_wait().unwrap().is_none(), "the collector died");
    let _ = collect.kill();
    let mut stderr = String::new();
    collect
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = collect.wait();
    assert!(stderr.contains(expected), "{stderr}");
}

/// Under a process limit of exactly the threads it starts with, the collector serves 200
/// connections and two guests (a thread per connection would have failed at the first); one
/// thread fewer and it cannot start, with an error saying so: the limit is real.
#[test]
fn a_process_limit_costs_the_collector_nothing() {
    if !guard_tests::host::root_or_skip("a_process_limit_costs_the_collector_nothing") {
        return;
    }
    let scratch = TempDir::new("nproc");
    let home = NobodyHome::for_user(&scratch, LIMITED_UID);
    let names = ["vm-crowded", "vm-a", "vm-b"];
    let (mut collect, guests) = collector(&home, &names, &[], &[]);
    let reap = KillOnDrop(collect.id());
    wait_for_socket(&mut collect, &guests[2].socket);
    let threads = status_field(collect.id(), "Threads");
    assert!((2..=16).contains(&threads), "{threads} threads");
    // Reaped, or its tasks would still count against the user's limit.
    let _ = collect.kill();
    let _ = collect.wait();
    drop(reap);

    let nproc = libc::RLIMIT_NPROC as libc::c_int;
    let (mut starved, _) = collector(&home, &names, &[], &[(nproc, threads - 1)]);
    let status = starved.wait().unwrap();
    let mut stderr = String::new();
    starved
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Resource temporarily unavailable"),
        "{stderr}"
    );

    let (mut collect, guests) = collector(&home, &names, &[], &[(nproc, threads)]);
    let _reap = KillOnDrop(collect.id());
    wait_for_socket(&mut collect, &guests[2].socket);
    let crowd: Vec<Raw> = (0..200)
        .map(|i| {
            let mut raw = Raw::connect(&guests[0].socket);
            if i % 2 == 0 {
                raw.hello("vm-crowded");
            }
            raw
        })
        .collect();
    all_complete(&guests[1..], &home.home.join("copies"), &scratch).unwrap();
    assert_eq!(status_field(collect.id(), "Threads"), threads);
    drop(crowd);
    finish(collect, "collecting into");
}

//! The store's disk: a full filesystem, per-guest quotas of bytes and files, the free-space
//! reserve, inode exhaustion, links planted under the store.
use std::{path::PathBuf, time::Duration};

use super::harness::*;
use guard::forensic;
use guard::stream::{CollectorOptions, Quota, StreamVerdict};

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `options` (`size=…,nr_inodes=…`) at `scratch/small`, unmounted on drop.
fn small_fs(scratch: &TempDir, options: &str) -> (PathBuf, Unmount) {
    let mount = scratch.0.join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs with {options}");
    (mount.clone(), Unmount(mount))
}

/// A disk that fills under the collector (no reserve kept): that stream fails with the error
/// named, the copy verifies up to its last complete line, and once there is room again the
/// guest's next connection completes the copy.
#[test]
fn a_full_disk_fails_its_stream_and_the_next_connection_completes_it() {
    if !guard_tests::host::root_or_skip("a_full_disk_fails_its_stream") {
        return;
    }
    let scratch = TempDir::new("full");
    let (mount, _unmount) = small_fs(&scratch, "size=64k");
    let mut options = CollectorOptions::new(mount.join("collected"));
    options.quota = Quota {
        reserve_bytes: 0,
        reserve_inodes: 0,
        ..Quota::default()
    };
    let host = Host::with(&scratch, options);
    let guest = host.guest("vm-full");
    let log = scratch.0.join("guest-log");
    write_session(&log, 400, false);
    ship(&guest, &log, Duration::from_secs(3));
    let full = host.stream_of("vm-full");
    let verdict = full.verdict.as_ref().unwrap().to_string();
    assert!(
        verdict.contains("No space left on device") || verdict.contains("too few to write"),
        "{full}"
    );
    let copy = host.collector.guest_dir("vm-full");
    assert_eq!(forensic::verify(&copy).unwrap().problem, None);
    // Room again: the next connection completes it.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    assert!(ship(&guest, &log, Duration::from_secs(30)).delivered);
    let status = host.first_complete("vm-full");
    assert!(status.records > full.records, "{status}");
    assert_eq!(files_of(&copy), files_of(&log));
}

fn no_reserve(dir: PathBuf, quota: Quota) -> CollectorOptions {
    let mut options = CollectorOptions::new(dir);
    options.quota = Quota {
        reserve_bytes: 0,
        reserve_inodes: 0,
        ..quota
    };
    options
}

/// A log of `records` records of about `pad` bytes each, rotating at `rotate` bytes.
fn padded_log(dir: &std::path::Path, records: u64, pad: usize, rotate: Option<u64>) {
    use guard::forensic::{LogWriter, StartInfo, serde_json::json};
    let options = guard::forensic::LogOptions {
        rotate_bytes: rotate,
        ..options()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(1, json!(null))).unwrap();
    for i in 0..records {
        writer
            .append("fork", None, &json!({"i": i, "pad": "z".repeat(pad)}))
            .unwrap();
    }
    writer.close().unwrap();
}

/// One guest streams far more than its quota into a 2 MiB filesystem, then two others stream:
/// the hog's stream ends `over quota`, the others complete byte for byte. Without the quota the
/// hog fills the filesystem and the next guest's stream fails.
#[test]
fn one_guest_over_its_quota_fails_alone() {
    if !guard_tests::host::root_or_skip("one_guest_over_its_quota_fails_alone") {
        return;
    }
    for quota in [256 << 10, u64::MAX] {
        let scratch = TempDir::new("quota");
        let (mount, _unmount) = small_fs(&scratch, "size=2m");
        let options = no_reserve(
            mount.join("collected"),
            Quota {
                guest_bytes: quota,
                ..Quota::default()
            },
        );
        let host = Host::with(&scratch, options);
        let hog = host.guest("vm-hog");
        let log = scratch.0.join("hog-log");
        padded_log(&log, 3_000, 900, Some(1 << 20));
        let stats = ship(&hog, &log, Duration::from_secs(60));
        let hogged = host.stream_of("vm-hog");
        let others: Vec<bool> = ["vm-a", "vm-b"]
            .iter()
            .map(|name| {
                let guest = host.guest(name);
                let log = scratch.0.join(name);
                write_session(&log, 500, false);
                ship(&guest, &log, Duration::from_secs(10));
                let status = host.stream_of(name);
                status.verdict.as_ref().unwrap().is_complete()
                    && files_of(&host.collector.guest_dir(name)) == files_of(&log)
            })
            .collect();
        if quota == u64::MAX {
            assert!(
                matches!(hogged.verdict, Some(StreamVerdict::Failed { .. })),
                "{hogged}"
            );
            assert_eq!(others, [false, false], "the full disk fails the others too");
            continue;
        }
        assert!(
            matches!(&hogged.verdict, Some(StreamVerdict::OverQuota { quota }) if quota.contains("262144 bytes")),
            "{hogged}"
        );
        assert_eq!(
            stats.failure.map(|f| f.kind),
            Some(guard::stream::FailureKind::OverQuota)
        );
        assert_eq!(others, [true, true]);
        assert_eq!(
            forensic::verify(&host.collector.guest_dir("vm-hog"))
                .unwrap()
                .problem,
            None
        );
    }
}

/// Inodes: a guest whose log rotates at every record (each file just over the 1 KiB floor)
/// stops at its file quota, and a `rotate` after a tiny file is refused outright; another
/// guest completes on a filesystem of 64 inodes. Without the file quota the rotations take
/// every inode and the other guest's stream fails.
#[test]
fn inode_exhaustion_stops_at_the_file_quota() {
    if !guard_tests::host::root_or_skip("inode_exhaustion_stops_at_the_file_quota") {
        return;
    }
    for files in [8, u64::MAX] {
        let scratch = TempDir::new("inodes");
        let (mount, _unmount) = small_fs(&scratch, "size=8m,nr_inodes=64");
        let options = no_reserve(
            mount.join("collected"),
            Quota {
                guest_files: files,
                ..Quota::default()
            },
        );
        let host = Host::with(&scratch, options);
        let hog = host.guest("vm-files");
        let log = scratch.0.join("files-log");
        padded_log(&log, 200, 1_100, Some(1_500));
        ship(&hog, &log, Duration::from_secs(30));
        let hogged = host.stream_of("vm-files");
        let guest = host.guest("vm-ok");
        let ok_log = scratch.0.join("ok-log");
        padded_log(&ok_log, 40, 40, Some(64 << 10));
        ship(&guest, &ok_log, Duration::from_secs(10));
        let ok = host.stream_of("vm-ok");
        let completed = ok.verdict.as_ref().unwrap().is_complete()
            && files_of(&host.collector.guest_dir("vm-ok")) == files_of(&ok_log);
        if files == u64::MAX {
            assert!(
                matches!(hogged.verdict, Some(StreamVerdict::Failed { .. })),
                "{hogged}"
            );
            assert!(!completed, "{ok}");
            continue;
        }
        assert!(
            matches!(&hogged.verdict, Some(StreamVerdict::OverQuota { quota }) if quota.contains("8 files")),
            "{hogged}"
        );
        assert!(completed, "{ok}");
    }
    // A rotate after 300 bytes: no writer makes one (it rotates only past 1 KiB).
    let scratch = TempDir::new("tiny-rotate");
    let host = Host::start(&scratch);
    let tiny = host.listen("vm-tiny", None);
    let start = forge(0, "start", "{}", guard::forensic::GENESIS);
    let rotate = forge(
        1,
        "rotate",
        &format!(
            r#"{{"prev_file":"guard-000000.jsonl","prev_records":1,"prev_bytes":{}}}"#,
            start.len()
        ),
        &head_after(&start),
    );
    let (mut raw, _) = Raw::handshake(&tiny.socket, "vm-tiny", None);
    raw.send(&start).unwrap();
    raw.send(&rotate).unwrap();
    let status = host.stream_of("vm-tiny");
    assert!(
        status.to_string().contains("a rotate after only"),
        "{status}"
    );
    assert_eq!(files_of(&host.collector.guest_dir("vm-tiny")).len(), 1);
}

/// Links planted under the store (a guest's directory pointing elsewhere, a guest's log file
/// pointing at a file outside): those guests' streams fail naming the link, the targets are
/// untouched, and another guest completes.
#[test]
fn links_in_the_store_are_never_followed() {
    let scratch = TempDir::new("links");
    let store = scratch.0.join("collected");
    let outside = scratch.0.join("outside");
    std::fs::create_dir_all(store.join("vm-file")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, store.join("vm-dir")).unwrap();
    let target = outside.join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&target, store.join("vm-file/guard-000000.jsonl")).unwrap();
    let host = Host::start(&scratch);
    let log = scratch.0.join("log");
    write_session(&log, 20, false);
    for name in ["vm-dir", "vm-file"] {
        let guest = host.guest(name);
        let stats = ship(&guest, &log, Duration::from_secs(5));
        let status = host.verdict_of(Some(name));
        assert!(
            status.to_string().contains("is a symbolic link: refused"),
            "{status}"
        );
        assert_eq!(
            stats.failure.map(|f| f.kind),
            Some(guard::stream::FailureKind::HostFailed)
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing made outside"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    let guest = host.guest("vm-ok");
    assert!(ship(&guest, &log, Duration::from_secs(30)).delivered);
    assert_eq!(files_of(&store.join("vm-ok")), files_of(&log));
}

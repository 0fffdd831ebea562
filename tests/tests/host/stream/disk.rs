//! The store's disk: a full filesystem, per-guest quotas of bytes and files, the free-space
//! reserve, inode exhaustion, links planted under the store.
use std::{path::PathBuf, time::Duration};

use super::harness::*;
use guard::forensic;
use guard::stream::{CollectorOptions, Quota};

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
    assert!(verdict.contains("No space left on device"), "{full}");
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

//! A directory of VMs coming and going (`--vm-dir`): a VM's directory renamed into place with
//! its key gets a listener under its name; a new key replaces the old one for the next
//! connection; a directory without a key, or named with a leading dot, gets none; the listener
//! goes with the directory.
use std::time::Duration;

use super::harness::*;
use guard::stream::{RefusalCode, StreamKey, VmDir, wire::Control};

fn wait_listening(host: &Host, name: &str, wanted: bool) {
    wait_for(&format!("{name} listened for: {wanted}"), || {
        host.collector.listening().iter().any(|n| n == name) == wanted
    });
}

#[test]
fn vms_come_and_go_with_their_directories_and_keys() {
    let scratch = TempDir::new("vmdir");
    let host = Host::start(&scratch);
    let vms = scratch.0.join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let vm_dir = VmDir {
        rescan: Duration::from_millis(100),
        ..VmDir::new(&vms, 7000)
    };
    host.collector.watch_vm_dir(vm_dir.clone()).unwrap();

    // In the making (a dot), then in place with its key.
    let making = vms.join(".vm-1");
    std::fs::create_dir_all(&making).unwrap();
    let key = StreamKey::generate().unwrap();
    key.write_new(&making.join("key")).unwrap();
    std::fs::create_dir_all(vms.join("vm-keyless")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        host.collector.listening().is_empty(),
        "{:?}",
        host.collector.listening()
    );
    std::fs::rename(&making, vms.join("vm-1")).unwrap();
    wait_listening(&host, "vm-1", true);
    let guest = GuestEnd {
        name: "vm-1".into(),
        socket: vm_dir.socket("vm-1"),
        key: Some(key.clone()),
    };
    let log = scratch.0.join("log");
    write_session(&log, 30, false);
    assert!(ship(&guest, &log, Duration::from_secs(30)).delivered);
    assert_eq!(files_of(&host.collector.guest_dir("vm-1")), files_of(&log));
    assert_eq!(
        host.collector.listening(),
        ["vm-1"],
        "no listener without a key"
    );

    // A new key: the old one no longer proves anything.
    let renewed = StreamKey::generate().unwrap();
    renewed.write_new(&vms.join("vm-1/.key.new")).unwrap();
    std::fs::rename(vms.join("vm-1/.key.new"), vms.join("vm-1/key")).unwrap();
    wait_for("the new key in force", || {
        let (_raw, answer) = Raw::handshake(&guest.socket, "vm-1", Some(&key));
        matches!(
            answer,
            Control::Refused {
                code: RefusalCode::AuthenticationFailed,
                ..
            }
        )
    });
    // (An earlier stream with the old key may still be closing: the new key's may wait.)
    wait_for("the new key proves vm-1", || {
        let (_raw, answer) = Raw::handshake(&guest.socket, "vm-1", Some(&renewed));
        matches!(answer, Control::Resume(_))
    });

    // The VM goes: so does its listener.
    std::fs::remove_dir_all(vms.join("vm-1")).unwrap();
    wait_listening(&host, "vm-1", false);
}

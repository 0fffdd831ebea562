//! A directory of VMs coming and going. Each subdirectory `DIR/<name>/` with a key file `key`
//! is a guest: the collector listens at `DIR/<name>/vsock_<port>` (a VMM's vsock `uds_path`
//! `DIR/<name>/vsock`), named `<name>`, with that key; a changed key is read again, and the
//! listener goes with the subdirectory or its key. inotify on `DIR` brings the news at once; a
//! rescan every second catches what it cannot (a key written into a directory made earlier).
use std::{
    collections::HashMap,
    os::{fd::FromRawFd, unix::fs::MetadataExt as _},
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    Shared,
    connection::Identity,
    options::{Auth, VmDir},
};
use crate::pipeline::lock;
use crate::stream::{StreamKey, wire};

/// The key file's identity: a new one means a new key.
type KeyStamp = Option<(u64, u64, i64, i64)>;

fn key_stamp(path: &Path) -> KeyStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()))
}

/// The VMs of `vm_dir` now: name → the stamp of its key (None: keyless, with `no_auth`).
fn scan(vm_dir: &VmDir) -> HashMap<String, KeyStamp> {
    let Ok(entries) = std::fs::read_dir(&vm_dir.dir) else {
        return HashMap::new();
    };
    let mut vms = HashMap::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // A link is not a VM's directory (and a name starting with a dot is one in the making).
        if !wire::valid_guest_name(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let stamp = key_stamp(&entry.path().join("key"));
        if stamp.is_some() || vm_dir.no_auth {
            vms.insert(name, stamp);
        }
    }
    vms
}

/// The VM listeners made from the directory: name → the stamp of the key they use.
struct Known {
    listening: HashMap<String, (KeyStamp, Arc<Mutex<Identity>>)>,
    /// Keys that failed to read, not to be warned about again until they change.
    bad_keys: HashMap<String, KeyStamp>,
}

fn auth_of(vm_dir: &VmDir, name: &str, stamp: KeyStamp) -> Result<Auth, String> {
    if stamp.is_none() {
        return Ok(Auth::None);
    }
    StreamKey::read(&vm_dir.dir.join(name).join("key"))
        .map(Auth::Key)
        .map_err(|error| error.to_string())
}

fn rescan(shared: &Arc<Shared>, vm_dir: &VmDir, known: &mut Known) {
    let now = scan(vm_dir);
    known.listening.retain(|name, _| {
        let keep = now.contains_key(name);
        if !keep {
            info!(guest = %name, "the VM's directory or key is gone: no longer listening");
            shared.unlisten(name);
        }
        keep
    });
    for (name, stamp) in now {
        if let Some((held, identity)) = known.listening.get_mut(&name) {
            if *held != stamp {
                match auth_of(vm_dir, &name, stamp) {
                    Ok(auth) => lock(identity).auth = auth,
                    Err(error) => {
                        warn!(guest = %name, %error, "the VM's new key: keeping the old one")
                    }
                }
                *held = stamp;
            }
            continue;
        }
        if known.bad_keys.get(&name) == Some(&stamp) {
            continue;
        }
        let listened = auth_of(vm_dir, &name, stamp).and_then(|auth| {
            let identity = Identity {
                name: name.clone(),
                auth,
            };
            shared
                .listen_as(identity, vm_dir.socket(&name))
                .map_err(|error| error.to_string())
        });
        match listened {
            Ok(identity) => {
                info!(guest = %name, "listening for the VM");
                known.bad_keys.remove(&name);
                known.listening.insert(name, (stamp, identity));
            }
            Err(error) => {
                warn!(guest = %name, %error, "cannot listen for the VM");
                known.bad_keys.insert(name, stamp);
            }
        }
    }
}

/// An inotify instance watching `dir` for subdirectories coming and going (None: inotify
/// failed, the rescan alone keeps up).
fn watch_dir(dir: &Path) -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: inotify_init1 with constant flags.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;
    // SAFETY: a NUL-terminated path and our inotify descriptor.
    if unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), mask) }
        < 0
    {
        return None;
    }
    // SAFETY: the AsyncFd owns the descriptor for as long as it lives.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// Keeps the collector's listeners in step with `vm_dir` until the collector stops.
pub(super) async fn follow(shared: Arc<Shared>, vm_dir: VmDir) {
    let inotify = watch_dir(&vm_dir.dir);
    let mut known = Known {
        listening: HashMap::new(),
        bad_keys: HashMap::new(),
    };
    let mut events = [0u8; 4096];
    loop {
        if shared.stopping() {
            return;
        }
        rescan(&shared, &vm_dir, &mut known);
        let news = async {
            match &inotify {
                Some(fd) => {
                    if let Ok(mut ready) = fd.readable().await {
                        // SAFETY: read(2) into our buffer from our inotify descriptor.
                        let read = unsafe {
                            libc::read(
                                std::os::fd::AsRawFd::as_raw_fd(fd),
                                events.as_mut_ptr().cast(),
                                events.len(),
                            )
                        };
                        if read < 0 {
                            ready.clear_ready();
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = news => {}
            () = tokio::time::sleep(vm_dir.rescan) => {}
        }
    }
}

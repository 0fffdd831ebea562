//! Live snapshots of the kernel's own event files (`memory.events`, `pids.events`) via
//! inotify: the kernel notifies on every change (at most every 10 ms per file), and each
//! change becomes an in-band `kernel_file` event. At tier 0 this is all the live evidence
//! there is.
use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use guard_common::TaskEntry;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, warn};

use super::{hub::Hub, lock};
use crate::{
    cgroup::{KeyedCounts, memory, pids},
    events::{EventDetail, KernelFile},
};

/// The files whose changes are streamed.
pub(crate) const WATCHED_FILES: [&str; 2] = [memory::EVENTS, pids::EVENTS];

/// inotify failed (inside [`GuardError::FileWatch`](crate::GuardError::FileWatch)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileWatchError {
    /// The inotify instance could not be created (at [`Guard::start`](crate::Guard::start)).
    #[error("creating an inotify instance: {0}")]
    Init(std::io::Error),
    /// The runtime could not poll the inotify instance (at
    /// [`Guard::start`](crate::Guard::start)).
    #[error("polling the inotify instance: {0}")]
    Poll(std::io::Error),
    /// A file or directory could not be watched (e.g. the inotify watch limit).
    #[error("watching {path} with inotify: {source}")]
    AddWatch {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

struct Target {
    cgroup_id: u64,
    path: PathBuf,
    kind: TargetKind,
}

enum TargetKind {
    /// An event file whose changes are streamed.
    File(&'static str),
    /// A cgroup directory of a container whose new sub-cgroups are reported.
    Dir(TaskEntry),
}

/// The inotify instance and what each watch descriptor stands for.
#[derive(Clone)]
pub(crate) struct FileWatcher {
    fd: Arc<OwnedFd>,
    targets: Arc<Mutex<HashMap<i32, Target>>>,
}

/// New sub-cgroups of watched containers, as inotify reports them: (container, directory).
pub(crate) type CreatedCgroups = mpsc::UnboundedReceiver<(TaskEntry, PathBuf)>;

impl FileWatcher {
    /// Creates the instance, registered with the runtime here (a watcher that could not poll
    /// is refused at start), and spawns the task that turns notifications into events.
    pub fn start(
        hub: Arc<Mutex<Hub>>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>, CreatedCgroups), FileWatchError> {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a new fd we own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(FileWatchError::Init(std::io::Error::last_os_error()));
        }
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        // SAFETY: the Arc keeps the fd open and unchanged for as long as the AsyncFd lives.
        let registered = unsafe {
            AsyncFd::register_with_interest(
                SharedFd(Arc::clone(&fd)),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|error| FileWatchError::Poll(error.into_parts().1))?;
        let targets = Arc::new(Mutex::new(HashMap::new()));
        let (created_sender, created) = mpsc::unbounded_channel();
        let task = super::task::spawn(
            "the inotify watcher",
            Arc::clone(&hub),
            run(registered, Arc::clone(&targets), hub, created_sender),
        );
        Ok((Self { fd, targets }, task, created))
    }

    /// Reports sub-cgroups created in `dir`, a cgroup of the container `container` names.
    pub fn add_dir(&self, container: TaskEntry, dir: &Path) -> Result<(), FileWatchError> {
        let wd = self.add_watch(dir, libc::IN_CREATE | libc::IN_ONLYDIR)?;
        lock(&self.targets).insert(
            wd,
            Target {
                cgroup_id: container.cgroup_id,
                path: dir.to_path_buf(),
                kind: TargetKind::Dir(container),
            },
        );
        Ok(())
    }

    fn add_watch(&self, path: &Path, mask: u32) -> Result<i32, FileWatchError> {
        let error = |source| FileWatchError::AddWatch {
            path: path.to_path_buf(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| error(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(error(std::io::Error::last_os_error()));
        }
        Ok(wd)
    }

    /// Watches a container's event files (those that exist: a controller may be disabled).
    pub fn add(&self, cgroup_id: u64, cgroup: &Path) -> Result<(), FileWatchError> {
        for file in WATCHED_FILES {
            let path = cgroup.join(file);
            if !path.exists() {
                continue;
            }
            let wd = self.add_watch(&path, libc::IN_MODIFY)?;
            lock(&self.targets).insert(
                wd,
                Target {
                    cgroup_id,
                    path,
                    kind: TargetKind::File(file),
                },
            );
        }
        Ok(())
    }

    /// Stops watching a container's files.
    pub fn remove(&self, cgroup_id: u64) {
        let mut targets = lock(&self.targets);
        targets.retain(|wd, target| {
            if target.cgroup_id != cgroup_id {
                return true;
            }
            // SAFETY: a valid fd and a watch descriptor it returned.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *wd) };
            false
        });
    }
}

/// Borrows the shared fd for AsyncFd without taking ownership.
struct SharedFd(Arc<OwnedFd>);

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Turns notifications into events until polling or reading fails (the guard's health then
/// says so: kernel event files are no longer streamed); aborted when the guard goes away.
async fn run(
    fd: AsyncFd<SharedFd>,
    targets: Arc<Mutex<HashMap<i32, Target>>>,
    hub: Arc<Mutex<Hub>>,
    created: mpsc::UnboundedSender<(TaskEntry, PathBuf)>,
) -> Result<(), String> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let mut ready = fd
            .readable()
            .await
            .map_err(|error| format!("polling inotify failed: {error}"))?;
        // SAFETY: reading into a live buffer of the given length.
        let read = unsafe {
            libc::read(
                fd.get_ref().as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if read < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                ready.clear_ready();
                continue;
            }
            return Err(format!("reading inotify failed: {error}"));
        }
        let changed = changed_descriptors(&buffer[..read as usize]);
        let snapshots: Vec<(u64, EventDetail)> = {
            let targets = lock(&targets);
            for (wd, name) in created_dirs(&buffer[..read as usize]) {
                if let Some(Target {
                    path,
                    kind: TargetKind::Dir(container),
                    ..
                }) = targets.get(&wd)
                {
                    // The receiver lives as long as the guard; a send after it is harmless.
                    let _ = created.send((*container, path.join(name)));
                }
            }
            changed
                .iter()
                .filter_map(|wd| targets.get(wd))
                .filter_map(snapshot)
                .collect()
        };
        let mut hub = lock(&hub);
        for (cgroup_id, detail) in snapshots {
            hub.publish_synthetic(cgroup_id, crate::events::EventSource::CgroupFiles, detail);
        }
    }
}

/// Watch descriptors of the MODIFY notifications in a buffer of `inotify_event`s, each once.
fn changed_descriptors(buffer: &[u8]) -> Vec<i32> {
    const HEADER: usize = size_of::<libc::inotify_event>();
    let mut changed = Vec::new();
    let mut offset = 0;
    while offset + HEADER <= buffer.len() {
        // SAFETY: bounds checked above; read_unaligned needs no alignment.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buffer[offset..].as_ptr().cast()) };
        if event.mask & libc::IN_MODIFY != 0 && !changed.contains(&event.wd) {
            changed.push(event.wd);
        }
        offset += HEADER + event.len as usize;
    }
    changed
}

/// The directories created, by watch descriptor and name, in a buffer of `inotify_event`s.
fn created_dirs(buffer: &[u8]) -> Vec<(i32, std::ffi::OsString)> {
    use std::os::unix::ffi::OsStrExt as _;
    const HEADER: usize = size_of::<libc::inotify_event>();
    let mut created = Vec::new();
    let mut offset = 0;
    while offset + HEADER <= buffer.len() {
        // SAFETY: bounds checked above; read_unaligned needs no alignment.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buffer[offset..].as_ptr().cast()) };
        let name_start = offset + HEADER;
        let name_end = (name_start + event.len as usize).min(buffer.len());
        if event.mask & libc::IN_CREATE != 0 && event.mask & libc::IN_ISDIR != 0 {
            // The name is NUL-padded to the record's length.
            let name = &buffer[name_start..name_end];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if !name.is_empty() {
                created.push((event.wd, std::ffi::OsStr::from_bytes(name).to_os_string()));
            }
        }
        offset = name_start + event.len as usize;
    }
    created
}

fn snapshot(target: &Target) -> Option<(u64, EventDetail)> {
    let TargetKind::File(file) = target.kind else {
        return None;
    };
    let text = match std::fs::read_to_string(&target.path) {
        Ok(text) => text,
        Err(error) => {
            debug!(path = %target.path.display(), %error, "event file gone");
            return None;
        }
    };
    let counts = KeyedCounts::parse(&target.path, &text)
        .inspect_err(|error| warn!(%error, "unreadable kernel event file"))
        .ok()?;
    Some((
        target.cgroup_id,
        EventDetail::KernelFile(KernelFile { file, counts }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notifications_once_per_descriptor() {
        let mut buffer = Vec::new();
        for (wd, mask, name_len) in [
            (1, libc::IN_MODIFY, 0u32),
            (2, libc::IN_IGNORED, 16),
            (1, libc::IN_MODIFY, 0),
        ] {
            let event = libc::inotify_event {
                wd,
                mask,
                cookie: 0,
                len: name_len,
            };
            // SAFETY: viewing a plain C struct as bytes.
            buffer.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    (&event as *const libc::inotify_event).cast::<u8>(),
                    size_of::<libc::inotify_event>(),
                )
            });
            buffer.extend(std::iter::repeat_n(0u8, name_len as usize));
        }
        assert_eq!(changed_descriptors(&buffer), vec![1]);
        // A truncated trailing header is ignored, not read past the end.
        assert_eq!(changed_descriptors(&buffer[..buffer.len() - 3]), vec![1]);
    }
}

//! Every path under the store, opened relative to a directory descriptor and never through a
//! symbolic link (openat with O_NOFOLLOW; O_EXCL for new files): a link planted in the store
//! makes the guest's stream fail with a verdict naming it, and its target is never touched.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

use crate::forensic::layout::{self, LOCK_FILE, LogFile};

/// A directory under the store, open, with the path it was opened as (for messages).
pub(crate) struct DirFd {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// What went wrong, naming the path.
pub(crate) fn error(path: &Path, error: impl Into<io::Error>) -> String {
    let error: io::Error = error.into();
    if error.raw_os_error() == Some(libc::ELOOP) {
        format!("{} is a symbolic link: refused", path.display())
    } else {
        format!("{}: {error}", path.display())
    }
}

const NOFOLLOW: OFlags = OFlags::NOFOLLOW.union(OFlags::CLOEXEC);

impl DirFd {
    /// The store's own directory, created if missing (the operator's path: it may be a link).
    pub fn root(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The subdirectory `name`, created (mode 0750) if missing; a symbolic link there is
    /// refused.
    pub fn subdir(&self, name: &str) -> Result<Self, String> {
        let path = self.path.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o750)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => return Err(error(&path, errno)),
        }
        // O_DIRECTORY on a link to a directory fails with ENOTDIR under O_NOFOLLOW.
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            rustix::io::Errno::NOTDIR if self.is_symlink(name) => {
                format!("{} is a symbolic link: refused", path.display())
            }
            errno => error(&path, errno),
        })?;
        Ok(Self { fd, path })
    }

    fn is_symlink(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink)
    }

    /// The log files in this directory, in index order (a duplicate index is an error).
    pub fn log_files(&self) -> Result<Vec<LogFile>, String> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd).map_err(|e| error(&self.path, e))?;
        let mut files = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| error(&self.path, e))?;
            let Some(index) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(layout::parse_file_name)
            else {
                continue;
            };
            files.push(LogFile {
                index,
                path: self.path.join(entry.file_name().to_string_lossy().as_ref()),
            });
        }
        files.sort_by_key(|file| file.index);
        if let Some(pair) = files.windows(2).find(|w| w[0].index == w[1].index) {
            return Err(format!(
                "{} holds two files with index {}",
                self.path.display(),
                pair[0].index
            ));
        }
        Ok(files)
    }

    /// Opens `name` for reading.
    pub fn read(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(&self.fd, name, OFlags::RDONLY | NOFOLLOW, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// Opens the existing `name` for appending.
    pub fn append(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::APPEND | NOFOLLOW;
        Ok(File::from(rustix::fs::openat(
            &self.fd,
            name,
            flags,
            Mode::empty(),
        )?))
    }

    /// Creates `name`, which must not exist (O_EXCL never follows a link either).
    pub fn create(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::EXCL | NOFOLLOW;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o640))?;
        Ok(File::from(fd))
    }

    /// The size of `name`, without following a link.
    pub fn size(&self, name: &str) -> io::Result<u64> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(stat.st_size as u64)
    }

    /// Removes `name` (never a link's target: unlink removes the link itself).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// The writer's lock (`guard.lock`), taken without waiting: no two collectors (or a repair
    /// and a collector) ever write one copy.
    pub fn lock(&self) -> Result<OwnedFd, String> {
        let path = self.path.join(LOCK_FILE);
        let flags = OFlags::WRONLY | OFlags::CREATE | NOFOLLOW;
        let fd = rustix::fs::openat(&self.fd, LOCK_FILE, flags, Mode::from_raw_mode(0o640))
            .map_err(|e| error(&path, e))?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|errno| {
            if errno == rustix::io::Errno::WOULDBLOCK {
                format!("{} is locked by another process", self.path.display())
            } else {
                error(&path, errno)
            }
        })?;
        Ok(fd)
    }

    /// Free bytes (for an unprivileged writer) and free inodes on this directory's filesystem.
    pub fn free(&self) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::fstatvfs(self.fd.as_fd())?;
        Ok((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_favail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_under_the_store_are_refused_and_their_targets_untouched() {
        let scratch = std::env::temp_dir().join(format!("guard-nofollow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let elsewhere = scratch.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let root = DirFd::root(&scratch.join("store")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, scratch.join("store/vm-link")).unwrap();
        let refused = root.subdir("vm-link").err().unwrap();
        assert!(
            refused.ends_with("vm-link is a symbolic link: refused"),
            "{refused}"
        );
        let guest = root.subdir("vm-a").unwrap();
        let target = elsewhere.join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, scratch.join("store/vm-a/guard-000000.jsonl")).unwrap();
        for result in [
            guest.append("guard-000000.jsonl"),
            guest.read("guard-000000.jsonl"),
        ] {
            let message = error(
                &guest.path.join("guard-000000.jsonl"),
                result.err().unwrap(),
            );
            assert!(
                message.ends_with("is a symbolic link: refused"),
                "{message}"
            );
        }
        assert!(guest.create("guard-000000.jsonl").is_err());
        std::os::unix::fs::symlink(&target, scratch.join("store/vm-a/guard.lock")).unwrap();
        assert!(guest.lock().unwrap_err().contains("symbolic link"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}

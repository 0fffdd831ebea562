//! The cgroup v2 hierarchy: where it is mounted, a cgroup's id and level, its controllers.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use super::CgroupError;

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h (libc's type for it differs between gnu and musl).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The filesystem magic of `path` (statfs `f_type`).
fn filesystem_magic(path: &Path) -> std::io::Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })?;
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Magics are 32-bit; f_type is signed on some libcs.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as u64 & 0xffff_ffff)
}

/// A readable name for a filesystem magic, for errors.
fn filesystem_name(magic: u64) -> String {
    let name = match magic {
        0x0102_1994 => "tmpfs",
        0x0000_ef53 => "ext2/3/4",
        0x9123_683e => "btrfs",
        0x5846_5342 => "xfs",
        0x794c_7630 => "overlayfs",
        0x0000_9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x0027_e0eb => "cgroup v1",
        0x7472_6163 => "tracefs",
        0x6462_6720 => "debugfs",
        0x8584_58f6 => "ramfs",
        _ => return format!("a filesystem with magic {magic:#010x}"),
    };
    name.to_string()
}

/// The mounted cgroup v2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup` in a pure v2 guest).
    pub mount: PathBuf,
}

/// A cgroup as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The cgroup id, which is the inode number of its directory in cgroupfs
    /// (what `bpf_get_current_cgroup_id()` returns).
    pub id: u64,
    /// Depth below the root (root = 0), the level `bpf_get_current_ancestor_cgroup_id` takes.
    pub level: u32,
}

impl Hierarchy {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`. On a hybrid host it is
    /// `/sys/fs/cgroup/unified`; in a pure v2 guest `/sys/fs/cgroup`.
    pub fn find() -> Result<Self, CgroupError> {
        let mountinfo = PathBuf::from("/proc/self/mountinfo");
        let text = fs::read_to_string(&mountinfo).map_err(|source| CgroupError::Read {
            path: mountinfo.clone(),
            source,
        })?;
        parse_cgroup2_mount(&text)
            .map(|mount| Self { mount })
            .ok_or(CgroupError::NotMounted { mountinfo })
    }

    /// Controllers this hierarchy offers at its root (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let path = self.mount.join("cgroup.controllers");
        let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    }

    /// `path` as the kernel names the cgroup (`/guard/web/worker`, as in /proc/PID/cgroup);
    /// a path outside the mount is shown as it is.
    pub fn cgroup_name(&self, path: &Path) -> String {
        match path.strip_prefix(&self.mount) {
            Ok(relative) => format!("/{}", relative.display()),
            Err(_) => path.display().to_string(),
        }
    }

    /// The id and level of the cgroup at `path` (which must be inside this hierarchy).
    pub fn identify(&self, path: &Path) -> Result<CgroupIdentity, CgroupError> {
        let relative = path
            .strip_prefix(&self.mount)
            .map_err(|_| CgroupError::NotUnderMount {
                path: path.to_path_buf(),
                mount: self.mount.clone(),
            })?;
        let mut level = 0u32;
        for component in relative.components() {
            match component {
                Component::Normal(_) => level += 1,
                // `..` or `.` would make the level lie about the real depth.
                _ => {
                    return Err(CgroupError::NotUnderMount {
                        path: path.to_path_buf(),
                        mount: self.mount.clone(),
                    });
                }
            }
        }
        let max = guard_common::MAX_CGROUP_LEVEL - 1;
        if level > max {
            return Err(CgroupError::TooDeep {
                path: path.to_path_buf(),
                level,
                max,
            });
        }
        let read_error = |source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        };
        // A path can sit under the mount yet not be a cgroup: a file, or another filesystem
        // mounted there. Tell which, rather than a bare I/O error.
        let magic = filesystem_magic(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CgroupError::Missing {
                path: path.to_path_buf(),
            },
            _ => read_error(source),
        })?;
        if magic != CGROUP2_SUPER_MAGIC {
            return Err(CgroupError::NotCgroup2 {
                path: path.to_path_buf(),
                filesystem: filesystem_name(magic),
            });
        }
        let metadata = fs::metadata(path).map_err(read_error)?;
        if !metadata.is_dir() {
            return Err(CgroupError::NotADirectory {
                path: path.to_path_buf(),
                mount: self.mount.clone(),
            });
        }
        fs::metadata(path.join("cgroup.procs")).map_err(read_error)?;
        let id = metadata.ino();
        Ok(CgroupIdentity { id, level })
    }
}

/// The mount point of the first cgroup2 filesystem in a mountinfo text.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional…] - fstype source …
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 3 < bytes.len() {
            let digits = &bytes[index + 1..index + 4];
            if digits.iter().all(|digit| (b'0'..=b'7').contains(digit)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 31 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_v2_mount_on_a_hybrid_host() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            parse_cgroup2_mount(&HYBRID.replace("cgroup2", "cgroup")),
            None
        );
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn level_counts_components_and_rejects_escapes() {
        let hierarchy = Hierarchy {
            mount: PathBuf::from("/nonexistent-cgroup-root"),
        };
        let error = hierarchy
            .identify(Path::new("/elsewhere/x"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/elsewhere/x"), "{error}");
        let error = hierarchy
            .identify(Path::new("/nonexistent-cgroup-root/a/../b"))
            .unwrap_err();
        assert!(matches!(error, CgroupError::NotUnderMount { .. }));
    }
}

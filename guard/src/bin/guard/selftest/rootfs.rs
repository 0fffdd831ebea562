//! The container's root filesystem: hard links, no copies (a 128 MiB guest has no memory to
//! spare).
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A rootfs of hard links (no copy: a 128 MiB guest has no memory to spare) to busybox, the
/// stress program and the shared libraries they need.
pub fn make_rootfs(stress: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = PathBuf::from("/tmp/waves-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    link(stress, &rootfs.join("bin/guard-stress"))?;
    link(Path::new("/bin/busybox"), &rootfs.join("bin/busybox"))?;
    for applet in ["sh", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    for libs in ["/lib", "/lib64", "/usr/lib"] {
        let source = Path::new(libs);
        if source.is_dir() {
            link_tree(source, &rootfs.join(libs.trim_start_matches('/')))?;
        }
    }
    Ok(rootfs)
}

fn link(source: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::hard_link(source, target)
        .or_else(|_| std::fs::copy(source, target).map(|_| ()))
        .with_context(|| format!("linking {} to {}", source.display(), target.display()))
}

fn link_tree(source: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let destination = target.join(entry.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &destination)?;
        } else if kind.is_dir() {
            link_tree(&entry.path(), &destination)?;
        } else {
            link(&entry.path(), &destination)?;
        }
    }
    Ok(())
}

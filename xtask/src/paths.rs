//! Where things live: the workspace root, its target dir, the guest-kernel cache.

use std::path::PathBuf;

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo target dir: `$CARGO_TARGET_DIR` when set (each worktree uses its own), else the
/// workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where `cargo xtask setup` unpacks guest kernels: `$GUARD_KERNELS_DIR` when set, else
/// `<target>/guest-kernels`.
pub fn kernels_dir() -> PathBuf {
    match std::env::var_os("GUARD_KERNELS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => target_dir().join("guest-kernels"),
    }
}

/// Directories searched for kernels, in order: the configured one, then the workspace's own
/// `target/guest-kernels` (so a worktree with a private CARGO_TARGET_DIR still finds kernels
/// that setup put in the default place).
pub fn kernel_search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![kernels_dir()];
    let default = workspace_root().join("target").join("guest-kernels");
    if !dirs.contains(&default) {
        dirs.push(default);
    }
    dirs
}

/// The manifest `cargo xtask setup` leaves in each kernel folder (`key=value` lines:
/// `package`, `version`, `vmlinuz` relative to the folder).
pub const KERNEL_MANIFEST: &str = "guard-kernel.txt";

/// The kernel series setup installs and the harness knows by name.
pub const KERNEL_SERIES: &[&str] = &["6.1", "6.12"];

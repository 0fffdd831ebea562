//! Putting a process into a cgroup.
use std::{ffi::CString, os::unix::process::CommandExt, path::Path, process::Command};

use super::CgroupError;

/// Makes `command` start inside `cgroup` with its own `oom_score_adj`: both are written between
/// fork and exec, so the command's first instruction already runs inside, with its score.
pub fn command_inside(
    command: &mut Command,
    cgroup: &Path,
    oom_score_adj: i32,
) -> Result<(), CgroupError> {
    let procs_path = cgroup.join("cgroup.procs");
    let procs =
        CString::new(procs_path.clone().into_os_string().into_encoded_bytes()).map_err(|_| {
            CgroupError::Write {
                path: procs_path,
                value: "0".to_string(),
                source: std::io::ErrorKind::InvalidInput.into(),
            }
        })?;
    let score = CString::new(oom_score_adj.to_string()).expect("an integer has no NUL");
    // SAFETY: the closure only makes async-signal-safe syscalls on pre-built C strings.
    unsafe {
        command.pre_exec(move || {
            write_file(c"/proc/self/oom_score_adj", score.as_bytes())?;
            write_file(&procs, b"0")
        });
    }
    Ok(())
}

/// Writes `bytes` to the file at `path`. Runs between fork and exec: no allocation.
fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

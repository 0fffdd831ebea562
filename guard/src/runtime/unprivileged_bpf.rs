//! bpf(2) closed to unprivileged processes before any container runs.
//!
//! Debian's kernels ship `kernel.unprivileged_bpf_disabled = 2`; lean guest kernels (libkrunfw's)
//! leave it at 0, and a container, whose root holds neither CAP_BPF nor CAP_SYS_ADMIN, could
//! then create BPF maps and load socket filters of its own: kernel memory outside its cgroup's
//! limits and an attack surface the guard does not need to offer. [`Runtime::new`](super::Runtime::new)
//! closes it unless [`RuntimeOptions::allow_unprivileged_bpf`](super::RuntimeOptions) says not to.
use super::RuntimeError;

const SYSCTL: &str = "/proc/sys/kernel/unprivileged_bpf_disabled";

/// `kernel.unprivileged_bpf_disabled` before and after [`close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UnprivilegedBpf {
    /// The value before (0: open to every process).
    pub before: u8,
    /// The value after (1 or 2: closed).
    pub after: u8,
}

fn read() -> Result<u8, RuntimeError> {
    std::fs::read_to_string(SYSCTL)
        .map(|text| text.trim().parse().unwrap_or(0))
        .map_err(|source| RuntimeError::Io {
            what: format!("reading {SYSCTL}"),
            source,
        })
}

/// Closes bpf(2) to processes without CAP_BPF: `2` (disabled; an administrator may reopen it),
/// unless it is disabled already.
pub fn close() -> Result<UnprivilegedBpf, RuntimeError> {
    let before = read()?;
    if before == 0 {
        std::fs::write(SYSCTL, "2").map_err(|source| RuntimeError::Io {
            what: format!("writing 2 to {SYSCTL}"),
            source,
        })?;
        tracing::info!(
            "closed bpf(2) to unprivileged processes (kernel.unprivileged_bpf_disabled = 2)"
        );
    }
    Ok(UnprivilegedBpf {
        before,
        after: read()?,
    })
}

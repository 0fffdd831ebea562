//! Keeping the agent's own OOM protection intact around libcontainer.
//!
//! libcontainer writes the container's `oomScoreAdj` into `/proc/self/oom_score_adj` of the
//! *calling* process before it clones (so the container inherits it), and makes the caller
//! non-dumpable. An agent at -1000 would be left killable after its first container start.
//! Creating from a child process is no way out: the container's init is cloned as a sibling
//! of libcontainer's intermediate process, i.e. as a child of the caller, which is what lets
//! the caller wait for it. So every libcontainer call that clones runs inside
//! [`preserving_caller`], which saves the score and dumpable flag, restores both, and checks.
//! A process-wide lock serialises those calls: two overlapping creates would otherwise save
//! each other's temporary score as "the agent's".
use std::{fs, io, sync::Mutex};

use super::RuntimeError;

const OWN_SCORE: &str = "/proc/self/oom_score_adj";

static CALLER_STATE: Mutex<()> = Mutex::new(());

/// The calling process's `oom_score_adj`.
pub fn own_oom_score_adj() -> Result<i32, RuntimeError> {
    read_score(OWN_SCORE)
}

/// The `oom_score_adj` of process `pid`.
pub fn oom_score_adj_of(pid: i32) -> Result<i32, RuntimeError> {
    read_score(&format!("/proc/{pid}/oom_score_adj"))
}

/// Sets the `oom_score_adj` of process `pid` (a created container's init, before it starts).
pub fn set_oom_score_adj_of(pid: i32, score: i32) -> Result<(), RuntimeError> {
    write_score(&format!("/proc/{pid}/oom_score_adj"), score)
}

fn read_score(path: &str) -> Result<i32, RuntimeError> {
    let text = fs::read_to_string(path).map_err(|source| RuntimeError::Io {
        what: format!("reading {path}"),
        source,
    })?;
    text.trim().parse().map_err(|_| RuntimeError::Io {
        what: format!("parsing {path}"),
        source: io::Error::new(io::ErrorKind::InvalidData, text.trim().to_string()),
    })
}

fn write_score(path: &str, score: i32) -> Result<(), RuntimeError> {
    fs::write(path, score.to_string()).map_err(|source| RuntimeError::Io {
        what: format!("writing {score} to {path}"),
        source,
    })
}

/// Sets the caller's score, for children to inherit. Only inside [`preserving_caller`], which
/// puts the caller's own score back.
pub(crate) fn set_own_oom_score_adj(score: i32) -> Result<(), RuntimeError> {
    write_score(OWN_SCORE, score)
}

fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) == 1 }
}

fn set_dumpable(on: bool) {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on));
    }
}

/// Runs `f` (a libcontainer call that may rewrite the caller's score) and restores the
/// caller's `oom_score_adj` and dumpable flag afterwards, whatever `f` returned. An error
/// here means the agent's protection could not be confirmed: that outranks `f`'s result.
pub fn preserving_caller<T>(f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
    let _serialised = CALLER_STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let score = own_oom_score_adj()?;
    let was_dumpable = dumpable();
    let result = f();
    let after = own_oom_score_adj()?;
    if after != score {
        tracing::debug!(
            from = after,
            to = score,
            "restoring the caller's oom_score_adj"
        );
        write_score(OWN_SCORE, score)?;
    }
    if dumpable() != was_dumpable {
        set_dumpable(was_dumpable);
    }
    let restored = own_oom_score_adj()?;
    if restored != score {
        return Err(RuntimeError::CallerScore {
            expected: score,
            found: restored,
        });
    }
    Ok(result)
}

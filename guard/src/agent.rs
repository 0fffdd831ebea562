//! The agent's side of one container's life, in the order that makes the evidence complete:
//! create (the init waits), watch, log `limits_applied`, start; the caller's work; then stop
//! (wait for the init, or kill everything), unwatch (the final report, read while the kernel's
//! event files still exist), delete. `guard run` and `guard selftest` are built on it, and an
//! agent that links guard should be too.
//!
//! An agent has threads (tokio's, guard's), and libcontainer's exec clones its caller: give the
//! runtime an [`ExecHelper`](crate::runtime::ExecHelper), a binary of yours whose `main` calls
//! [`serve_exec_helper`](crate::runtime::serve_exec_helper) for the helper's arguments, so each
//! exec clones from a fresh single-threaded process instead (`guard` does, as `guard
//! exec-helper`).
//!
//! ```no_run
//! # async fn agent() -> Result<(), guard::agent::AgentError> {
//! use guard::{Guard, GuardOptions, agent, limits::LimitRequest, limits::MemInfo, runtime};
//!
//! let guard = Guard::start(GuardOptions::default()).await?;
//! let runtime = runtime::Runtime::new(runtime::RuntimeOptions {
//!     exec_helper: Some(runtime::ExecHelper::this_binary(&["exec-helper"])?),
//!     ..runtime::RuntimeOptions::default()
//! })?;
//! let limits = LimitRequest::default().resolve(&MemInfo::read()?)?;
//! let source = runtime::Source::Rootfs {
//!     rootfs: "/srv/rootfs".into(),
//!     args: vec!["sh".into(), "-c".into(), "echo hello".into()],
//!     env: Vec::new(),
//! };
//! let running = agent::supervise(&guard, &runtime, None, "job-1", &source, &limits).await?;
//! let finished = running.finish(agent::Ending::InitExits).await?;
//! println!("{}", finished.report.to_text());
//! # Ok(()) }
//! ```
use std::{future::Future, pin::Pin, process::ExitStatus};

use crate::{
    Guard, GuardError,
    limits::{Limits, LimitsError},
    runtime::{Container, CreationRecord, Removed, Runtime, RuntimeError, Source, wait_pid},
    sinks::event_log::{EventLog, EventLogError},
    verdict::report::Report,
};

/// What a container's supervision can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The guard's: watching the container ([`supervise`]) or its final report
    /// ([`Supervised::finish`]).
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The runtime's: creating, starting, exec'ing into, killing, waiting for or deleting the
    /// container.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Limits that do not resolve.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The `limits_applied` record could not be written to the forensic log ([`supervise`]).
    #[error("container {id}: logging {what}: {source}")]
    Log {
        /// The container.
        id: String,
        /// The record's kind.
        what: &'static str,
        /// The log's error.
        source: EventLogError,
    },
    /// The blocking task that ran an exec panicked or was cancelled.
    #[error("container {id}: the task running an exec failed: {message}")]
    ExecTask {
        /// The container.
        id: String,
        /// The task's join error.
        message: String,
    },
    /// The blocking task that waited for a process panicked or was cancelled.
    #[error("container {id}: the task waiting for process {pid} failed: {message}")]
    Wait {
        /// The container.
        id: String,
        /// The process waited for.
        pid: i32,
        /// The task's join error.
        message: String,
    },
}

/// A container that is created, watched and started.
pub struct Supervised<'g> {
    guard: &'g Guard,
    container: Container,
    created: CreationRecord,
}

/// How the container's life ends.
///
/// `InitExitsOrStop(Box::pin(stop_signal))`: wait for the init unless `stop_signal` comes first.
pub enum Ending<'a> {
    /// Wait until the init exits by itself.
    InitExits,
    /// Wait for the init, but once `F` resolves (a stop signal, a deadline) kill every process
    /// of the container and wait for the init then.
    InitExitsOrStop(Pin<Box<dyn Future<Output = ()> + 'a>>),
    /// Kill every process of the container now (a workload that never ends by itself).
    KillNow,
}

/// What the container's life left behind.
pub struct Finished {
    /// What the kernel held when the container was created.
    pub created: CreationRecord,
    /// How the init exited.
    pub status: ExitStatus,
    /// Whether the stop (or [`Ending::KillNow`]) killed the container.
    pub killed: bool,
    /// The guard's reconciled report, read before the cgroup was removed.
    pub report: Report,
    /// The kernel's event files read just before the cgroup went.
    pub removed: Removed,
    /// The deleted container (its id, cgroup path and timings).
    pub container: Container,
}

/// Creates container `id` (its init waits), watches it with the limits it got, records
/// `limits_applied` in `log` before anything of the container runs, and starts it. On any
/// failure the container is removed again.
pub async fn supervise<'g>(
    guard: &'g Guard,
    runtime: &Runtime,
    log: Option<&EventLog>,
    id: &str,
    source: &Source,
    limits: &Limits,
) -> Result<Supervised<'g>, AgentError> {
    let created = runtime.create(id, source, limits)?;
    let mut container = created.container;
    let record = created.record;
    let started = async {
        guard.watch_limited(id, container.cgroup(), *limits)?;
        if let Some(log) = log {
            log.record("limits_applied", Some(id), &record)
                .await
                .map_err(|source| AgentError::Log {
                    id: id.to_string(),
                    what: "limits_applied",
                    source,
                })?;
        }
        container.start()?;
        Ok::<_, AgentError>(())
    }
    .await;
    if let Err(error) = started {
        // Nothing of it may be left behind; the first error is the one to report.
        let _ = guard.unwatch(id).await;
        let _ = container.delete();
        return Err(error);
    }
    Ok(Supervised {
        guard,
        container,
        created: record,
    })
}

impl<'g> Supervised<'g> {
    /// The running container.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// What the kernel held when it was created (the `limits_applied` record).
    pub fn created(&self) -> &CreationRecord {
        &self.created
    }

    /// Runs `args` inside the container (with the container's OOM score) and waits for it.
    pub async fn exec_and_wait(
        &self,
        args: &[String],
        env: &[String],
    ) -> Result<(i32, ExitStatus), AgentError> {
        let job = self.container.exec_job(args, env);
        let pid = match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(pid) => pid?,
            Err(join) => {
                return Err(AgentError::ExecTask {
                    id: self.container.id().to_string(),
                    message: join.to_string(),
                });
            }
        };
        Ok((pid, self.wait_for(pid).await?))
    }

    async fn wait_for(&self, pid: i32) -> Result<ExitStatus, AgentError> {
        let waited = tokio::task::spawn_blocking(move || wait_pid(pid)).await;
        match waited {
            Ok(status) => Ok(status?),
            Err(join) => Err(self.wait_error(pid, join)),
        }
    }

    fn wait_error(&self, pid: i32, join: tokio::task::JoinError) -> AgentError {
        AgentError::Wait {
            id: self.container.id().to_string(),
            pid,
            message: join.to_string(),
        }
    }

    /// Ends the container's life as `ending` says, then unwatches (the report) and deletes it
    /// (its final event files). The container is deleted whatever happened before.
    pub async fn finish(mut self, ending: Ending<'_>) -> Result<Finished, AgentError> {
        let stopped = self.stop(ending).await;
        let id = self.container.id().to_string();
        let report = self.guard.unwatch(&id).await;
        let removed = self.container.delete();
        let (status, killed) = stopped?;
        Ok(Finished {
            created: self.created,
            status,
            killed,
            report: report?,
            removed: removed?,
            container: self.container,
        })
    }

    async fn stop(&mut self, ending: Ending<'_>) -> Result<(ExitStatus, bool), AgentError> {
        let pid = self.container.init_pid();
        let mut init = tokio::task::spawn_blocking(move || wait_pid(pid));
        let killed = match ending {
            Ending::InitExits => false,
            Ending::KillNow => true,
            Ending::InitExitsOrStop(stop) => tokio::select! {
                status = &mut init => {
                    let status = status.map_err(|join| self.wait_error(pid, join))??;
                    return Ok((status, false));
                }
                () = stop => true,
            },
        };
        if killed {
            self.container.kill(libc::SIGKILL, true)?;
        }
        let status = init.await.map_err(|join| self.wait_error(pid, join))??;
        Ok((status, killed))
    }
}

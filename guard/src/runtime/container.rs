//! A created container: start it, exec into it, signal it, wait for it, delete it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Instant,
};

use libcontainer::{container::Container as Youki, signal::Signal};

use super::{
    CreationRecord, ExecHelper, Removed, RuntimeError, Timings, exec_helper::ExecJob, micros,
    oom_score, wait_pid, youki_error,
};
use crate::{cgroup::EventFiles, container_id::ContainerId};

/// A container created by [`Runtime::create`](super::Runtime::create).
pub struct Container {
    pub(super) id: ContainerId,
    pub(super) inner: Youki,
    pub(super) cgroup: PathBuf,
    pub(super) bundle: PathBuf,
    pub(super) init_pid: i32,
    /// The score its processes get (exec'd ones included).
    pub(super) oom_score_adj: i32,
    /// Where execs clone (see [`ExecHelper`]); None: in this process.
    pub(super) exec_helper: Option<ExecHelper>,
    pub(super) timings: Timings,
    pub(super) deleted: bool,
}

/// A created container together with its `limits_applied` record.
pub struct Created {
    /// The container; its init waits for [`Container::start`].
    pub container: Container,
    /// What the kernel holds for it.
    pub record: CreationRecord,
}

impl Container {
    /// The container's id.
    pub fn id(&self) -> &ContainerId {
        &self.id
    }

    /// The container's cgroup directory (absolute).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The init process as the guest sees it.
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// How long create, start and delete took (0 for what has not happened yet).
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Lets the init exec the container's command. Checks afterwards that the caller's
    /// `oom_score_adj` is what it was (start does not clone, but the check is cheap).
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        let before = oom_score::own_oom_score_adj()?;
        let started = Instant::now();
        self.inner.start().map_err(youki_error("start", &self.id))?;
        self.timings.start_us = micros(started.elapsed());
        let after = oom_score::own_oom_score_adj()?;
        if after != before {
            return Err(RuntimeError::CallerScore {
                expected: before,
                found: after,
            });
        }
        Ok(())
    }

    /// Runs another process in the running container (`exec`), with the container's
    /// `oom_score_adj`. Returns its pid; it is a child of the caller, so [`wait_pid`] can reap
    /// it. Blocks for the handshake (up to the exec deadline, 60 s): async callers run
    /// [`Container::exec_job`] on a blocking thread instead.
    pub fn exec(&self, args: &[String], env: &[String]) -> Result<i32, RuntimeError> {
        self.exec_job(args, env).run()
    }

    /// Everything an exec needs, owned, so that it can run away from the container (on
    /// `tokio::task::spawn_blocking`: a stuck handshake must not hold an async worker, the
    /// single-vCPU guest's only one).
    pub fn exec_job(&self, args: &[String], env: &[String]) -> ExecJob {
        ExecJob {
            id: self.id.clone(),
            state_root: self
                .inner
                .root
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            cgroup: self.cgroup.clone(),
            args: args.to_vec(),
            env: env
                .iter()
                .filter_map(|entry| entry.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            score: self.oom_score_adj,
            helper: self.exec_helper.clone(),
        }
    }

    /// Sends `signal` to the init (or to every process of the container with `all`).
    pub fn kill(&mut self, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let signal = Signal::try_from(signal).map_err(|error| RuntimeError::Signal {
            signal,
            message: error.to_string(),
        })?;
        self.inner
            .kill(signal, all)
            .map_err(youki_error("kill", &self.id))
    }

    /// Waits for the container's init to exit (blocking) and returns its status.
    pub fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        wait_pid(self.init_pid)
    }

    /// Removes the container: snapshots its event files, deletes it (killing what is left),
    /// and checks that the cgroup is gone.
    pub fn delete(&mut self) -> Result<Removed, RuntimeError> {
        let started = Instant::now();
        let final_events = EventFiles::read(&self.cgroup)?;
        if !self.deleted {
            self.inner
                .delete(true)
                .map_err(youki_error("delete", &self.id))?;
            self.deleted = true;
        }
        let _ = fs::remove_dir_all(&self.bundle);
        if self.cgroup.exists() {
            return Err(RuntimeError::CgroupLeft {
                id: self.id.to_string(),
                cgroup: self.cgroup.clone(),
            });
        }
        self.timings.delete_us = micros(started.elapsed());
        Ok(Removed {
            container: self.id.clone(),
            cgroup: self.cgroup.clone(),
            final_events,
        })
    }
}

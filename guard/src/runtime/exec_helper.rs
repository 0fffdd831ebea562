//! Execs cloned from a single-threaded process.
//!
//! libcontainer's exec clones the calling process, and the clone runs Rust code (allocating,
//! logging) until it execs the command. In a multi-threaded caller, a lock that another thread
//! held at the moment of the clone (the allocator's, stdio's) stays held in the clone for
//! ever: the helper hangs in a futex, the exec waits on its channel, and nothing times out
//! (the helper has not joined the container's cgroup yet, where the exec deadline looks).
//! Seen in a guest: four concurrent execs during an OOM storm, and the wave hung silently.
//!
//! An agent therefore hands each exec (and each create, which clones the init the same way)
//! to a fresh helper process, its own binary run with [`ExecHelper`]'s arguments, which calls
//! [`serve`]: one thread, one clone, one answer (the pid, or the error) on file descriptor 3,
//! then it exits. The cloned process is a child of the helper (libcontainer clones it as the
//! sibling of its intermediate); orphaned, it is reparented to the agent, a child subreaper,
//! which waits for it as for any child. The helper shares the agent's stdin, stdout and
//! stderr, so the command does too.
use std::{
    collections::HashMap,
    io::{self, BufRead as _, BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use libcontainer::{container::builder::ContainerBuilder, syscall::syscall::SyscallType};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    RuntimeError, exec_deadline,
    exec_deadline::{Deadline, EXEC_DEADLINE},
    oom_score, youki_error,
};
use crate::container_id::ContainerId;

/// The descriptor a helper reads its request from and writes its answer to.
const CHANNEL_FD: i32 = 3;

/// How to start an exec helper: `program args…`, a binary whose `main` calls [`serve`] when
/// run with these arguments (the `guard` binary: `guard exec-helper`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecHelper {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments (`["exec-helper"]` for the `guard` binary).
    pub args: Vec<String>,
}

impl ExecHelper {
    /// The running binary (`/proc/self/exe` resolved), run with `args`.
    pub fn this_binary(args: &[&str]) -> Result<Self, RuntimeError> {
        let program = std::env::current_exe().map_err(|source| RuntimeError::Io {
            what: "finding this binary for the exec helper".to_string(),
            source,
        })?;
        Ok(Self {
            program,
            args: args.iter().map(|arg| arg.to_string()).collect(),
        })
    }
}

/// One exec into a running container, made by
/// [`Container::exec_job`](super::Container::exec_job); what an exec helper is sent.
#[derive(Serialize, Deserialize)]
pub struct ExecJob {
    pub(super) id: ContainerId,
    pub(super) state_root: PathBuf,
    pub(super) cgroup: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: HashMap<String, String>,
    pub(super) score: i32,
    #[serde(skip)]
    pub(super) helper: Option<ExecHelper>,
}

impl ExecJob {
    /// Clones the process into the container; returns its pid (a child of this process). With
    /// an [`ExecHelper`] the clone happens there, else in this process under a deadline.
    pub fn run(mut self) -> Result<i32, RuntimeError> {
        if let Some(helper) = self.helper.take() {
            return run(Job::Exec(self), &helper, EXEC_DEADLINE);
        }
        let deadline = Deadline::arm(&self.cgroup, EXEC_DEADLINE);
        let id = self.id.clone();
        let built = self.clone_into_container();
        let killed = deadline.disarm();
        match built {
            Err(error) if killed > 0 => Err(RuntimeError::ExecStuck {
                id: id.to_string(),
                killed,
                seconds: EXEC_DEADLINE.as_secs(),
                source: Box::new(error),
            }),
            other => other,
        }
    }

    /// libcontainer's exec, here and now (an exec helper calls it from its only thread).
    pub(super) fn clone_into_container(self) -> Result<i32, RuntimeError> {
        let Self {
            id,
            state_root,
            args,
            env,
            score,
            ..
        } = self;
        let built = oom_score::preserving_caller(|| {
            // libcontainer's exec builds a process spec without oomScoreAdj, so the process
            // would inherit the caller's score (-1000 for an agent: the memcg OOM livelock).
            // Give the caller the container's score for the clone; preserving_caller restores.
            oom_score::set_own_oom_score_adj(score)?;
            ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_root_path(state_root)
                .map_err(youki_error("exec into", &id))?
                .as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_detach(true)
                .build()
                .map_err(youki_error("exec into", &id))
        });
        Ok(built??.as_raw())
    }
}

/// What a helper is asked to clone.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Job {
    /// A process into a running container.
    Exec(ExecJob),
    /// A container's init, waiting for start.
    Create(CreateJob),
}

/// libcontainer's create, as an exec helper runs it.
#[derive(Serialize, Deserialize)]
pub(super) struct CreateJob {
    pub id: ContainerId,
    pub state_root: PathBuf,
    pub bundle: PathBuf,
    pub no_pivot: bool,
}

impl Job {
    fn id(&self) -> &ContainerId {
        match self {
            Job::Exec(job) => &job.id,
            Job::Create(job) => &job.id,
        }
    }

    /// Where libcontainer's own helpers go once they joined the container.
    fn cgroup(&self) -> Option<&Path> {
        match self {
            Job::Exec(job) => Some(&job.cgroup),
            Job::Create(_) => None,
        }
    }

    fn clone_here(self) -> Result<i32, RuntimeError> {
        match self {
            Job::Exec(job) => job.clone_into_container(),
            Job::Create(job) => job.create_here(),
        }
    }
}

impl CreateJob {
    fn create_here(self) -> Result<i32, RuntimeError> {
        let created = super::create_with_libcontainer(
            &self.id,
            self.state_root,
            &self.bundle,
            self.no_pivot,
        )?;
        created
            .pid()
            .map(|pid| pid.as_raw())
            .ok_or_else(|| RuntimeError::NoInit {
                id: self.id.to_string(),
            })
    }
}

/// A helper's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Started {
        pid: i32,
        /// The helper's anonymous memory as it answers (its heap does not shrink, so about
        /// its peak): what each helper in flight costs the guest beside the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anon_kib: Option<u64>,
    },
    Failed {
        message: String,
    },
}

/// The largest anonymous memory any helper of this process reported, in KiB.
static PEAK_ANON_KIB: AtomicU64 = AtomicU64::new(0);

/// The largest anonymous memory (RssAnon) an exec helper of this process reported as it
/// answered, in KiB (0: none ran, or none reported it).
pub fn peak_anon_kib() -> u64 {
    PEAK_ANON_KIB.load(Ordering::Relaxed)
}

/// This process's `RssAnon` from /proc/self/status, in KiB.
fn own_anon_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `job` in a helper; returns the pid it cloned (the exec'd process, the container's
/// init), a child of the caller once the helper has exited. Past `deadline` without an
/// answer, the helper, its children and the libcontainer helpers in the container's cgroup
/// are killed.
pub(super) fn run(job: Job, helper: &ExecHelper, deadline: Duration) -> Result<i32, RuntimeError> {
    become_subreaper()?;
    let id = job.id().to_string();
    let cgroup = job.cgroup().map(Path::to_path_buf);
    let helper_error = |message: String| RuntimeError::ExecHelper {
        id: id.clone(),
        program: helper.program.clone(),
        message,
    };
    let (ours, theirs) = UnixStream::pair()
        .map_err(|error| helper_error(format!("creating its channel: {error}")))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(&helper.program);
    command.args(&helper.args);
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec, and the
    // duplicate (unlike the original) survives the exec.
    unsafe {
        command.pre_exec(move || match libc::dup2(theirs_fd, CHANNEL_FD) {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut child = command
        .spawn()
        .map_err(|error| helper_error(format!("starting it: {error}")))?;
    drop(theirs);
    let request = serde_json::to_string(&job).expect("an exec job serializes");
    let answer = (|| {
        (&ours).write_all(format!("{request}\n").as_bytes())?;
        ours.set_read_timeout(Some(deadline))?;
        let mut line = String::new();
        BufReader::new(&ours).read_line(&mut line)?;
        Ok::<_, io::Error>(line)
    })();
    let line = match answer {
        Ok(line) => line,
        Err(error) => {
            let stuck = matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            );
            if !stuck {
                let ended = child
                    .wait()
                    .map_or_else(|error| error.to_string(), |status| status.to_string());
                return Err(helper_error(format!(
                    "it ended ({ended}) without a valid answer: {error}"
                )));
            }
            let killed = kill_helper_tree(child.id() as i32)
                + cgroup.as_deref().map_or(0, exec_deadline::kill_helpers);
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::ExecStuck {
                id: id.clone(),
                killed,
                seconds: deadline.as_secs(),
                source: Box::new(helper_error(format!("no answer: {error}"))),
            });
        }
    };
    // It exits right after answering; once it is reaped, its orphan is ours.
    let status = child
        .wait()
        .map_err(|error| helper_error(format!("waiting for it: {error}")))?;
    match serde_json::from_str::<Answer>(&line) {
        Ok(Answer::Started { pid, anon_kib }) => {
            PEAK_ANON_KIB.fetch_max(anon_kib.unwrap_or(0), Ordering::Relaxed);
            Ok(pid)
        }
        Ok(Answer::Failed { message }) => Err(helper_error(message)),
        Err(_) => Err(helper_error(format!(
            "it ended ({status}) without a valid answer: {:?}",
            line.trim()
        ))),
    }
}

/// Makes the caller a child subreaper (once is enough; repeating is harmless): orphans of its
/// descendants, the exec'd processes, become its children.
fn become_subreaper() -> Result<(), RuntimeError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(RuntimeError::Io {
            what: "making the agent a child subreaper (prctl PR_SET_CHILD_SUBREAPER)".to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Kills the children of a helper that did not answer (libcontainer's clones, which have not
/// joined the container's cgroup yet when they hang); returns how many.
fn kill_helper_tree(helper: i32) -> u32 {
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(helper) {
            // SAFETY: kill(2) with a pid whose parent is our helper.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                warn!(
                    helper,
                    pid, "killed a clone of an exec helper that did not answer"
                );
                killed += 1;
            }
        }
    }
    killed
}

/// The parent pid (`/proc/<pid>/stat`'s second field after the name).
fn parent_of(pid: i32) -> Option<i32> {
    super::stat_fields(pid)?.get(1)?.parse().ok()
}

/// The helper's side: reads one job from descriptor 3, clones it (an exec, a container's init)
/// (from this, the only thread), answers with the pid or the error, and returns. Call it from
/// a binary's `main` before anything starts a thread.
pub fn serve() -> ExitCode {
    // The channel is a socket; anything else on descriptor 3 (nothing, a make jobserver's
    // pipe) means a person or a script started us.
    // SAFETY: fstat writes into a zeroed stat of the right type.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(CHANNEL_FD, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        eprintln!(
            "the exec helper is internal: guard's runtime starts it with a request on \
             descriptor {CHANNEL_FD}, which is not a socket here"
        );
        return ExitCode::from(2);
    }
    // SAFETY: descriptor 3 is the channel the agent passed; nothing else in this process owns
    // it.
    let channel = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    // The exec'd command must not inherit the channel.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(CHANNEL_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let mut line = String::new();
    let answer = match BufReader::new(&channel).read_line(&mut line) {
        Err(error) => Answer::Failed {
            message: format!("reading the request on descriptor {CHANNEL_FD}: {error}"),
        },
        Ok(_) => match serde_json::from_str::<Job>(&line) {
            Err(error) => Answer::Failed {
                message: format!("the request is not a job: {error}"),
            },
            Ok(job) => match job.clone_here() {
                Ok(pid) => Answer::Started {
                    pid,
                    anon_kib: own_anon_kib(),
                },
                Err(error) => Answer::Failed {
                    message: error.to_string(),
                },
            },
        },
    };
    let text = serde_json::to_string(&answer).expect("an answer serializes");
    match (&channel).write_all(format!("{text}\n").as_bytes()) {
        Ok(()) if matches!(answer, Answer::Started { .. }) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::Exec(ExecJob {
            id: ContainerId::parse("helper-test").unwrap(),
            state_root: PathBuf::from("/nonexistent/state"),
            cgroup: PathBuf::from("/nonexistent/cgroup"),
            args: vec!["/bin/true".to_string()],
            env: Default::default(),
            score: 0,
            helper: None,
        })
    }

    /// A shell standing in for the helper binary: `script` runs with the channel on fd 3.
    fn shell(script: &str) -> ExecHelper {
        ExecHelper {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_string(), script.to_string()],
        }
    }

    #[test]
    fn the_answered_pid_is_returned() {
        let helper = shell(r#"read request <&3; echo '{"started":{"pid":4242}}' >&3"#);
        assert_eq!(run(job(), &helper, Duration::from_secs(60)).unwrap(), 4242);
    }

    #[test]
    fn the_helpers_reported_memory_raises_the_peak() {
        let helper =
            shell(r#"read request <&3; echo '{"started":{"pid":7,"anon_kib":123456}}' >&3"#);
        assert_eq!(run(job(), &helper, Duration::from_secs(60)).unwrap(), 7);
        assert!(peak_anon_kib() >= 123_456);
    }

    #[test]
    fn the_request_carries_the_job() {
        let helper = shell(
            r#"read request <&3; case "$request" in *helper-test*/bin/true*) echo '{"started":{"pid":1}}' >&3;; *) echo '{"failed":{"message":"bad"}}' >&3;; esac"#,
        );
        assert_eq!(run(job(), &helper, Duration::from_secs(60)).unwrap(), 1);
    }

    #[test]
    fn a_failure_names_the_container_and_the_helper() {
        let helper =
            shell(r#"read request <&3; echo '{"failed":{"message":"no such container"}}' >&3"#);
        let error = run(job(), &helper, Duration::from_secs(60)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("helper-test") && text.contains("/bin/sh"),
            "{text}"
        );
        assert!(text.contains("no such container"), "{text}");
    }

    #[test]
    fn a_helper_that_dies_silently_is_an_error() {
        let error = run(job(), &shell("exit 3"), Duration::from_secs(60)).unwrap_err();
        assert!(
            error.to_string().contains("without a valid answer"),
            "{error}"
        );
    }

    #[test]
    fn a_helper_stuck_past_the_deadline_is_killed_with_its_children() {
        // The helper forks a child that never answers and holds the channel open, as a
        // clone deadlocked in a lock would.
        let helper = shell("sleep 600 & wait");
        let error = run(job(), &helper, Duration::from_millis(500)).unwrap_err();
        match error {
            RuntimeError::ExecStuck { killed, .. } => assert_eq!(killed, 1, "the sleep"),
            other => panic!("expected ExecStuck, got {other}"),
        }
    }
}

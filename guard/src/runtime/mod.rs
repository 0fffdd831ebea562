//! Containers with youki's libcontainer, with the guard's limits and secure defaults.
//!
//! [`Runtime::create`] builds the spec (limits, `cgroupsPath` `/guard/<id>`, cgroup namespace,
//! read-only cgroupfs, explicit `oomScoreAdj`), creates the container, checks that its init
//! really sits in `/guard/<id>`, writes `memory.swap.max` (see below), and reads back from the
//! cgroup what the kernel holds: a [`LimitsApplied`] record. A mismatch with what was asked is
//! an error and the container is removed. The container's init waits until
//! [`Container::start`]: register it with the guard in between, so its first fork is seen.
//! [`Container::delete`] snapshots `memory.events`, `memory.events.local` and `pids.events`
//! before removing the cgroup (removal erases them).
//!
//! Every libcontainer call that clones runs under [`oom_score::preserving_caller`]: libcontainer
//! writes the container's score into its caller, and the agent must stay at -1000. Creation
//! avoids even the temporary change: the init gets its score from us before it starts.
//!
//! libcontainer reports its real errors only through `tracing`: install a subscriber.
pub mod oom_score;

use std::{
    collections::HashMap,
    fs, io,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use libcontainer::{
    container::{Container as Youki, builder::ContainerBuilder},
    signal::Signal,
    syscall::syscall::SyscallType,
};
use oci_spec::runtime::Spec;
use serde::Serialize;
use tracing::{debug, warn};

use crate::{
    cgroup::{CgroupError, EventFiles, Hierarchy, Limit, LimitsReadBack, read_limits},
    container_id::{ContainerId, ContainerIdError},
    limits::{Limits, MemInfo},
    spec::{self, SpecError, SpecOptions},
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("loading the OCI spec {path}: {source}")]
    LoadSpec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error("writing the OCI spec {path}: {source}")]
    SaveSpec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error(
        "libcontainer could not {operation} container {id}: {source} (its detailed errors are \
         logged through tracing)"
    )]
    Libcontainer {
        operation: &'static str,
        id: String,
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("container {id} has no init process")]
    NoInit { id: String },
    #[error("container {id}'s init {pid} is in cgroup {actual}, not the requested {expected}")]
    CgroupMismatch {
        id: String,
        pid: i32,
        expected: PathBuf,
        actual: PathBuf,
    },
    #[error("container {id}: {file} is {found}, but {asked} was asked for")]
    LimitMismatch {
        id: String,
        file: &'static str,
        asked: String,
        found: String,
    },
    #[error(
        "container {id}: this kernel has no {file} but the guest has swap: the container could \
         dodge its memory limit by swapping"
    )]
    NoSwapControl { id: String, file: PathBuf },
    #[error("container {id}: its processes have oom_score_adj {found}, not the configured {asked}")]
    ContainerScore { id: String, asked: i32, found: i32 },
    #[error("the caller's oom_score_adj is {found} after a libcontainer call, not {expected}")]
    CallerScore { expected: i32, found: i32 },
    #[error("container {id}: its cgroup {cgroup} still exists after delete")]
    CgroupLeft { id: String, cgroup: PathBuf },
    #[error("signal {signal} is not valid: {message}")]
    Signal { signal: i32, message: String },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

fn youki_error(
    operation: &'static str,
    id: &ContainerId,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError {
    let id = id.to_string();
    move |source| RuntimeError::Libcontainer {
        operation,
        id,
        source: Box::new(source),
    }
}

/// Where containers come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An OCI bundle (a folder with `config.json`). The bundle is not modified: the adjusted
    /// spec is written to the runtime's own bundle folder.
    Bundle(PathBuf),
    /// A root filesystem folder and a command (`PATH` is set for execvp; `env` adds to it).
    Rootfs {
        rootfs: PathBuf,
        args: Vec<String>,
        env: Vec<String>,
    },
}

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// libcontainer's state folder (one sub-folder per container).
    pub state_root: PathBuf,
    /// Where the adjusted `config.json` of each container is written.
    pub bundle_root: PathBuf,
    pub spec: SpecOptions,
    /// Use libcontainer's no-pivot mode (move-mount + chroot: weaker isolation) for guests
    /// whose root cannot be pivot_root'ed.
    pub no_pivot: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            state_root: PathBuf::from("/run/guard/containers"),
            bundle_root: PathBuf::from("/run/guard/bundles"),
            spec: SpecOptions::default(),
            no_pivot: false,
        }
    }
}

/// What the kernel really holds for a freshly created container: the `limits_applied` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsApplied {
    /// Always "limits_applied".
    pub kind: &'static str,
    pub container: ContainerId,
    /// The cgroup directory (absolute, under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// The cgroup's id (its inode number: what BPF sees).
    pub cgroup_id: u64,
    /// The container's init, as the guest sees it.
    pub init_pid: i32,
    pub requested: Limits,
    pub read_back: LimitsReadBack,
    /// The init's `oom_score_adj` (read from /proc).
    pub oom_score_adj: i32,
}

/// Times of the runtime's operations, for reports and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub create_us: u64,
    pub start_us: u64,
    pub delete_us: u64,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A container removed by [`Container::delete`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub container: ContainerId,
    pub cgroup: PathBuf,
    /// `memory.events`, `memory.events.local`, `pids.events` (and `pids.events.local`), read
    /// just before the cgroup was removed.
    pub final_events: EventFiles,
}

/// Creates containers.
pub struct Runtime {
    options: RuntimeOptions,
    hierarchy: Hierarchy,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        options.spec.validate()?;
        let hierarchy = Hierarchy::find()?;
        for dir in [&options.state_root, &options.bundle_root] {
            fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        }
        Ok(Self { options, hierarchy })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The absolute cgroup directory a container with this id gets.
    pub fn cgroup_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let relative = self.options.spec.cgroups_path(id)?;
        Ok(self
            .hierarchy
            .mount
            .join(relative.strip_prefix("/").unwrap_or(&relative)))
    }

    /// Builds the adjusted spec for `id` (validated first: a hostile id never becomes a path).
    pub fn spec(&self, id: &str, source: &Source, limits: &Limits) -> Result<Spec, RuntimeError> {
        let id = ContainerId::parse(id)?;
        let mut spec = match source {
            Source::Bundle(bundle) => {
                let path = bundle.join("config.json");
                let mut spec =
                    Spec::load(&path).map_err(|source| RuntimeError::LoadSpec { path, source })?;
                // The adjusted config.json lives elsewhere: make the rootfs absolute.
                spec.canonicalize_rootfs(bundle)
                    .map_err(|source| RuntimeError::LoadSpec {
                        path: bundle.clone(),
                        source,
                    })?;
                spec
            }
            Source::Rootfs { rootfs, args, env } => {
                let rootfs = fs::canonicalize(rootfs)
                    .map_err(io_error(format!("rootfs {}", rootfs.display())))?;
                spec::for_rootfs(&rootfs, args, env)?
            }
        };
        spec::apply(&mut spec, id.as_str(), limits, &self.options.spec)?;
        Ok(spec)
    }

    /// Creates container `id` (its init waits for [`Container::start`]) and verifies what the
    /// kernel holds. On any verification failure the container is removed again.
    pub fn create(
        &self,
        id: &str,
        source: &Source,
        limits: &Limits,
    ) -> Result<Created, RuntimeError> {
        let started = Instant::now();
        let id = ContainerId::parse(id)?;
        let spec = self.spec(id.as_str(), source, limits)?;
        let expected_cgroup = self.cgroup_dir(id.as_str())?;
        let bundle = self.options.bundle_root.join(id.as_str());
        fs::create_dir_all(&bundle).map_err(io_error(format!("creating {}", bundle.display())))?;
        let config = bundle.join("config.json");
        // libcontainer writes a config's oomScoreAdj into *its caller* for the init to inherit:
        // the agent would sit at the container's score for the whole create. The config it
        // reads has none; verify() gives the init its score while it still waits for start,
        // before anything of the container runs.
        let mut for_libcontainer = spec.clone();
        if let Some(process) = for_libcontainer.process_mut() {
            process.set_oom_score_adj(None);
        }
        for_libcontainer
            .save(&config)
            .map_err(|source| RuntimeError::SaveSpec {
                path: config.clone(),
                source,
            })?;

        let state_root = self.options.state_root.clone();
        let no_pivot = self.options.no_pivot;
        let built = oom_score::preserving_caller(|| {
            ContainerBuilder::new(id.to_string(), SyscallType::default())
                .validate_id()?
                .with_root_path(state_root)?
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(no_pivot)
                .build()
        });
        let inner = match built {
            Ok(Ok(inner)) => inner,
            Ok(Err(error)) => {
                let _ = fs::remove_dir_all(&bundle);
                return Err(youki_error("create", &id)(error));
            }
            Err(error) => {
                // The container may exist, but the agent's protection is gone: say that first.
                let _ = fs::remove_dir_all(&bundle);
                return Err(error);
            }
        };
        let create_time = started.elapsed();
        let mut container = Container {
            id,
            inner,
            cgroup: expected_cgroup,
            bundle,
            init_pid: 0,
            oom_score_adj: self.options.spec.oom_score_adj,
            timings: Timings {
                create_us: micros(create_time),
                ..Default::default()
            },
            deleted: false,
        };
        match self.verify(&mut container, limits) {
            Ok(applied) => {
                container.timings.create_us = micros(started.elapsed());
                debug!(
                    container = %container.id,
                    create_us = container.timings.create_us,
                    "container created"
                );
                Ok(Created { container, applied })
            }
            Err(error) => {
                if let Err(cleanup) = container.delete() {
                    warn!(container = %container.id, %cleanup, "removing a container that failed verification");
                }
                Err(error)
            }
        }
    }

    /// Finds the init, checks its cgroup, writes `memory.swap.max`, reads everything back.
    fn verify(
        &self,
        container: &mut Container,
        limits: &Limits,
    ) -> Result<LimitsApplied, RuntimeError> {
        let id = container.id.clone();
        let pid = container
            .inner
            .pid()
            .map(|pid| pid.as_raw())
            .ok_or_else(|| RuntimeError::NoInit { id: id.to_string() })?;
        container.init_pid = pid;
        let actual = self.cgroup_of(pid)?;
        if actual != container.cgroup {
            if self.options.spec.omit_cgroups_path {
                // Test mode: carry on in whatever cgroup the runtime chose, so a test can
                // observe that it is not <root>/<id>.
                warn!(container = %id, cgroup = %actual.display(), "cgroupsPath omitted (test mode): the runtime chose its own cgroup");
                container.cgroup = actual;
            } else {
                return Err(RuntimeError::CgroupMismatch {
                    id: id.to_string(),
                    pid,
                    expected: container.cgroup.clone(),
                    actual,
                });
            }
        }
        let cgroup = container.cgroup.clone();

        // libcgroups 0.7 writes memory.swap.max only when memory+swap - memory is non-zero:
        // "no swap" (0) would silently stay "max". The init has not run the workload yet (it
        // waits for start), so writing it here is still before anything can swap.
        let swap_file = cgroup.join("memory.swap.max");
        let swap_value = limits
            .swap_max
            .map_or("max".to_string(), |bytes| bytes.to_string());
        debug!(
            container = %id,
            left_by_libcontainer = ?fs::read_to_string(&swap_file).map(|text| text.trim().to_string()),
            writing = %swap_value,
            "memory.swap.max"
        );
        match fs::write(&swap_file, &swap_value) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let meminfo = MemInfo::read().map_err(|error| RuntimeError::Io {
                    what: "reading /proc/meminfo".into(),
                    source: io::Error::other(error.to_string()),
                })?;
                if meminfo.swap_total > 0 {
                    return Err(RuntimeError::NoSwapControl {
                        id: id.to_string(),
                        file: swap_file,
                    });
                }
                warn!(container = %id, "no memory.swap.max (no swap accounting); the guest has no swap");
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    what: format!("writing {swap_value} to {}", swap_file.display()),
                    source,
                });
            }
        }

        let identity = self.hierarchy.identify(&cgroup)?;
        let read_back = read_limits(&cgroup)?;
        check_read_back(&id, limits, &read_back)?;

        oom_score::set_oom_score_adj_of(pid, self.options.spec.oom_score_adj)?;
        let score = oom_score::oom_score_adj_of(pid)?;
        if score != self.options.spec.oom_score_adj {
            return Err(RuntimeError::ContainerScore {
                id: id.to_string(),
                asked: self.options.spec.oom_score_adj,
                found: score,
            });
        }
        Ok(LimitsApplied {
            kind: "limits_applied",
            container: id,
            cgroup,
            cgroup_id: identity.id,
            init_pid: pid,
            requested: *limits,
            read_back,
            oom_score_adj: score,
        })
    }

    /// The cgroup directory of process `pid`, from `/proc/<pid>/cgroup` (the `0::` line).
    pub fn cgroup_of(&self, pid: i32) -> Result<PathBuf, RuntimeError> {
        let path = format!("/proc/{pid}/cgroup");
        let text = fs::read_to_string(&path).map_err(io_error(format!("reading {path}")))?;
        let relative = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or_else(|| RuntimeError::Io {
                what: format!("parsing {path}"),
                source: io::Error::new(io::ErrorKind::InvalidData, text.clone()),
            })?;
        Ok(self
            .hierarchy
            .mount
            .join(relative.trim().trim_start_matches('/')))
    }
}

/// A container created by [`Runtime::create`].
pub struct Container {
    id: ContainerId,
    inner: Youki,
    cgroup: PathBuf,
    bundle: PathBuf,
    init_pid: i32,
    /// The score its processes get (exec'd ones included).
    oom_score_adj: i32,
    timings: Timings,
    deleted: bool,
}

/// A created container together with its `limits_applied` record.
pub struct Created {
    pub container: Container,
    pub applied: LimitsApplied,
}

impl Container {
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
    /// it.
    pub fn exec(&self, args: &[String], env: &[String]) -> Result<i32, RuntimeError> {
        let env: HashMap<String, String> = env
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let state_root = self
            .inner
            .root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let id = self.id.to_string();
        let args = args.to_vec();
        let score = self.oom_score_adj;
        let pid = oom_score::preserving_caller(|| {
            // libcontainer's exec builds a process spec without oomScoreAdj, so the process
            // would inherit the caller's score (-1000 for an agent: the memcg OOM livelock).
            // Give the caller the container's score for the clone; preserving_caller restores.
            oom_score::set_own_oom_score_adj(score)?;
            ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(state_root)
                .map_err(youki_error("exec into", &self.id))?
                .as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_detach(true)
                .build()
                .map_err(youki_error("exec into", &self.id))
        })??;
        Ok(pid.as_raw())
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

/// Compares what the kernel holds with what was asked: any difference is an error naming the
/// file and both values. `memory.swap.max` may be absent (no swap accounting; the caller has
/// checked the guest has no swap).
pub fn check_read_back(
    id: &ContainerId,
    limits: &Limits,
    read_back: &LimitsReadBack,
) -> Result<(), RuntimeError> {
    let check = |file: &'static str, asked: Option<u64>, found: Option<Limit>, optional: bool| {
        let asked_limit = asked.map_or(Limit::Max, Limit::Value);
        match found {
            Some(found) if found == asked_limit => Ok(()),
            None if optional => Ok(()),
            found => Err(RuntimeError::LimitMismatch {
                id: id.to_string(),
                file,
                asked: asked_limit.to_string(),
                found: found.map_or("missing".to_string(), |limit| limit.to_string()),
            }),
        }
    };
    check("memory.max", limits.memory_max, read_back.memory_max, false)?;
    check("pids.max", limits.pids_max, read_back.pids_max, false)?;
    check(
        "memory.swap.max",
        limits.swap_max,
        read_back.memory_swap_max,
        true,
    )
}

/// Waits for process `pid` (a child of the caller) and returns its status.
pub fn wait_pid(pid: i32) -> Result<ExitStatus, RuntimeError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only into `status`.
        let result = unsafe { libc::waitpid(pid, &mut status, 0) };
        if result == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(RuntimeError::Io {
                what: format!("waiting for process {pid}"),
                source: error,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> Limits {
        Limits {
            memory_max: Some(32 << 20),
            swap_max: Some(0),
            pids_max: Some(512),
        }
    }

    fn held(memory: Limit, swap: Option<Limit>, pids: Limit) -> LimitsReadBack {
        LimitsReadBack {
            cgroup: PathBuf::from("/sys/fs/cgroup/guard/c"),
            memory_max: Some(memory),
            memory_swap_max: swap,
            pids_max: Some(pids),
            memory_peak: None,
            pids_peak: None,
        }
    }

    #[test]
    fn read_back_matching_is_accepted() {
        let id = ContainerId::parse("c").unwrap();
        let exact = held(
            Limit::Value(32 << 20),
            Some(Limit::Value(0)),
            Limit::Value(512),
        );
        check_read_back(&id, &asked(), &exact).unwrap();
        // No swap accounting at all: accepted here (the runtime checked there is no swap).
        let no_swap_file = held(Limit::Value(32 << 20), None, Limit::Value(512));
        check_read_back(&id, &asked(), &no_swap_file).unwrap();
        let unlimited = Limits {
            memory_max: None,
            swap_max: None,
            pids_max: None,
        };
        let max = held(Limit::Max, Some(Limit::Max), Limit::Max);
        check_read_back(&id, &unlimited, &max).unwrap();
    }

    /// Each mismatch is an error naming the file, what was asked and what the kernel holds.
    #[test]
    fn read_back_mismatch_is_an_error_naming_both_values() {
        let id = ContainerId::parse("c").unwrap();
        let cases = [
            (
                held(Limit::Max, Some(Limit::Value(0)), Limit::Value(512)),
                "memory.max is max, but 33554432",
            ),
            (
                held(
                    Limit::Value(32 << 20),
                    Some(Limit::Value(0)),
                    Limit::Value(64),
                ),
                "pids.max is 64, but 512",
            ),
            (
                // libcgroups 0.7 leaves "max" when asked for no swap.
                held(Limit::Value(32 << 20), Some(Limit::Max), Limit::Value(512)),
                "memory.swap.max is max, but 0",
            ),
        ];
        for (read_back, expected) in cases {
            let error = check_read_back(&id, &asked(), &read_back)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("container c"), "{error}");
        }
        let mut missing = held(Limit::Value(32 << 20), None, Limit::Value(512));
        missing.pids_max = None;
        let error = check_read_back(&id, &asked(), &missing)
            .unwrap_err()
            .to_string();
        assert!(error.contains("pids.max is missing, but 512"), "{error}");
    }
}

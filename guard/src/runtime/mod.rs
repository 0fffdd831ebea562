//! Containers with youki's libcontainer, with the guard's limits and secure defaults.
//!
//! [`Runtime::create`] builds the spec (limits, `cgroupsPath` `/guard/<id>`, cgroup namespace,
//! read-only cgroupfs, explicit `oomScoreAdj`), creates the container, checks that its init
//! really sits in `/guard/<id>`, writes `memory.swap.max` (see below), and reads back from the
//! cgroup what the kernel holds: a [`CreationRecord`] record. A mismatch with what was asked is
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
mod budget;
mod container;
mod error;
mod exec_deadline;
mod exec_helper;
pub mod oom_score;
mod records;
mod verify;

pub use budget::{BudgetRecord, raise_threads_max};
pub use container::{Container, Created};
pub use error::RuntimeError;
pub use exec_helper::{
    ExecHelper, ExecJob, peak_anon_kib as exec_helper_peak_anon_kib, serve as serve_exec_helper,
};
use records::micros;
pub use records::{CreationRecord, Removed, Timings};
pub use verify::check_read_back;

use std::{
    fs, io,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Instant,
};

use libcontainer::{
    container::{Container as Youki, builder::ContainerBuilder},
    syscall::syscall::SyscallType,
};
use oci_spec::runtime::Spec;
use tracing::{debug, info, warn};

use crate::{
    cgroup::Hierarchy,
    container_id::ContainerId,
    limits::{BudgetRequest, LimitRequest, Limits, MemInfo, Resolved, guest_budget},
    spec::{self, SpecOptions},
};

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
        /// The root filesystem folder.
        rootfs: PathBuf,
        /// The command and its arguments.
        args: Vec<String>,
        /// `KEY=value` entries added to (or replacing those of) the default environment.
        env: Vec<String>,
    },
}

/// How the runtime runs. The defaults: state under `/run/guard/containers`, bundles under
/// `/run/guard/bundles`, the default [`SpecOptions`], pivot_root, the guest budget derived
/// from the guest, the [`default_agent_reserve`], and no exec helper.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// libcontainer's state folder (one sub-folder per container).
    pub state_root: PathBuf,
    /// Where the adjusted `config.json` of each container is written.
    pub bundle_root: PathBuf,
    /// How each container's spec is adjusted (cgroup root, OOM scores, swap accounting).
    pub spec: SpecOptions,
    /// Use libcontainer's no-pivot mode (move-mount + chroot: weaker isolation) for guests
    /// whose root cannot be pivot_root'ed.
    pub no_pivot: bool,
    /// The guest budget on the cgroup root (see [`crate::limits::guest_budget`]); None: no
    /// budget, each container alone holds its limits (the two-sided runs do this).
    pub budget: Option<BudgetRequest>,
    /// The agent's own growth, kept out of the budget: its buffers, full
    /// ([`crate::footprint::Footprint::total`]).
    pub agent_reserve: u64,
    /// The process each exec and create clones from (see [`ExecHelper`]). None: the caller
    /// itself, safe only while no other thread of the caller can hold a lock at the clone.
    /// With a helper the caller becomes a child subreaper: orphans of its descendants become
    /// its children, and it must reap them (guard's agent waits for what it execs).
    pub exec_helper: Option<ExecHelper>,
}

/// The agent reserve of a guard with default stream options, its log and one live subscriber.
pub fn default_agent_reserve() -> u64 {
    crate::footprint::Footprint::new(
        &crate::RingOptions::default(),
        &[crate::sinks::event_log::QUEUE_EVENTS, 4096],
        true,
    )
    .total()
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            state_root: PathBuf::from("/run/guard/containers"),
            bundle_root: PathBuf::from("/run/guard/bundles"),
            spec: SpecOptions::default(),
            no_pivot: false,
            budget: Some(BudgetRequest::default()),
            agent_reserve: default_agent_reserve(),
            exec_helper: None,
        }
    }
}

/// Creates containers.
pub struct Runtime {
    options: RuntimeOptions,
    hierarchy: Hierarchy,
    budget: Option<BudgetRecord>,
}

impl Runtime {
    /// Validates the options, finds the cgroup v2 hierarchy, creates the state and bundle
    /// folders, and (with a budget) derives the guest budget and applies it to the parent
    /// cgroup, raising `kernel.threads-max` to fit. Needs root.
    pub fn new(mut options: RuntimeOptions) -> Result<Self, RuntimeError> {
        options.spec.validate()?;
        // CONFIG_SWAP is what gives cgroups memory.swap.max; /proc/swaps exists exactly with it.
        options.spec.swap_accounting &= Path::new("/proc/swaps").exists();
        let hierarchy = Hierarchy::find()?;
        for dir in [&options.state_root, &options.bundle_root] {
            fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        }
        // Derived now, with the agent (and its guard) already resident: what is really left.
        let budget = match &options.budget {
            None => None,
            Some(request) => {
                // What running containers already hold is part of the budget, not gone from
                // it: another agent process (a second `guard run`) derives the same budget.
                let mut meminfo = MemInfo::read()?;
                let parent = hierarchy
                    .mount
                    .join(options.spec.cgroup_root.trim_start_matches('/'));
                if let Some(held) = crate::cgroup::read(&parent, crate::cgroup::memory::CURRENT)
                    .ok()
                    .flatten()
                    .and_then(|text| text.parse::<u64>().ok())
                {
                    meminfo.available = meminfo.available.saturating_add(held);
                }
                let budget = guest_budget(&meminfo, options.agent_reserve, request)?;
                Some(budget::apply(
                    &hierarchy,
                    &options.spec.cgroup_root,
                    &budget,
                    options.spec.swap_accounting,
                )?)
            }
        };
        Ok(Self {
            options,
            hierarchy,
            budget,
        })
    }

    /// The guest budget the parent cgroup holds (None: the runtime runs without one).
    pub fn budget(&self) -> Option<&BudgetRecord> {
        self.budget.as_ref()
    }

    /// Resolves `request` against the guest's memory now and fits it into the budget: defaults
    /// above it are lowered (logged, and listed in the result), explicit limits above it are
    /// errors.
    pub fn resolve(&self, request: &LimitRequest) -> Result<Resolved, RuntimeError> {
        let meminfo = MemInfo::read()?;
        let resolved = match &self.budget {
            Some(record) => request.resolve_within(&meminfo, &record.held())?,
            None => Resolved {
                limits: request.resolve(&meminfo)?,
                clamped: Vec::new(),
            },
        };
        for clamp in &resolved.clamped {
            info!(
                file = clamp.file,
                default = clamp.default,
                budget = clamp.clamped_to,
                "a default limit is lowered to the guest budget"
            );
        }
        Ok(resolved)
    }

    /// Refuses limits the budget cannot hold (limits resolved without [`Runtime::resolve`]).
    fn check_budget(&self, id: &ContainerId, limits: &Limits) -> Result<(), RuntimeError> {
        let Some(record) = &self.budget else {
            return Ok(());
        };
        let held = record.held();
        for (file, asked, budget) in [
            (
                crate::cgroup::memory::MAX,
                limits.memory_max,
                held.memory_max,
            ),
            (crate::cgroup::pids::MAX, limits.pids_max, held.pids_max),
        ] {
            if let Some(asked) = asked.filter(|&asked| asked > budget) {
                return Err(RuntimeError::LimitAboveBudget {
                    id: id.to_string(),
                    file,
                    asked,
                    budget,
                });
            }
        }
        Ok(())
    }

    /// The options it runs with (`swap_accounting` as found on this kernel).
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// The cgroup v2 hierarchy it found.
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
        let known = known_filesystems()?;
        for destination in spec::drop_unsupported_mounts(&mut spec, &known) {
            warn!(
                container = %id,
                destination = %destination.display(),
                "leaving out a mount whose filesystem this kernel does not have"
            );
        }
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
        self.check_budget(&id, limits)?;
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
        let built = match &self.options.exec_helper {
            // The init is cloned from the helper's only thread (see exec_helper.rs), then
            // loaded from the state libcontainer wrote.
            Some(helper) => exec_helper::run(
                exec_helper::Job::Create(exec_helper::CreateJob {
                    id: id.clone(),
                    state_root: state_root.clone(),
                    bundle: bundle.clone(),
                    no_pivot,
                }),
                helper,
                exec_deadline::EXEC_DEADLINE,
            )
            .and_then(|_| {
                Youki::load(state_root.join(id.as_str())).map_err(youki_error("load", &id))
            }),
            None => create_with_libcontainer(&id, state_root, &bundle, no_pivot),
        };
        let inner = match built {
            Ok(inner) => inner,
            Err(error) => {
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
            exec_helper: self.options.exec_helper.clone(),
            timings: Timings {
                create_us: micros(create_time),
                ..Default::default()
            },
            deleted: false,
        };
        match self.verify(&mut container, limits) {
            Ok(record) => {
                container.timings.create_us = micros(started.elapsed());
                debug!(
                    container = %container.id,
                    create_us = container.timings.create_us,
                    "container created"
                );
                Ok(Created { container, record })
            }
            Err(error) => {
                if let Err(cleanup) = container.delete() {
                    warn!(container = %container.id, %cleanup, "removing a container that failed verification");
                }
                Err(error)
            }
        }
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

/// libcontainer's create in this process (the init is its child, waiting for start). Runs
/// under [`oom_score::preserving_caller`]; a lost protection outranks libcontainer's error.
fn create_with_libcontainer(
    id: &ContainerId,
    state_root: PathBuf,
    bundle: &Path,
    no_pivot: bool,
) -> Result<Youki, RuntimeError> {
    let built = oom_score::preserving_caller(|| {
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .validate_id()?
            .with_root_path(state_root)?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(no_pivot)
            .build()
    })?;
    built.map_err(youki_error("create", id))
}

/// The fields of `/proc/<pid>/stat` after the parenthesized name (state first, then the
/// parent pid), None once the process is gone. The name may hold spaces and parentheses, hence
/// the last `)`.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// The filesystem types this kernel has (`/proc/filesystems`).
fn known_filesystems() -> Result<Vec<String>, RuntimeError> {
    let path = "/proc/filesystems";
    let text = fs::read_to_string(path).map_err(io_error(format!("reading {path}")))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(str::to_string)
        .collect())
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

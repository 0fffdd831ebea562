//! Applying the guard's limits and secure defaults to an OCI runtime spec.
//!
//! Every container gets: its limits in `linux.resources`, an explicit `cgroupsPath` of
//! `<root>/<id>` (default root `/guard`, so the guard always knows where the cgroup is instead
//! of depending on the runtime's naming), a cgroup namespace, a read-only cgroupfs at
//! `/sys/fs/cgroup`, an explicit `process.oomScoreAdj` (never the agent's inherited -1000,
//! which makes a memcg OOM livelock: the OOM killer finds no victim and loops), and a seccomp
//! filter that denies AF_VSOCK sockets and io_uring ([`seccomp`]: merged into a bundle's own
//! profile, which is refused if it cannot be enforced).
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources, Mount, Process, Root, Spec,
};

use crate::{
    container_id::{ContainerId, ContainerIdError},
    limits::Limits,
};

pub mod seccomp;
pub use seccomp::SeccompProfileError;

/// Default parent of every container's cgroup, relative to the cgroup2 mount.
pub const DEFAULT_CGROUP_ROOT: &str = "/guard";
/// Default `oomScoreAdj` of container processes.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = 0;
/// Where the container sees its own cgroup (through its cgroup namespace).
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// `PATH` for a command given without a bundle: the default executor uses execvp.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A spec or spec option that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The container id is not valid ([`ContainerId::parse`]).
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    /// [`SpecOptions::cgroup_root`] is not `/` or an absolute path of valid components.
    #[error(
        "cgroup root {root:?} must be an absolute path of plain components (no '.', '..', \
         empty, control characters)"
    )]
    CgroupRoot {
        /// The root given.
        root: String,
    },
    /// A configured score outside -999..=1000 (-1000 included: it makes the memcg OOM a
    /// livelock).
    #[error(
        "oomScoreAdj {value} is not allowed: it must be in -999..=1000 (-1000 makes a \
         container unkillable and its memcg OOM a livelock)"
    )]
    OomScoreAdj {
        /// The score given.
        value: i32,
    },
    /// The spec lacks a section [`apply`] must fill in (`linux section`, `process section`).
    #[error("the spec has no {what}")]
    Missing {
        /// The section.
        what: &'static str,
    },
    /// A byte limit above `i64::MAX`.
    #[error("memory limit {bytes} does not fit the OCI spec's signed 64-bit field")]
    TooLarge {
        /// The limit, in bytes.
        bytes: u64,
    },
    /// oci-spec refused to build a part of the spec. No function of this crate returns it at
    /// present: they set the spec's fields directly.
    #[error("building the spec's {what}: {source}")]
    Build {
        /// The part.
        what: &'static str,
        /// oci-spec's error.
        source: oci_spec::OciSpecError,
    },
    /// [`for_rootfs`] with no command.
    #[error("the container command is empty")]
    EmptyCommand,
    /// The bundle's seccomp profile cannot be enforced, or would undo the guard's rule.
    #[error(transparent)]
    Seccomp(#[from] SeccompProfileError),
}

/// How the spec is adjusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecOptions {
    /// Parent of the container cgroups, relative to the cgroup2 mount (default `/guard`).
    pub cgroup_root: String,
    /// The container processes' `oomScoreAdj` (default 0).
    pub oom_score_adj: i32,
    /// The init's own score, when the init is infrastructure rather than the workload (a
    /// reaper that only waits, as Kubernetes gives its pause container -998): below its
    /// workloads, a shared budget's OOM killer takes an exec'd process before the init that
    /// keeps the container alive. What the init forks inherits it; exec'd processes get
    /// `oom_score_adj`. None (the default): the init has `oom_score_adj` too.
    pub init_oom_score_adj: Option<i32>,
    /// Tests only: leave `cgroupsPath` unset, so the runtime picks its own cgroup name. Used to
    /// show the `/guard/<id>` checks fail without the explicit path.
    pub omit_cgroups_path: bool,
    /// Tests only: leave the guard's seccomp rule out ([`seccomp`]; a bundle's own profile is
    /// still checked and applied as written). Used to show what a tenant could do without it.
    pub omit_seccomp_rule: bool,
    /// The kernel accounts swap per cgroup (CONFIG_SWAP: `memory.swap.max` exists). Without
    /// it the spec asks for no swap limit at all: the runtime would fail to write a file the
    /// kernel does not have, and there is no swap to dodge a limit with.
    pub swap_accounting: bool,
}

impl Default for SpecOptions {
    fn default() -> Self {
        Self {
            cgroup_root: DEFAULT_CGROUP_ROOT.to_string(),
            oom_score_adj: DEFAULT_OOM_SCORE_ADJ,
            init_oom_score_adj: None,
            omit_cgroups_path: false,
            omit_seccomp_rule: false,
            swap_accounting: true,
        }
    }
}

impl SpecOptions {
    /// Checks the options themselves (the root and the score).
    pub fn validate(&self) -> Result<(), SpecError> {
        let root = &self.cgroup_root;
        let bad_root = || SpecError::CgroupRoot { root: root.clone() };
        let relative = root.strip_prefix('/').ok_or_else(bad_root)?;
        // "/" alone would put containers straight under the cgroup root: allowed.
        if !relative.is_empty() {
            for component in relative.trim_end_matches('/').split('/') {
                if component.is_empty() || ContainerId::parse(component).is_err() {
                    return Err(bad_root());
                }
            }
        }
        // -1000 would make a container's process unkillable: its own memcg OOM would livelock.
        for score in std::iter::once(self.oom_score_adj).chain(self.init_oom_score_adj) {
            if !(-999..=1000).contains(&score) {
                return Err(SpecError::OomScoreAdj { value: score });
            }
        }
        Ok(())
    }

    /// The init's score: its own, or the workloads'.
    pub fn init_score(&self) -> i32 {
        self.init_oom_score_adj.unwrap_or(self.oom_score_adj)
    }

    /// `<root>/<id>`: the cgroup path (relative to the cgroup2 mount, starting with '/').
    /// The id is validated first: a hostile id is an error, never a path.
    pub fn cgroups_path(&self, id: &str) -> Result<PathBuf, SpecError> {
        let id = ContainerId::parse(id)?;
        self.validate()?;
        Ok(Path::new(&self.cgroup_root).join(id.as_str()))
    }
}

/// A spec for running `args` in the root filesystem folder `rootfs` (no bundle): the
/// oci-spec defaults (runc-like: pid, net, ipc, uts, mount and cgroup namespaces; proc, dev,
/// sysfs read-only, cgroupfs; a small capability set; no_new_privileges) plus `PATH`.
pub fn for_rootfs(rootfs: &Path, args: &[String], env: &[String]) -> Result<Spec, SpecError> {
    if args.is_empty() {
        return Err(SpecError::EmptyCommand);
    }
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut process = Process::default();
    process.set_args(Some(args.to_vec()));
    let mut environment = vec![DEFAULT_PATH.to_string(), "TERM=xterm".to_string()];
    for entry in env {
        let key = entry.split('=').next().unwrap_or_default();
        environment.retain(|existing| existing.split('=').next() != Some(key));
        environment.push(entry.clone());
    }
    process.set_env(Some(environment));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(Some("guarded".to_string()));
    Ok(spec)
}

/// Mount types the runtime handles itself, whatever `/proc/filesystems` says: bind mounts, and
/// `cgroup`, which libcontainer mounts as cgroup2 on a v2 host.
const RUNTIME_MOUNT_TYPES: &[&str] = &["bind", "none", "cgroup"];

/// Removes the mounts whose filesystem this kernel does not have (`known`: the types
/// `/proc/filesystems` lists), and returns their destinations. Lean guest kernels leave some
/// out (libkrunfw's has no POSIX message queues, so no `mqueue` for the default `/dev/mqueue`):
/// without this the container's init fails to mount it and never starts.
pub fn drop_unsupported_mounts(spec: &mut Spec, known: &[String]) -> Vec<PathBuf> {
    let Some(mounts) = spec.mounts().clone() else {
        return Vec::new();
    };
    let (kept, dropped): (Vec<Mount>, Vec<Mount>) = mounts.into_iter().partition(|mount| {
        mount.typ().as_deref().is_none_or(|typ| {
            RUNTIME_MOUNT_TYPES.contains(&typ) || known.iter().any(|known| known == typ)
        })
    });
    spec.set_mounts(Some(kept));
    dropped
        .iter()
        .map(|mount| mount.destination().to_path_buf())
        .collect()
}

/// Applies limits and the guard's secure defaults to `spec` for container `id`.
///
/// ```
/// use std::path::Path;
/// use guard::limits::Limits;
/// use guard::spec::{SpecOptions, apply, for_rootfs};
///
/// let mut spec = for_rootfs(Path::new("/srv/rootfs"), &["/bin/sh".to_string()], &[])?;
/// let limits = Limits { memory_max: Some(64 << 20), swap_max: Some(0), pids_max: Some(512) };
/// apply(&mut spec, "web", &limits, &SpecOptions::default())?;
/// let linux = spec.linux().as_ref().unwrap();
/// assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/guard/web")));
/// let resources = linux.resources().as_ref().unwrap();
/// assert_eq!(resources.pids().unwrap().limit(), 512);
/// assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));
/// // A hostile id never becomes a path.
/// assert!(apply(&mut spec, "../escape", &limits, &SpecOptions::default()).is_err());
/// # Ok::<(), guard::spec::SpecError>(())
/// ```
///
/// `memory.swap.max` is expressed the OCI way (`swap` = memory + swap), but libcgroups 0.7
/// skips writing a computed swap limit of 0: the runtime writes `memory.swap.max` itself and
/// reads it back (see `runtime`).
pub fn apply(
    spec: &mut Spec,
    id: &str,
    limits: &Limits,
    options: &SpecOptions,
) -> Result<(), SpecError> {
    let cgroups_path = options.cgroups_path(id)?;
    let signed = |bytes: u64| i64::try_from(bytes).map_err(|_| SpecError::TooLarge { bytes });

    let linux = spec.linux_mut().as_mut().ok_or(SpecError::Missing {
        what: "linux section",
    })?;
    let mut resources = linux.resources().clone().unwrap_or_else(|| {
        let mut resources = LinuxResources::default();
        resources.set_devices(None);
        resources
    });
    let mut memory = resources.memory().unwrap_or_default();
    match limits.memory_max {
        Some(bytes) => {
            let limit = signed(bytes)?;
            memory.set_limit(Some(limit));
            memory.set_swap(Some(match limits.swap_max {
                Some(swap) => limit.saturating_add(signed(swap)?),
                None => -1,
            }));
        }
        None => {
            memory.set_limit(Some(-1));
            memory.set_swap(limits.swap_max.is_none().then_some(-1));
        }
    }
    if !options.swap_accounting {
        memory.set_swap(None);
        // libcgroups writes memory.swap.max for an unlimited memory.max even without a swap
        // value; a fresh cgroup's memory.max is `max` already.
        if memory.limit() == Some(-1) {
            memory.set_limit(None);
        }
    }
    resources.set_memory(Some(memory));
    let mut pids = LinuxPids::default();
    pids.set_limit(match limits.pids_max {
        // Bounded by PIDS_CEILING when resolved; saturate anyway rather than wrap.
        Some(count) => i64::try_from(count).unwrap_or(i64::MAX),
        None => -1,
    });
    resources.set_pids(Some(pids));
    linux.set_resources(Some(resources));

    linux.set_cgroups_path((!options.omit_cgroups_path).then_some(cgroups_path));

    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if !namespaces
        .iter()
        .any(|namespace| namespace.typ() == LinuxNamespaceType::Cgroup)
    {
        let mut cgroup = LinuxNamespace::default();
        cgroup.set_typ(LinuxNamespaceType::Cgroup);
        namespaces.push(cgroup);
    }
    linux.set_namespaces(Some(namespaces));

    let profile = match (linux.seccomp(), options.omit_seccomp_rule) {
        (Some(own), false) => Some(seccomp::merged(own)?),
        (Some(own), true) => Some(seccomp::checked(own)?),
        (None, false) => Some(seccomp::default_profile()?),
        (None, true) => None,
    };
    linux.set_seccomp(profile);

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|mount| mount.destination() != Path::new(CGROUP_MOUNT));
    let mut cgroupfs = Mount::default();
    cgroupfs.set_destination(PathBuf::from(CGROUP_MOUNT));
    cgroupfs.set_typ(Some("cgroup".to_string()));
    cgroupfs.set_source(Some(PathBuf::from("cgroup")));
    // Read-only: the container must not raise its own limits or escape into a sibling.
    cgroupfs.set_options(Some(
        ["nosuid", "noexec", "nodev", "relatime", "ro"]
            .map(String::from)
            .to_vec(),
    ));
    mounts.push(cgroupfs);
    spec.set_mounts(Some(mounts));

    let process = spec.process_mut().as_mut().ok_or(SpecError::Missing {
        what: "process section",
    })?;
    process.set_oom_score_adj(Some(options.init_score()));
    Ok(())
}

#[cfg(test)]
mod tests;

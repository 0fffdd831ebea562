//! Applying the guard's limits and secure defaults to an OCI runtime spec.
//!
//! Every container gets: its limits in `linux.resources`, an explicit `cgroupsPath` of
//! `<root>/<id>` (default root `/guard`, so the guard always knows where the cgroup is instead
//! of depending on the runtime's naming), a cgroup namespace, a read-only cgroupfs at
//! `/sys/fs/cgroup`, and an explicit `process.oomScoreAdj` (never the agent's inherited -1000,
//! which makes a memcg OOM livelock: the OOM killer finds no victim and loops).
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources, Mount, Process, Root, Spec,
};

use crate::{
    container_id::{ContainerId, ContainerIdError},
    limits::Limits,
};

/// Default parent of every container's cgroup, relative to the cgroup2 mount.
pub const DEFAULT_CGROUP_ROOT: &str = "/guard";
/// Default `oomScoreAdj` of container processes.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = 0;
/// Where the container sees its own cgroup (through its cgroup namespace).
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// `PATH` for a command given without a bundle: the default executor uses execvp.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    #[error(
        "cgroup root {root:?} must be an absolute path of plain components (no '.', '..', \
         empty, control characters)"
    )]
    CgroupRoot { root: String },
    #[error(
        "oomScoreAdj {value} is not allowed: it must be in -999..=1000 (-1000 makes a \
         container unkillable and its memcg OOM a livelock)"
    )]
    OomScoreAdj { value: i32 },
    #[error("the spec has no {what}")]
    Missing { what: &'static str },
    #[error("memory limit {bytes} does not fit the OCI spec's signed 64-bit field")]
    TooLarge { bytes: u64 },
    #[error("building the spec's {what}: {source}")]
    Build {
        what: &'static str,
        source: oci_spec::OciSpecError,
    },
    #[error("the container command is empty")]
    EmptyCommand,
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
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            swap_max: Some(0),
            pids_max: Some(512),
        }
    }

    fn spec() -> Spec {
        for_rootfs(Path::new("/tmp/rootfs"), &["sh".to_string()], &[]).unwrap()
    }

    #[test]
    fn applies_limits_path_namespace_readonly_cgroupfs_and_score() {
        let mut spec = spec();
        apply(&mut spec, "web-1", &limits(), &SpecOptions::default()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/guard/web-1"))
        );
        let resources = linux.resources().as_ref().unwrap();
        let memory = resources.memory().unwrap();
        assert_eq!(memory.limit(), Some(64 << 20));
        assert_eq!(
            memory.swap(),
            Some(64 << 20),
            "memory+swap = memory: no swap"
        );
        assert_eq!(resources.pids().unwrap().limit(), 512);
        assert!(
            linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
        );
        let cgroupfs: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new(CGROUP_MOUNT))
            .collect();
        assert_eq!(cgroupfs.len(), 1);
        assert!(
            cgroupfs[0]
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    }

    #[test]
    fn max_limits_are_minus_one_and_namespace_is_added_once() {
        let mut spec = spec();
        let unlimited = Limits {
            memory_max: None,
            swap_max: None,
            pids_max: None,
        };
        // A bundle without a cgroup namespace gets one; one that has it keeps exactly one.
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .namespaces_mut()
            .as_mut()
            .unwrap()
            .retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
        apply(&mut spec, "a", &unlimited, &SpecOptions::default()).unwrap();
        apply(&mut spec, "a", &unlimited, &SpecOptions::default()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let memory = linux.resources().as_ref().unwrap().memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(-1), Some(-1)));
        assert_eq!(
            linux.resources().as_ref().unwrap().pids().unwrap().limit(),
            -1
        );
        let cgroup_namespaces = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Cgroup)
            .count();
        assert_eq!(cgroup_namespaces, 1);
    }

    #[test]
    fn configurable_root_and_score_and_omitted_path() {
        let mut spec = spec();
        let options = SpecOptions {
            cgroup_root: "/agent/boxes".into(),
            oom_score_adj: 500,
            ..SpecOptions::default()
        };
        apply(&mut spec, "x", &limits(), &options).unwrap();
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/agent/boxes/x"))
        );
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(500));
        // An infrastructure init has its own score in the spec (the spec's process is the init).
        let options = SpecOptions {
            oom_score_adj: 500,
            init_oom_score_adj: Some(-998),
            ..SpecOptions::default()
        };
        apply(&mut spec, "x", &limits(), &options).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-998));
        let options = SpecOptions {
            omit_cgroups_path: true,
            ..Default::default()
        };
        apply(&mut spec, "x", &limits(), &options).unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().cgroups_path(), &None);
    }

    /// A hostile id is an error naming it, and no path is built from it.
    #[test]
    fn hostile_ids_are_errors_not_paths() {
        let long = "z".repeat(200);
        for id in [
            "",
            "..",
            ".",
            "../../etc",
            "a/b",
            "/abs",
            "a\0b",
            "a\nb",
            "tab\tid",
            "a b",
            &long,
        ] {
            let mut spec = spec();
            let before = spec.clone();
            let error = apply(&mut spec, id, &limits(), &SpecOptions::default())
                .unwrap_err()
                .to_string();
            assert_eq!(spec, before, "{id:?}: the spec was changed");
            if id.is_empty() {
                assert!(error.contains("empty"), "{error}");
            } else if id.len() > 128 {
                assert!(error.contains("200 bytes"), "{error}");
            } else {
                assert!(error.contains(&format!("{id:?}")), "{id:?}: {error}");
            }
        }
    }

    #[test]
    fn bad_roots_and_scores_are_rejected_by_value() {
        for root in ["guard", "/guard/../x", "/a//b", "/./a", "/a\nb", ""] {
            let options = SpecOptions {
                cgroup_root: root.into(),
                ..Default::default()
            };
            let error = options.cgroups_path("ok").unwrap_err().to_string();
            assert!(error.contains(&format!("{root:?}")), "{root:?}: {error}");
        }
        for score in [-1000, -5000, 1001] {
            for options in [
                SpecOptions {
                    oom_score_adj: score,
                    ..Default::default()
                },
                SpecOptions {
                    init_oom_score_adj: Some(score),
                    ..Default::default()
                },
            ] {
                let error = options.cgroups_path("ok").unwrap_err().to_string();
                assert!(error.contains(&score.to_string()), "{error}");
            }
        }
        assert!(
            SpecOptions {
                cgroup_root: "/".into(),
                ..Default::default()
            }
            .cgroups_path("c")
            .is_ok()
        );
    }

    #[test]
    fn without_swap_accounting_no_swap_limit_is_asked_for() {
        let options = SpecOptions {
            swap_accounting: false,
            ..SpecOptions::default()
        };
        for memory_max in [Some(64 << 20), None] {
            let mut spec = spec();
            let limits = Limits {
                memory_max,
                ..limits()
            };
            apply(&mut spec, "a", &limits, &options).unwrap();
            let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
            let memory = resources.memory().unwrap();
            assert_eq!(memory.swap(), None, "{memory_max:?}");
            // Unlimited memory is left at the cgroup's own `max`, not written.
            let expected = memory_max.map(|bytes| bytes as i64);
            assert_eq!(memory.limit(), expected, "{memory_max:?}");
        }
    }

    #[test]
    fn mounts_of_filesystems_the_kernel_lacks_are_dropped_and_named() {
        let mut spec = spec();
        apply(&mut spec, "a", &limits(), &SpecOptions::default()).unwrap();
        let known: Vec<String> = ["proc", "tmpfs", "devpts", "sysfs"]
            .map(String::from)
            .into();
        let dropped = drop_unsupported_mounts(&mut spec, &known);
        assert_eq!(dropped, [PathBuf::from("/dev/mqueue")]);
        let destinations: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|mount| mount.destination().to_path_buf())
            .collect();
        // The read-only cgroupfs is guard's own and stays (libcontainer mounts it as cgroup2).
        assert!(
            destinations.contains(&PathBuf::from(CGROUP_MOUNT)),
            "{destinations:?}"
        );
        assert!(
            destinations.contains(&PathBuf::from("/proc")),
            "{destinations:?}"
        );
        // A kernel with everything drops nothing.
        let all: Vec<String> = ["proc", "tmpfs", "devpts", "sysfs", "mqueue"]
            .map(String::from)
            .into();
        let mut full = spec.clone();
        assert!(drop_unsupported_mounts(&mut full, &all).is_empty());
    }

    #[test]
    fn empty_command_is_rejected() {
        assert!(matches!(
            for_rootfs(Path::new("/r"), &[], &[]),
            Err(SpecError::EmptyCommand)
        ));
    }
}

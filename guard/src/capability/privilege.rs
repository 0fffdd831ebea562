//! May this process use BPF here? Diagnosed before any kernel feature: a refusal (EPERM) must
//! never read as a kernel that lacks the feature, and the operator needs what to grant.
//!
//! What guard's loader needs, found by running it with each set (6.18; `setpriv` as uid
//! 65534): CAP_BPF for the programs and maps, CAP_PERFMON to attach them (tracepoint and
//! kprobe perf events), CAP_DAC_READ_SEARCH to read tracefs (root's alone, mode 0700: the
//! tracepoints' layouts and ids), CAP_SYS_ADMIN where tracefs is not mounted yet (guard
//! mounts it). CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON, and is the only way before
//! 5.8, which has neither; kernels before 5.11 charge maps to RLIMIT_MEMLOCK, which guard
//! raises (CAP_SYS_RESOURCE) unless its hard limit is already unlimited. Capabilities held
//! in a user namespace other than the initial one do not count for any of these.
use serde::Serialize;

/// Capability numbers (linux/capability.h).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether this process may load and attach guard's programs, and what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Privilege {
    /// The process's effective uid.
    pub euid: u32,
    /// The capabilities guard's BPF tiers need on this kernel, as things stand (tracefs
    /// mounted or not), in the order to grant them.
    pub needed: Vec<String>,
    /// Those this process lacks (all of them in a user namespace other than the initial one).
    pub missing: Vec<String>,
    /// The process runs in a user namespace other than the initial one.
    pub user_namespace: bool,
    /// The kernel refused a BPF probe although no capability was missing (an LSM, lockdown,
    /// a seccomp filter): its error.
    pub bpf_refused: Option<String>,
}

/// What the privilege diagnosis reads about the process and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub euid: u32,
    /// `CapEff` of /proc/self/status.
    pub effective: u64,
    pub user_namespace: bool,
    /// (major, minor) of the kernel release; None when it does not parse.
    pub kernel: Option<(u32, u32)>,
    pub tracefs: TracefsAccess,
    /// RLIMIT_MEMLOCK's hard limit is unlimited.
    pub memlock_unlimited: bool,
}

/// tracefs as this process finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TracefsAccess {
    /// Mounted and readable.
    Readable,
    /// Mounted, but its files are refused to this process.
    Refused,
    /// Not mounted (guard would mount it).
    NotMounted,
    /// The kernel has no tracefs: no BPF tier whatever the privilege.
    NotInKernel,
}

impl Privilege {
    /// Reads this process's privilege.
    pub(crate) fn probe(kernel_release: &str, tracefs: TracefsAccess) -> Self {
        Self::of(&Process::read(kernel_release, tracefs))
    }

    /// The diagnosis for `process`.
    pub(crate) fn of(process: &Process) -> Self {
        // The kernel checks these in the initial user namespace: none count from another.
        let has = |bit: u32| !process.user_namespace && process.effective & (1u64 << bit) != 0;
        let mut needs: Vec<(&str, bool)> = Vec::new();
        match process.kernel {
            Some(version) if version < (5, 8) => {
                needs.push(("CAP_SYS_ADMIN", has(CAP_SYS_ADMIN)));
            }
            _ => {
                needs.push(("CAP_BPF", has(CAP_BPF) || has(CAP_SYS_ADMIN)));
                needs.push(("CAP_PERFMON", has(CAP_PERFMON) || has(CAP_SYS_ADMIN)));
            }
        }
        // tracefs is root's (mode 0700): its owner, or a process that may bypass its mode.
        let reads_as_root = (process.euid == 0 && !process.user_namespace)
            || has(CAP_DAC_READ_SEARCH)
            || has(CAP_DAC_OVERRIDE);
        match process.tracefs {
            TracefsAccess::Refused => needs.push(("CAP_DAC_READ_SEARCH", false)),
            TracefsAccess::NotMounted => {
                needs.push(("CAP_DAC_READ_SEARCH", reads_as_root));
                needs.push(("CAP_SYS_ADMIN", has(CAP_SYS_ADMIN)));
            }
            TracefsAccess::Readable | TracefsAccess::NotInKernel => {}
        }
        if process.kernel.is_some_and(|version| version < (5, 11)) && !process.memlock_unlimited {
            needs.push(("CAP_SYS_RESOURCE", has(CAP_SYS_RESOURCE)));
        }
        let mut needed: Vec<String> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for (name, held) in needs {
            if !needed.iter().any(|seen| seen == name) {
                needed.push(name.to_string());
                if !held {
                    missing.push(name.to_string());
                }
            }
        }
        Self {
            euid: process.euid,
            needed,
            missing,
            user_namespace: process.user_namespace,
            bpf_refused: None,
        }
    }

    /// The process may load and attach guard's programs (as far as can be told before
    /// loading them).
    pub fn permits_bpf(&self) -> bool {
        self.missing.is_empty() && self.bpf_refused.is_none()
    }

    /// What keeps BPF away, and what to grant; None when BPF is permitted.
    pub fn note(&self) -> Option<String> {
        let grant = self.needed.join(" + ");
        if self.user_namespace && !self.missing.is_empty() {
            return Some(format!(
                "not permitted to use BPF: this process runs in a user namespace, where \
                 capabilities do not count for BPF; run the agent in the initial user namespace \
                 as root, or with {grant}"
            ));
        }
        if !self.missing.is_empty() {
            return Some(format!(
                "not permitted to use BPF: this process (euid {}) lacks {}; run the agent as \
                 root, or grant it {grant}",
                self.euid,
                and_list(&self.missing)
            ));
        }
        self.bpf_refused.as_ref().map(|error| {
            format!(
                "not permitted to use BPF: the kernel refused a BPF program although this \
                 process holds {grant}: {error} (an LSM, kernel lockdown or a seccomp filter \
                 forbids it)"
            )
        })
    }
}

/// Root with every capability on a 6.18 kernel, tracefs readable: what the unit tests of
/// the notes assume.
#[cfg(test)]
pub(crate) fn granted() -> Privilege {
    Privilege::of(&Process {
        euid: 0,
        effective: u64::MAX,
        user_namespace: false,
        kernel: Some((6, 18)),
        tracefs: TracefsAccess::Readable,
        memlock_unlimited: true,
    })
}

/// An unprivileged process (uid 65534, no capability) where tracefs is mounted.
#[cfg(test)]
pub(crate) fn refused() -> Privilege {
    Privilege::of(&Process {
        euid: 65534,
        effective: 0,
        user_namespace: false,
        kernel: Some((6, 18)),
        tracefs: TracefsAccess::Refused,
        memlock_unlimited: false,
    })
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl Process {
    fn read(kernel_release: &str, tracefs: TracefsAccess) -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let euid = field("Uid")
            .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
            // SAFETY: geteuid has no preconditions.
            .unwrap_or_else(|| unsafe { libc::geteuid() });
        let effective = field("CapEff")
            .and_then(|mask| u64::from_str_radix(mask, 16).ok())
            .unwrap_or(0);
        // The initial user namespace maps every id to itself.
        let user_namespace = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
            map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"]
        });
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes a valid rlimit struct.
        let memlock_unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
            && limit.rlim_max == libc::RLIM_INFINITY;
        Self {
            euid,
            effective,
            user_namespace,
            kernel: kernel_version(kernel_release),
            tracefs,
            memlock_unlimited,
        }
    }
}

/// (major, minor) of a release such as `6.18.44-fc-v1300`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << 41) - 1;

    fn process(euid: u32, caps: &[u32]) -> Process {
        Process {
            euid,
            effective: caps.iter().fold(0, |mask, bit| mask | (1 << bit)),
            user_namespace: false,
            kernel: Some((6, 18)),
            tracefs: TracefsAccess::Readable,
            memlock_unlimited: false,
        }
    }

    #[test]
    fn root_with_every_capability_lacks_nothing() {
        let root = Process {
            effective: ALL,
            tracefs: TracefsAccess::NotMounted,
            ..process(0, &[])
        };
        let privilege = Privilege::of(&root);
        assert!(privilege.permits_bpf());
        assert_eq!(privilege.note(), None);
        assert_eq!(
            privilege.needed,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_ADMIN"
            ]
        );
    }

    #[test]
    fn an_unprivileged_process_is_told_what_to_grant() {
        let nobody = Process {
            tracefs: TracefsAccess::Refused,
            ..process(65534, &[])
        };
        let privilege = Privilege::of(&nobody);
        assert!(!privilege.permits_bpf());
        assert_eq!(
            privilege.note().unwrap(),
            "not permitted to use BPF: this process (euid 65534) lacks CAP_BPF, CAP_PERFMON and \
             CAP_DAC_READ_SEARCH; run the agent as root, or grant it CAP_BPF + CAP_PERFMON + \
             CAP_DAC_READ_SEARCH"
        );
        // Granted the two BPF capabilities, tracefs is what remains.
        let half = Process {
            tracefs: TracefsAccess::Refused,
            ..process(65534, &[CAP_BPF, CAP_PERFMON])
        };
        assert_eq!(Privilege::of(&half).missing, ["CAP_DAC_READ_SEARCH"]);
        let enough = process(65534, &[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH]);
        assert!(Privilege::of(&enough).permits_bpf());
    }

    #[test]
    fn sys_admin_stands_for_bpf_and_perfmon_and_is_all_an_old_kernel_knows() {
        assert!(Privilege::of(&process(65534, &[CAP_SYS_ADMIN])).permits_bpf());
        let old = Process {
            kernel: Some((5, 4)),
            ..process(65534, &[CAP_BPF, CAP_PERFMON])
        };
        let privilege = Privilege::of(&old);
        assert_eq!(privilege.missing, ["CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"]);
        let unlimited = Process {
            memlock_unlimited: true,
            ..old
        };
        assert_eq!(Privilege::of(&unlimited).missing, ["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn capabilities_in_a_user_namespace_do_not_count() {
        let contained = Process {
            user_namespace: true,
            effective: ALL,
            ..process(0, &[])
        };
        let privilege = Privilege::of(&contained);
        assert!(!privilege.permits_bpf());
        assert!(
            privilege
                .note()
                .unwrap()
                .contains("runs in a user namespace"),
            "{privilege:?}"
        );
    }

    #[test]
    fn a_refusal_despite_the_capabilities_is_said_as_such() {
        let mut privilege = Privilege::of(&process(0, &[CAP_BPF, CAP_PERFMON]));
        assert!(privilege.permits_bpf());
        privilege.bpf_refused = Some("Operation not permitted (os error 1)".into());
        assert!(!privilege.permits_bpf());
        assert!(
            privilege
                .note()
                .unwrap()
                .contains("the kernel refused a BPF program although this process holds")
        );
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("unknown (No such file)"), None);
    }
}

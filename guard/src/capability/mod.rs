//! What the running kernel offers the guard, and the tier that follows (docs/ARCHITECTURE.md):
//! tier 3 = tracepoints + kprobes, tier 2 = tracepoints only, tier 1 = the kernel's own live
//! sources without tracing (perf's task records per cgroup, the kernel log), tier 0 = cgroup
//! event files alone.
//! The tracepoints and kprobe symbols it looks for are the signals' own (`signals::ALL`).
use std::{collections::BTreeSet, fs, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};
use serde::Serialize;

use crate::{Tier, cgroup::Hierarchy, signals, tracefs};

mod notes;
mod privilege;

pub use privilege::Privilege;
use privilege::TracefsAccess;

/// A function that exists exactly when the kernel has CONFIG_PSI (`psi=0` or
/// CONFIG_PSI_DEFAULT_DISABLED only hide /proc/pressure).
const PSI_SYMBOL: &str = "psi_memstall_enter";

/// Controllers enforcement needs in the cgroup v2 hierarchy.
pub const NEEDED_CONTROLLERS: &[&str] = &["memory", "pids"];

/// Whether one tracepoint a signal attaches to exists in this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct TracepointPresence {
    /// The tracepoint, as `category:name`.
    pub name: String,
    /// Whether tracefs has it (false when tracefs is unavailable).
    pub present: bool,
}

/// The cgroup v2 hierarchy as the probe found it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CgroupReport {
    /// Where cgroup2 is mounted, if it is.
    pub mount: Option<String>,
    /// The controllers its root offers (`cgroup.controllers`).
    pub controllers: Vec<String>,
    /// Of the controllers enforcement needs (`memory`, `pids`), those it does not offer.
    pub missing_controllers: Vec<String>,
}

/// Everything `guard probe` reports.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CapabilityReport {
    /// `/proc/sys/kernel/osrelease` (or `unknown (…)` with the read's error).
    pub kernel_release: String,
    /// Whether this process may use BPF, and what it lacks: probed first, since a refusal
    /// hides every BPF feature behind it.
    pub privilege: Privilege,
    /// The kernel exposes its BTF (`/sys/kernel/btf/vmlinux`); guard does not need it.
    pub btf: bool,
    /// The kernel loads BPF tracepoint programs (false too where `privilege` forbade the
    /// probe: the notes then say nothing of the kernel's BPF).
    pub bpf_tracepoint_programs: bool,
    /// The kernel has BPF ring buffers (5.8+; false too where `privilege` forbade the probe).
    pub bpf_ring_buffer: bool,
    /// Where tracefs is mounted (None: it could not be; the notes say why).
    pub tracefs: Option<String>,
    /// Every tracepoint the signals attach to, and whether it exists.
    pub tracepoints: Vec<TracepointPresence>,
    /// The kernel has kprobe events (tracefs `kprobe_events`: CONFIG_KPROBE_EVENTS).
    pub kprobes: bool,
    /// Every kretprobe target (`pids_can_fork`: the exact fork-denial cause) is a kernel
    /// symbol, so tier 2 can attach. `guard probe` reads it from `/proc/kallsyms`; a guard's
    /// start learns it by attaching the kretprobe (reading kallsyms cost ~10 ms of a ~25 ms
    /// start).
    pub pids_can_fork_symbol: bool,
    /// The kernel knows the tracefs filesystem (CONFIG_FTRACE's tracing core is built in).
    pub tracefs_supported: bool,
    /// Why tracefs could not be mounted although the kernel knows it.
    pub tracefs_error: Option<String>,
    /// The BPF JIT is built in (/proc/sys/net/core/bpf_jit_enable); without it programs run
    /// in the interpreter.
    pub bpf_jit: bool,
    /// Pressure stall information is on (`/proc/pressure/memory` reads).
    pub psi: bool,
    /// CONFIG_PSI is built in (PSI may still be disabled at boot), from `/proc/kallsyms`; None
    /// where it was not read (a guard's start does not: `guard probe` does).
    pub psi_built_in: Option<bool>,
    /// The cgroup v2 hierarchy and its controllers.
    pub cgroup_v2: CgroupReport,
    /// The kernel has perf events (CONFIG_PERF_EVENTS: `/proc/sys/kernel/perf_event_paranoid`).
    pub perf_events: bool,
    /// perf events can be filtered by cgroup (CONFIG_CGROUP_PERF: `perf_event` in
    /// `/proc/cgroups`).
    pub cgroup_perf: bool,
    /// The kernel has taskstats with delay accounting (CONFIG_TASKSTATS +
    /// CONFIG_TASK_DELAY_ACCT: `/proc/sys/kernel/task_delayacct`): tier 1 then sums each
    /// exited task's direct-reclaim and thrashing delays per container (`taskstats`).
    pub delay_accounting: bool,
    /// The highest tier this kernel allows: 3 with every tracepoint, BPF tracepoint programs,
    /// ring buffers, tracefs, kprobes and the kretprobe targets; 2 without the kprobe part; 1
    /// with perf events filtered by cgroup (and the privilege to open them); else 0.
    pub tier: Tier,
    /// The live sources that tier runs (`bpf`, `perf`, `kmsg`, `cgroup_files`): what a guard
    /// started here feeds its events from.
    pub sources: Vec<String>,
    /// The kernel options that would lift the tier, in the order to turn them on.
    pub options_to_lift_tier: Vec<String>,
    /// Plain statements about what is missing, named by the kernel option, and what follows.
    pub notes: Vec<String>,
}

impl CapabilityReport {
    /// Probes the running kernel. Mounts tracefs if the kernel has it and it is not mounted
    /// (the loader needs it anyway); everything else is read-only.
    pub fn probe() -> Self {
        Self::probe_with(SymbolScan::Kallsyms)
    }

    /// [`probe`](Self::probe) without reading `/proc/kallsyms`, for a guard's start: kprobe
    /// events stand for the kretprobe's target until attaching it says otherwise
    /// ([`kretprobe_attached`](Self::kretprobe_attached)).
    pub(crate) fn probe_for_start() -> Self {
        Self::probe_with(SymbolScan::Skip)
    }

    /// What attaching the kretprobe showed: when it could not attach, the tier, the options
    /// and the notes say so.
    pub(crate) fn kretprobe_attached(&mut self, attached: bool) {
        if self.pids_can_fork_symbol != attached {
            self.pids_can_fork_symbol = attached;
            self.derive_conclusions();
        }
    }

    /// The tier, the options that would lift it and the notes, from the findings.
    fn derive_conclusions(&mut self) {
        self.tier = self.derive_tier();
        self.sources = crate::sources::live_at(self.tier)
            .iter()
            .map(|source| source.to_string())
            .collect();
        if self.tier == Tier::KernelSources && self.delay_accounting {
            // Where taskstats opens (a guard's start says if it did not).
            self.sources
                .insert(self.sources.len() - 1, "taskstats".into());
        }
        self.options_to_lift_tier = self.derive_options_to_lift_tier();
        self.notes = self.derive_notes();
    }

    fn probe_with(scan: SymbolScan) -> Self {
        let kernel_release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|error| format!("unknown ({error})"));
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        let tracefs_supported = filesystem_known("tracefs");
        // Privilege first: without it every BPF probe below would fail as if the kernel
        // lacked the feature.
        let mut privilege = Privilege::probe(&kernel_release, tracefs_access(tracefs_supported));
        let (bpf_tracepoint_programs, bpf_ring_buffer) = if privilege.permits_bpf() {
            let programs = is_program_supported(ProgramType::TracePoint);
            if let Err(aya::programs::ProgramError::SyscallError(error)) = &programs
                && matches!(
                    error.io_error.raw_os_error(),
                    Some(libc::EPERM | libc::EACCES)
                )
            {
                privilege.bpf_refused = Some(error.io_error.to_string());
            }
            (
                programs.unwrap_or(false),
                is_map_supported(MapType::RingBuf).unwrap_or(false),
            )
        } else {
            (false, false)
        };
        // Without tracefs in the kernel a mount can only fail, and without the privilege to
        // use it there is nothing to mount it for: do not try.
        let tracefs_root = if tracefs_supported && privilege.permits_bpf() {
            tracefs::ensure_mounted().map_err(|error| error.to_string())
        } else {
            Err(String::new())
        };
        let tracepoints: Vec<_> = signals::tracepoints()
            .map(|(category, name)| TracepointPresence {
                name: format!("{category}:{name}"),
                present: tracefs_root
                    .as_ref()
                    .is_ok_and(|root| root.join("events").join(category).join(name).is_dir()),
            })
            .collect();
        // kprobe_events exists exactly when the kernel has CONFIG_KPROBE_EVENTS.
        let kprobes = tracefs_root
            .as_ref()
            .is_ok_and(|root| root.join("kprobe_events").exists());
        let (pids_can_fork_symbol, psi_built_in) = match scan {
            SymbolScan::Kallsyms => {
                let wanted: Vec<&str> = signals::kprobe_functions().chain([PSI_SYMBOL]).collect();
                let symbols = kallsyms_find(&wanted);
                (
                    signals::kprobe_functions().all(|function| symbols.contains(function)),
                    Some(symbols.contains(PSI_SYMBOL)),
                )
            }
            SymbolScan::Skip => (kprobes, None),
        };
        let psi = fs::read_to_string("/proc/pressure/memory").is_ok();
        let cgroup_v2 = probe_cgroup();
        let tracefs_error = tracefs_root
            .as_ref()
            .err()
            .filter(|e| !e.is_empty())
            .cloned();
        let tracefs = tracefs_root.ok().map(|root| root.display().to_string());

        let mut report = Self {
            kernel_release,
            privilege,
            btf,
            bpf_tracepoint_programs,
            bpf_ring_buffer,
            tracefs,
            tracepoints,
            kprobes,
            pids_can_fork_symbol,
            tracefs_supported,
            tracefs_error,
            bpf_jit: Path::new("/proc/sys/net/core/bpf_jit_enable").exists(),
            psi,
            psi_built_in,
            cgroup_v2,
            perf_events: Path::new("/proc/sys/kernel/perf_event_paranoid").exists(),
            cgroup_perf: controller_built_in("perf_event"),
            delay_accounting: Path::new(crate::sources::taskstats::DELAYACCT_SYSCTL).exists(),
            tier: Tier::CgroupFilesOnly,
            sources: Vec::new(),
            options_to_lift_tier: Vec::new(),
            notes: Vec::new(),
        };
        report.derive_conclusions();
        report
    }

    fn baseline_tracepoints_present(&self) -> bool {
        self.tracepoints.iter().all(|tracepoint| tracepoint.present)
    }

    fn derive_tier(&self) -> Tier {
        let tracing = self.privilege.permits_bpf()
            && self.bpf_tracepoint_programs
            && self.bpf_ring_buffer
            && self.tracefs.is_some()
            && self.baseline_tracepoints_present();
        match (tracing, self.kprobes && self.pids_can_fork_symbol) {
            (false, _) if self.kernel_sources() => Tier::KernelSources,
            (false, _) => Tier::CgroupFilesOnly,
            (true, false) => Tier::Tracepoints,
            (true, true) => Tier::TracepointsAndKprobes,
        }
    }

    /// Tier 1: perf events per cgroup, opened system-wide per CPU, which takes the privilege
    /// the BPF loader needs too (CAP_PERFMON or CAP_SYS_ADMIN, root in practice).
    fn kernel_sources(&self) -> bool {
        self.perf_events && self.cgroup_perf && self.privilege.permits_bpf()
    }

    /// Human-readable report for a terminal.
    pub fn to_text(&self) -> String {
        let yes_no = |value: bool| if value { "yes" } else { "no" };
        let mut out = String::new();
        let mut line = |key: &str, value: &str| out.push_str(&format!("{key:<28} {value}\n"));
        line("kernel", &self.kernel_release);
        line("tier", &self.tier.to_string());
        line("live sources", &self.sources.join(" "));
        line(
            "BPF permitted",
            if self.privilege.permits_bpf() {
                "yes"
            } else {
                "no (see the notes)"
            },
        );
        line("BTF", yes_no(self.btf));
        line(
            "BPF tracepoint programs",
            yes_no(self.bpf_tracepoint_programs),
        );
        line("BPF ring buffer", yes_no(self.bpf_ring_buffer));
        line("tracefs", self.tracefs.as_deref().unwrap_or("unavailable"));
        for tracepoint in &self.tracepoints {
            line(
                &format!("  {}", tracepoint.name),
                if tracepoint.present {
                    "present"
                } else {
                    "MISSING"
                },
            );
        }
        line("kprobes", yes_no(self.kprobes));
        line("pids_can_fork symbol", yes_no(self.pids_can_fork_symbol));
        line("BPF JIT", yes_no(self.bpf_jit));
        line("perf events", yes_no(self.perf_events));
        line("  cgroup filter", yes_no(self.cgroup_perf));
        line("delay accounting", yes_no(self.delay_accounting));
        line("PSI", yes_no(self.psi));
        line(
            "cgroup v2",
            self.cgroup_v2.mount.as_deref().unwrap_or("not mounted"),
        );
        line("  controllers", &self.cgroup_v2.controllers.join(" "));
        if !self.options_to_lift_tier.is_empty() {
            line("to lift the tier", &self.options_to_lift_tier.join(" "));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

fn probe_cgroup() -> CgroupReport {
    let Ok(hierarchy) = Hierarchy::find() else {
        return CgroupReport {
            mount: None,
            controllers: Vec::new(),
            missing_controllers: NEEDED_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
        };
    };
    let controllers = hierarchy.controllers().unwrap_or_default();
    let missing_controllers = NEEDED_CONTROLLERS
        .iter()
        .filter(|needed| !controllers.iter().any(|c| c == *needed))
        .map(|c| c.to_string())
        .collect();
    CgroupReport {
        mount: Some(hierarchy.mount.display().to_string()),
        controllers,
        missing_controllers,
    }
}

/// tracefs as this process finds it.
fn tracefs_access(supported: bool) -> TracefsAccess {
    if !supported {
        return TracefsAccess::NotInKernel;
    }
    match tracefs::mounted() {
        Some(root) if fs::read_dir(root.join("events")).is_ok() => TracefsAccess::Readable,
        Some(_) => TracefsAccess::Refused,
        None => TracefsAccess::NotMounted,
    }
}

/// Whether the kernel has a cgroup controller built in (`/proc/cgroups` lists every one, on
/// cgroup v2 too, where `perf_event` is implicit and never in `cgroup.controllers`).
fn controller_built_in(name: &str) -> bool {
    fs::read_to_string("/proc/cgroups").is_ok_and(|text| {
        text.lines()
            .any(|line| line.split_whitespace().next() == Some(name))
    })
}

/// Whether the kernel knows a filesystem type (`/proc/filesystems`).
fn filesystem_known(name: &str) -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|text| {
        text.lines()
            .any(|line| line.split_whitespace().last() == Some(name))
    })
}

/// Whether a probe reads `/proc/kallsyms`.
#[derive(Clone, Copy)]
enum SymbolScan {
    Kallsyms,
    Skip,
}

/// Which of `symbols` `/proc/kallsyms` lists (addresses may be hidden; names are still
/// listed). One pass over the file, whatever the number of symbols.
fn kallsyms_find<'a>(symbols: &[&'a str]) -> BTreeSet<&'a str> {
    use std::io::BufRead;
    let mut found = BTreeSet::new();
    let Ok(file) = fs::File::open("/proc/kallsyms") else {
        return found;
    };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if let Some(name) = line.split_whitespace().nth(2)
            && let Some(symbol) = symbols.iter().find(|symbol| **symbol == name)
        {
            found.insert(*symbol);
            if found.len() == symbols.len() {
                break;
            }
        }
    }
    found
}

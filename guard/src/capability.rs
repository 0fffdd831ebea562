//! What the running kernel offers the guard, and the tier that follows (docs/ARCHITECTURE.md):
//! tier 2 = tracepoints + kprobes, tier 1 = tracepoints only, tier 0 = cgroup event files alone.
//! The tracepoints and kprobe symbols it looks for are the signals' own (`signals::ALL`).
use std::{fs, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};
use serde::Serialize;

use crate::{Tier, cgroup::Hierarchy, signals, tracefs};

/// Controllers enforcement needs in the cgroup v2 hierarchy.
pub const NEEDED_CONTROLLERS: &[&str] = &["memory", "pids"];

#[derive(Debug, Clone, Serialize)]
pub struct TracepointPresence {
    pub name: String,
    pub present: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupReport {
    /// Where cgroup2 is mounted, if it is.
    pub mount: Option<String>,
    pub controllers: Vec<String>,
    pub missing_controllers: Vec<String>,
}

/// Everything `guard probe` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CapabilityReport {
    pub kernel_release: String,
    pub btf: bool,
    pub bpf_tracepoint_programs: bool,
    pub bpf_ring_buffer: bool,
    /// Where tracefs is mounted (None: it could not be; the notes say why).
    pub tracefs: Option<String>,
    pub tracepoints: Vec<TracepointPresence>,
    pub kprobes: bool,
    /// Every kretprobe target (`pids_can_fork`: the exact fork-denial cause) is a kernel
    /// symbol, so tier 2 can attach.
    pub pids_can_fork_symbol: bool,
    pub psi: bool,
    pub cgroup_v2: CgroupReport,
    pub tier: Tier,
    /// Plain statements about what is missing and what follows from it.
    pub notes: Vec<String>,
}

impl CapabilityReport {
    /// Probes the running kernel. Mounts tracefs if it is not mounted (the loader needs it
    /// anyway); everything else is read-only.
    pub fn probe() -> Self {
        let kernel_release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|error| format!("unknown ({error})"));
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        let bpf_tracepoint_programs =
            is_program_supported(ProgramType::TracePoint).unwrap_or(false);
        let bpf_ring_buffer = is_map_supported(MapType::RingBuf).unwrap_or(false);
        let tracefs_root = tracefs::ensure_mounted();
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
        let pids_can_fork_symbol = signals::kprobe_functions().all(kallsyms_has);
        let psi = fs::read_to_string("/proc/pressure/memory").is_ok();
        let cgroup_v2 = probe_cgroup();
        let tracefs_error = tracefs_root.as_ref().err().map(ToString::to_string);
        let tracefs = tracefs_root.ok().map(|root| root.display().to_string());

        let mut report = Self {
            kernel_release,
            btf,
            bpf_tracepoint_programs,
            bpf_ring_buffer,
            tracefs,
            tracepoints,
            kprobes,
            pids_can_fork_symbol,
            psi,
            cgroup_v2,
            tier: Tier::CgroupFilesOnly,
            notes: Vec::new(),
        };
        report.tier = report.derive_tier();
        report.notes = report.derive_notes();
        if let Some(error) = tracefs_error {
            report
                .notes
                .insert(0, format!("tracefs unavailable: {error}"));
        }
        report
    }

    fn baseline_tracepoints_present(&self) -> bool {
        self.tracepoints.iter().all(|tracepoint| tracepoint.present)
    }

    fn derive_tier(&self) -> Tier {
        let tracing = self.bpf_tracepoint_programs
            && self.bpf_ring_buffer
            && self.tracefs.is_some()
            && self.baseline_tracepoints_present();
        match (tracing, self.kprobes && self.pids_can_fork_symbol) {
            (false, _) => Tier::CgroupFilesOnly,
            (true, false) => Tier::Tracepoints,
            (true, true) => Tier::TracepointsAndKprobes,
        }
    }

    fn derive_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.bpf_tracepoint_programs {
            notes.push("BPF tracepoint programs cannot be loaded: no live events".to_string());
        }
        if !self.bpf_ring_buffer {
            notes.push("BPF ring buffers are not supported: no live events".to_string());
        }
        let missing: Vec<_> = self
            .tracepoints
            .iter()
            .filter(|tracepoint| !tracepoint.present)
            .map(|tracepoint| tracepoint.name.as_str())
            .collect();
        if !missing.is_empty() {
            notes.push(format!("missing tracepoints: {}", missing.join(", ")));
        }
        if !self.kprobes {
            notes.push(
                "no kprobes: a fork denial's cause is inferred from pids.events, not observed"
                    .to_string(),
            );
        }
        match &self.cgroup_v2.mount {
            None => notes.push("no cgroup v2 hierarchy is mounted".to_string()),
            Some(mount) if !self.cgroup_v2.missing_controllers.is_empty() => notes.push(format!(
                "cgroup v2 hierarchy at {mount} lacks the {} controller(s): limits cannot be \
                 enforced here (host tests cover BPF and attribution only)",
                self.cgroup_v2.missing_controllers.join(", ")
            )),
            Some(_) => {}
        }
        if !self.psi {
            notes
                .push("no PSI (/proc/pressure/memory): boot with psi=1 for pressure stalls".into());
        }
        notes
    }

    /// Human-readable report for a terminal.
    pub fn to_text(&self) -> String {
        let yes_no = |value: bool| if value { "yes" } else { "no" };
        let mut out = String::new();
        let mut line = |key: &str, value: &str| out.push_str(&format!("{key:<28} {value}\n"));
        line("kernel", &self.kernel_release);
        line("tier", &self.tier.to_string());
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
        line("PSI", yes_no(self.psi));
        line(
            "cgroup v2",
            self.cgroup_v2.mount.as_deref().unwrap_or("not mounted"),
        );
        line("  controllers", &self.cgroup_v2.controllers.join(" "));
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

/// Whether `/proc/kallsyms` lists a function of that name (addresses may be hidden; names
/// are still listed).
fn kallsyms_has(symbol: &str) -> bool {
    use std::io::BufRead;
    let Ok(file) = fs::File::open("/proc/kallsyms") else {
        return false;
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .any(|line| {
            let mut fields = line.split_whitespace();
            fields.nth(2) == Some(symbol)
        })
}

//! What a probe's findings mean, named by the kernel options behind them: lean micro-VM
//! kernels (libkrunfw, Kata, Firecracker defaults) leave tracing out on purpose, and an
//! operator needs the option to turn on, not the symptom ("mounting tracefs: no such device").
use super::CapabilityReport;
use crate::Tier;

/// Tracepoints that only exist with CONFIG_FTRACE_SYSCALLS (one event per syscall).
const SYSCALL_CATEGORY: &str = "syscalls:";

impl CapabilityReport {
    fn missing_tracepoints(&self) -> impl Iterator<Item = &str> {
        self.tracepoints
            .iter()
            .filter(|tracepoint| !tracepoint.present)
            .map(|tracepoint| tracepoint.name.as_str())
    }

    fn syscall_tracepoints_missing(&self) -> bool {
        self.missing_tracepoints()
            .any(|name| name.starts_with(SYSCALL_CATEGORY))
    }

    /// The kernel options that lift the tier, lowest tier first: what kernels/guard.config
    /// turns on, less what this kernel already has. Where this process may not use BPF, only
    /// what could be seen without it (tracefs in /proc/filesystems).
    pub(super) fn derive_options_to_lift_tier(&self) -> Vec<String> {
        let mut options = Vec::new();
        let seen = self.privilege.permits_bpf();
        if self.tier < Tier::KernelSources {
            if !self.perf_events {
                options.push("CONFIG_PERF_EVENTS");
            }
            if !self.cgroup_perf {
                options.push("CONFIG_CGROUP_PERF");
            }
        }
        if self.tier < Tier::Tracepoints {
            if !self.tracefs_supported {
                options.push("CONFIG_FTRACE");
            }
            if !self.tracefs_supported || (seen && self.syscall_tracepoints_missing()) {
                options.push("CONFIG_FTRACE_SYSCALLS");
            }
            if seen && !self.bpf_tracepoint_programs {
                options.push("CONFIG_BPF_EVENTS");
            }
        }
        if seen && self.tier < Tier::TracepointsAndKprobes {
            if !self.kprobes {
                options.extend(["CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS"]);
            } else if !self.pids_can_fork_symbol {
                options.push("CONFIG_KALLSYMS");
            }
        }
        options.into_iter().map(String::from).collect()
    }

    /// Every note: what keeps the top tier away, then remarks on what runs.
    pub(super) fn derive_notes(&self) -> Vec<String> {
        let mut notes = self.blockers(Tier::TracepointsAndKprobes);
        notes.extend(self.remarks());
        notes
    }

    /// What keeps `tier` away, and only that: the privilege first (a process that may not use
    /// BPF sees none of the kernel's BPF features, so nothing is said of them), then what the
    /// kernel lacks for each tier up to `tier`. Empty when nothing does (or for tier 0).
    pub fn blockers(&self, tier: Tier) -> Vec<String> {
        let mut notes = Vec::new();
        if tier < Tier::KernelSources {
            return notes;
        }
        if !self.perf_events {
            notes.push(
                "CONFIG_PERF_EVENTS is off: no perf task records, so no live fork, exec and exit \
                 records without tracing (tier 1)"
                    .to_string(),
            );
        } else if !self.cgroup_perf {
            notes.push(
                "CONFIG_CGROUP_PERF is off: perf events cannot be filtered by cgroup, so no live \
                 per-container records without tracing (tier 1)"
                    .to_string(),
            );
        }
        if tier < Tier::Tracepoints {
            if !self.kernel_sources() {
                notes.extend(self.privilege.note());
            }
            return notes;
        }
        notes.extend(self.privilege.note());
        let seen = self.privilege.permits_bpf();
        if !self.tracefs_supported {
            notes.push(
                "CONFIG_FTRACE is off (no tracefs in /proc/filesystems): the kernel has no \
                 tracepoints, so no BPF event programs; live events come from the kernel's own \
                 sources (tier 1) where it has them, else from its cgroup event files alone"
                    .to_string(),
            );
        } else if let Some(error) = &self.tracefs_error {
            notes.push(format!("tracefs could not be mounted: {error}"));
        }
        if !seen {
            return notes;
        }
        if self.tracefs.is_some() {
            if self.syscall_tracepoints_missing() {
                notes.push(
                    "CONFIG_FTRACE_SYSCALLS is off: no syscalls:sys_exit_{clone,clone3,fork,vfork} \
                     tracepoints, where guard sees fork denials"
                        .to_string(),
                );
            }
            let others: Vec<&str> = self
                .missing_tracepoints()
                .filter(|name| !name.starts_with(SYSCALL_CATEGORY))
                .collect();
            if !others.is_empty() {
                notes.push(format!("missing tracepoints: {}", others.join(", ")));
            }
        }
        if !self.bpf_tracepoint_programs {
            notes.push(if self.tracefs_supported {
                "CONFIG_BPF_EVENTS is off: BPF programs cannot attach to tracepoints".to_string()
            } else {
                "CONFIG_BPF_EVENTS is off too (it needs FTRACE's KPROBE_EVENTS or \
                 UPROBE_EVENTS, and PERF_EVENTS)"
                    .to_string()
            });
        }
        if !self.bpf_ring_buffer {
            notes.push(
                "BPF ring buffers are not supported (kernels before 5.8): no live events"
                    .to_string(),
            );
        }
        if tier < Tier::TracepointsAndKprobes {
            return notes;
        }
        if !self.kprobes {
            notes.push(
                "CONFIG_KPROBE_EVENTS is off (no kprobe_events): no kretprobe on pids_can_fork, \
                 so a fork denial's cause is inferred from pids.events, not observed"
                    .to_string(),
            );
        } else if !self.pids_can_fork_symbol {
            notes.push(
                "the kretprobe on pids_can_fork cannot attach (not in /proc/kallsyms: \
                 CONFIG_KALLSYMS is off?): a fork denial's cause is inferred from pids.events, \
                 not observed"
                    .to_string(),
            );
        }
        notes
    }

    /// What does not keep a tier away but is worth knowing: the interpreter, the cgroup
    /// controllers, PSI.
    fn remarks(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.tier >= Tier::Tracepoints && !self.bpf_jit {
            notes.push(
                "CONFIG_BPF_JIT is off: guard's programs run in the BPF interpreter (slower per \
                 event, counts as exact)"
                    .to_string(),
            );
        }
        match &self.cgroup_v2.mount {
            None => notes.push("no cgroup v2 hierarchy is mounted".to_string()),
            Some(mount) if !self.cgroup_v2.missing_controllers.is_empty() => notes.push(format!(
                "cgroup v2 hierarchy at {mount} lacks the {} controller(s): limits cannot be \
                 enforced here, only watched",
                self.cgroup_v2.missing_controllers.join(", ")
            )),
            Some(_) => {}
        }
        if !self.psi {
            notes.push(match self.psi_built_in {
                Some(true) => {
                    "PSI is built in but disabled: boot with psi=1 for pressure stall figures"
                        .into()
                }
                Some(false) => {
                    "CONFIG_PSI is off: no pressure stall figures (/proc/pressure)".into()
                }
                None => "no /proc/pressure: CONFIG_PSI is off or PSI is disabled at boot \
                         (`guard probe` tells which): no pressure stall figures"
                    .into(),
            });
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{CgroupReport, TracepointPresence};

    /// What a Debian 6.12 guest reports: everything present.
    fn full_kernel() -> CapabilityReport {
        CapabilityReport {
            kernel_release: "6.12.117".into(),
            privilege: crate::capability::privilege::granted(),
            btf: true,
            bpf_tracepoint_programs: true,
            bpf_ring_buffer: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            tracepoints: crate::signals::tracepoints()
                .map(|(category, name)| TracepointPresence {
                    name: format!("{category}:{name}"),
                    present: true,
                })
                .collect(),
            kprobes: true,
            pids_can_fork_symbol: true,
            tracefs_supported: true,
            tracefs_error: None,
            bpf_jit: true,
            psi: true,
            psi_built_in: Some(true),
            perf_events: true,
            cgroup_perf: true,
            delay_accounting: true,
            sources: Vec::new(),
            cgroup_v2: CgroupReport {
                mount: Some("/sys/fs/cgroup".into()),
                controllers: vec!["memory".into(), "pids".into()],
                missing_controllers: Vec::new(),
            },
            tier: Tier::CgroupFilesOnly,
            options_to_lift_tier: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn finish(mut report: CapabilityReport) -> CapabilityReport {
        report.derive_conclusions();
        report
    }

    /// libkrunfw's kernel: no tracing at all, no JIT, no PSI, no BTF.
    fn lean_kernel() -> CapabilityReport {
        let mut report = full_kernel();
        report.btf = false;
        report.bpf_tracepoint_programs = false;
        report.tracefs = None;
        report.tracefs_supported = false;
        for tracepoint in &mut report.tracepoints {
            tracepoint.present = false;
        }
        report.kprobes = false;
        report.bpf_jit = false;
        report.psi = false;
        report.psi_built_in = Some(false);
        finish(report)
    }

    #[test]
    fn a_full_kernel_is_tier_3_with_nothing_to_say() {
        let report = finish(full_kernel());
        assert_eq!(report.tier, Tier::TracepointsAndKprobes);
        assert!(report.options_to_lift_tier.is_empty());
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }

    #[test]
    fn a_lean_kernel_names_the_options_not_the_symptoms() {
        let report = lean_kernel();
        assert_eq!(report.tier, Tier::KernelSources);
        assert_eq!(
            report.sources,
            ["perf", "kmsg", "taskstats", "cgroup_files"]
        );
        let mut no_delays = lean_kernel();
        no_delays.delay_accounting = false;
        let report_without = finish(no_delays);
        assert_eq!(report_without.sources, ["perf", "kmsg", "cgroup_files"]);
        assert_eq!(
            report.options_to_lift_tier,
            [
                "CONFIG_FTRACE",
                "CONFIG_FTRACE_SYSCALLS",
                "CONFIG_BPF_EVENTS",
                "CONFIG_KPROBES",
                "CONFIG_KPROBE_EVENTS"
            ]
        );
        let notes = report.notes.join("\n");
        for option in [
            "CONFIG_FTRACE is off",
            "CONFIG_BPF_EVENTS is off",
            "CONFIG_PSI is off",
        ] {
            assert!(notes.contains(option), "{notes}");
        }
        // Neither a mount error nor advice that cannot work on this kernel.
        assert!(
            !notes.contains("mounting") && !notes.contains("psi=1"),
            "{notes}"
        );
        // The interpreter is only worth a word where programs run.
        assert!(!notes.contains("BPF_JIT"), "{notes}");
        // Without perf's cgroup filter, tier 0, and the option is named first.
        let mut no_perf = lean_kernel();
        no_perf.cgroup_perf = false;
        let report = finish(no_perf);
        assert_eq!(report.tier, Tier::CgroupFilesOnly);
        assert_eq!(report.sources, ["cgroup_files"]);
        assert_eq!(report.options_to_lift_tier[0], "CONFIG_CGROUP_PERF");
        assert!(report.notes[0].starts_with("CONFIG_CGROUP_PERF is off"));
    }

    #[test]
    fn each_missing_piece_is_named_by_its_option() {
        let mut no_syscalls = full_kernel();
        for tracepoint in &mut no_syscalls.tracepoints {
            tracepoint.present = !tracepoint.name.starts_with("syscalls:");
        }
        let report = finish(no_syscalls);
        assert_eq!(report.tier, Tier::KernelSources);
        assert_eq!(report.options_to_lift_tier, ["CONFIG_FTRACE_SYSCALLS"]);
        assert!(
            report.notes[0].starts_with("CONFIG_FTRACE_SYSCALLS is off"),
            "{:?}",
            report.notes
        );

        let mut tier_1 = full_kernel();
        tier_1.kprobes = false;
        tier_1.bpf_jit = false;
        let report = finish(tier_1);
        assert_eq!(report.tier, Tier::Tracepoints);
        assert_eq!(
            report.options_to_lift_tier,
            ["CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS"]
        );
        let notes = report.notes.join("\n");
        assert!(notes.contains("CONFIG_KPROBE_EVENTS is off"), "{notes}");
        assert!(notes.contains("CONFIG_BPF_JIT is off"), "{notes}");

        let mut psi_disabled = full_kernel();
        psi_disabled.psi = false;
        let report = finish(psi_disabled);
        assert_eq!(
            report.notes,
            ["PSI is built in but disabled: boot with psi=1 for pressure stall figures"]
        );
    }

    /// What a process without the privilege sees of a full kernel: its probes of BPF failed,
    /// which says nothing about the kernel.
    fn unprivileged() -> CapabilityReport {
        let mut report = full_kernel();
        report.privilege = crate::capability::privilege::refused();
        report.bpf_tracepoint_programs = false;
        report.bpf_ring_buffer = false;
        report.tracefs = None;
        report.kprobes = false;
        for tracepoint in &mut report.tracepoints {
            tracepoint.present = false;
        }
        finish(report)
    }

    #[test]
    fn a_missing_privilege_is_named_and_no_kernel_option_blamed() {
        let report = unprivileged();
        assert_eq!(report.tier, Tier::CgroupFilesOnly);
        assert!(report.options_to_lift_tier.is_empty(), "{report:?}");
        let blockers = report.blockers(Tier::Tracepoints);
        assert_eq!(
            blockers,
            [
                "not permitted to use BPF: this process (euid 65534) lacks CAP_BPF, CAP_PERFMON \
                 and CAP_DAC_READ_SEARCH; run the agent as root, or grant it CAP_BPF + \
                 CAP_PERFMON + CAP_DAC_READ_SEARCH"
            ]
        );
        let notes = report.notes.join("\n");
        for blamed in ["CONFIG_", "ring buffers", "tracepoints"] {
            assert!(!notes.contains(blamed), "{notes}");
        }
        // A kernel without tracefs lacks it whatever the privilege: that is said too.
        let mut lean = unprivileged();
        lean.tracefs_supported = false;
        let lean = finish(lean);
        assert_eq!(lean.blockers(Tier::Tracepoints).len(), 2);
        assert!(lean.blockers(Tier::Tracepoints)[1].starts_with("CONFIG_FTRACE is off"));
    }

    #[test]
    fn a_tier_is_refused_for_what_keeps_it_away_only() {
        let mut tier_1 = full_kernel();
        tier_1.kprobes = false;
        tier_1.bpf_jit = false;
        tier_1.psi = false;
        tier_1.cgroup_v2.missing_controllers = vec!["memory".into()];
        let report = finish(tier_1);
        assert!(report.blockers(Tier::Tracepoints).is_empty());
        let blockers = report.blockers(Tier::TracepointsAndKprobes);
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(blockers[0].starts_with("CONFIG_KPROBE_EVENTS is off"));
        // The remarks stay in the notes.
        assert_eq!(report.notes.len(), 4, "{:?}", report.notes);
        assert!(report.blockers(Tier::CgroupFilesOnly).is_empty());
    }
}

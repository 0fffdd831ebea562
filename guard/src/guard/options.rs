//! How the guard runs ([`GuardOptions`]), and the tier it runs at given the kernel, the
//! process's privilege and those options.
use std::time::Duration;

use super::GuardError;
use crate::{Tier, bpf::RingOptions, capability::CapabilityReport};

/// How the guard runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GuardOptions {
    /// Sizes and rate bound of the ring buffer (defaults: [`RingOptions::default`]).
    pub ring: RingOptions,
    /// How often the reader polls for records that did not wake it (default 10 ms); after a
    /// fault it also waits this long times the faults in a row before restarting.
    pub poll_interval: Duration,
    /// Never run above this tier, even if the kernel allows it (tests exercise each tier).
    /// Default: [`Tier::TracepointsAndKprobes`], no cap.
    pub max_tier: Tier,
    /// Refuse to start below this tier ([`GuardError::TierTooLow`], naming what the kernel
    /// lacks). The default accepts tier 0 (the kernel's event files only, no live events); an
    /// agent that relies on events or BPF counters asks for [`Tier::Tracepoints`].
    pub min_tier: Tier,
    /// Read the kernel log (`/dev/kmsg`, a thread of its own) for the scope of each OOM kill:
    /// a report then names the global OOM killer's kills of a container's tasks even where
    /// the container's own limit was hit too. Where the log cannot be opened, the split rests
    /// on `memory.events` alone (logged at start). Default: true; ignored at tier 0.
    pub read_kernel_log: bool,
    /// At tier 1, become the audit daemon with one rule that records each fork, clone, clone3
    /// or vfork failing with EAGAIN: a `fork_denied` event per attempt, reconciled with
    /// `pids.events max`. Auditing costs every task forked afterwards on every syscall
    /// (docs/KERNELS.md); refused where an audit daemon runs (logged at start). Default: false
    /// (the count alone, from `pids.events`).
    pub audit_fork_denials: bool,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            ring: RingOptions::default(),
            poll_interval: Duration::from_millis(10),
            max_tier: Tier::TracepointsAndKprobes,
            min_tier: Tier::CgroupFilesOnly,
            read_kernel_log: true,
            audit_fork_denials: false,
        }
    }
}

/// The tier the guard runs at: what the kernel allows, capped by `max_tier`; refused below
/// `min_tier`, naming what set it and what is missing.
pub(super) fn allowed_tier(
    capabilities: &CapabilityReport,
    options: &GuardOptions,
) -> Result<Tier, GuardError> {
    let tier = capabilities.tier.min(options.max_tier);
    if tier >= options.min_tier {
        return Ok(tier);
    }
    let capped = options.max_tier < capabilities.tier;
    Err(GuardError::TierTooLow {
        wanted: options.min_tier,
        got: tier,
        why: if capped {
            format!("max_tier caps it; the kernel allows {}", capabilities.tier)
        } else if !capabilities.privilege.permits_bpf() {
            "this process may not use BPF".to_string()
        } else {
            format!("all that kernel {} allows", capabilities.kernel_release)
        },
        missing: if capped {
            "raise max_tier or lower min_tier".to_string()
        } else {
            capabilities.blockers(options.min_tier).join("; ")
        },
    })
}

//! Container limits: defaults derived from the guest's memory, overrides, validation.
//!
//! The default memory limit is 90% of `MemAvailable` at the time of the request: a container
//! can never take the whole guest, so the agent and the kernel keep room to act. Alone that is
//! not enough (two containers may take 180%, and MemAvailable counts memory that cannot be
//! allocated): the runtime also gives the containers' parent the guest budget
//! ([`guest_budget`]) and lowers defaults above it ([`LimitRequest::resolve_within`]). `pids.max`
//! defaults to 512, `memory.swap.max` to 0 (a guest with swap must not let a container dodge
//! its memory limit by swapping).
use std::{fmt, path::PathBuf};

use serde::Serialize;

mod budget;
mod meminfo;
mod settings;

pub use budget::{
    BUDGET_FLOOR, BYTES_PER_TASK, BudgetRequest, Clamp, GuestBudget, KERNEL_RESERVE_FLOOR,
    KERNEL_RESERVE_PERCENT, TASKS_OUTSIDE, guest_budget, kernel_reserve,
};
pub use meminfo::{MEMINFO_PATH, MemInfo, memory_limit_from_meminfo};
pub use settings::{MemorySetting, PidsSetting, SwapSetting};

/// Default `pids.max`.
pub const DEFAULT_PIDS_MAX: u64 = 512;
/// The kernel's own ceiling for pid numbers (`PID_MAX_LIMIT` on 64-bit): a pids limit above it
/// cannot mean anything and is rejected as absurd.
pub const PIDS_CEILING: u64 = 4 * 1024 * 1024;
/// Below this a container cannot even exec a static shell; a limit that low is a typo.
pub const MEMORY_FLOOR: u64 = 4 * 1024 * 1024;
/// The kernel keeps memory limits in pages: a value that is not a page multiple reads back
/// rounded down, which would look like a mismatch.
pub const PAGE_SIZE: u64 = 4096;
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} has no {field} line")]
    MeminfoMissing { path: PathBuf, field: &'static str },
    #[error("{path}, line {line}: {field} is not a number of kB: {text:?}")]
    MeminfoValue {
        path: PathBuf,
        line: usize,
        field: &'static str,
        text: String,
    },
    #[error("{path}, line {line}: {field} of {kib} kB does not fit in 64 bits as bytes")]
    MeminfoTooLarge {
        path: PathBuf,
        line: usize,
        field: &'static str,
        kib: String,
    },
    #[error("{path}: MemTotal is 0 kB")]
    MeminfoZeroTotal { path: PathBuf },
    #[error(
        "memory limit {value:?} is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a \
         percentage of available memory (e.g. 50%) or \"max\""
    )]
    MemorySyntax { value: String },
    #[error("memory limit {value:?} is negative")]
    MemoryNegative { value: String },
    #[error("memory limit {value:?} is 0: a container cannot run without memory")]
    MemoryZero { value: String },
    #[error("memory limit {value:?} ({bytes} bytes) is below the floor of {MEMORY_FLOOR} bytes")]
    MemoryTooLow { value: String, bytes: u64 },
    #[error(
        "memory limit {value:?} ({bytes} bytes) is above the VM's memory ({total} bytes of \
         MemTotal)"
    )]
    MemoryAboveVm {
        value: String,
        bytes: u64,
        total: u64,
    },
    #[error("memory limit {value:?}: a percentage must be above 0% and at most 100%")]
    MemoryPercent { value: String },
    #[error(
        "pids limit {value:?} is not understood: give a whole number between 1 and \
         {PIDS_CEILING}, or \"max\""
    )]
    PidsSyntax { value: String },
    #[error("pids limit {value:?} is negative")]
    PidsNegative { value: String },
    #[error("pids limit {value:?} is 0: the container's init could not even exist")]
    PidsZero { value: String },
    #[error("pids limit {value:?} is absurd: above the kernel's pid ceiling {PIDS_CEILING}")]
    PidsAbsurd { value: String },
    #[error("swap limit {value:?} is not understood: give bytes (0 for none) or \"max\"")]
    SwapSyntax { value: String },
    #[error("swap limit {value:?} is negative")]
    SwapNegative { value: String },
    #[error(
        "guest budget of {asked} bytes is more than the guest can give: {room} bytes \
         (MemAvailable {available} minus the kernel reserve {kernel_reserve} and the agent \
         reserve {agent_reserve})"
    )]
    BudgetAboveGuest {
        asked: u64,
        room: u64,
        available: u64,
        kernel_reserve: u64,
        agent_reserve: u64,
    },
    #[error(
        "the guest is too small for a budget: {budget} bytes remain of MemAvailable {available} \
         after the kernel reserve {kernel_reserve} and the agent reserve {agent_reserve}, below \
         the floor of {BUDGET_FLOOR} (the budget must hold libcontainer's exec helpers beside \
         the containers): a bigger guest, or no budget"
    )]
    BudgetTooSmall {
        budget: u64,
        available: u64,
        kernel_reserve: u64,
        agent_reserve: u64,
    },
    #[error(
        "memory limit {value} is above the guest budget of {budget} bytes that every container \
         shares: ask for less, or leave the limit at its default (clamped to the budget)"
    )]
    MemoryAboveBudget {
        value: String,
        bytes: u64,
        budget: u64,
    },
    #[error(
        "pids limit {value} is above the guest budget of {budget} tasks that every container \
         shares: ask for less, or leave the limit at its default (clamped to the budget)"
    )]
    PidsAboveBudget { value: String, budget: u64 },
}
/// What an agent asks for; [`LimitRequest::resolve`] turns it into byte and count values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitRequest {
    pub memory: MemorySetting,
    pub pids: PidsSetting,
    pub swap: SwapSetting,
}

impl Default for LimitRequest {
    fn default() -> Self {
        Self {
            memory: MemorySetting::Default,
            pids: PidsSetting::Default,
            swap: SwapSetting::Default,
        }
    }
}

/// Resolved limits, as they are written to the cgroup. None = `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `memory.max` in bytes, a multiple of [`PAGE_SIZE`].
    pub memory_max: Option<u64>,
    /// `memory.swap.max` in bytes.
    pub swap_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

impl Limits {
    /// The defaults for this guest: 90% of available memory, no swap, 512 pids.
    pub fn defaults() -> Result<Self, LimitsError> {
        LimitRequest::default().resolve(&MemInfo::read()?)
    }
}

impl LimitRequest {
    /// Resolves against the guest's memory and validates: a memory limit must lie between
    /// [`MEMORY_FLOOR`] and the VM's `MemTotal`.
    pub fn resolve(&self, meminfo: &MemInfo) -> Result<Limits, LimitsError> {
        let (described, bytes) = match &self.memory {
            MemorySetting::Max => (String::new(), None),
            MemorySetting::Default => (
                "90% of MemAvailable".to_string(),
                Some(meminfo.default_limit()),
            ),
            MemorySetting::Bytes(bytes) => (bytes.to_string(), Some(*bytes)),
            MemorySetting::PercentOfAvailable(percent) => (
                format!("{percent}%"),
                Some((meminfo.available as f64 * percent / 100.0) as u64),
            ),
        };
        let memory_max = match bytes {
            None => None,
            Some(bytes) => {
                // Round down to whole pages: that is what the kernel keeps and reads back.
                let bytes = bytes - bytes % PAGE_SIZE;
                if bytes == 0 {
                    return Err(LimitsError::MemoryZero { value: described });
                }
                if bytes < MEMORY_FLOOR {
                    return Err(LimitsError::MemoryTooLow {
                        value: described,
                        bytes,
                    });
                }
                if bytes > meminfo.total {
                    return Err(LimitsError::MemoryAboveVm {
                        value: described,
                        bytes,
                        total: meminfo.total,
                    });
                }
                Some(bytes)
            }
        };
        let pids_max = match self.pids {
            PidsSetting::Default => Some(DEFAULT_PIDS_MAX),
            PidsSetting::Max => None,
            PidsSetting::Count(0) => {
                return Err(LimitsError::PidsZero {
                    value: "0".to_string(),
                });
            }
            PidsSetting::Count(count) if count > PIDS_CEILING => {
                return Err(LimitsError::PidsAbsurd {
                    value: count.to_string(),
                });
            }
            PidsSetting::Count(count) => Some(count),
        };
        let swap_max = match self.swap {
            SwapSetting::Default => Some(0),
            SwapSetting::Bytes(bytes) => Some(bytes - bytes % PAGE_SIZE),
            SwapSetting::Max => None,
        };
        Ok(Limits {
            memory_max,
            swap_max,
            pids_max,
        })
    }
}

/// Limits resolved within a guest budget, with the defaults it lowered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub limits: Limits,
    pub clamped: Vec<Clamp>,
}

impl LimitRequest {
    /// Resolves as [`LimitRequest::resolve`] does, then fits the result into `budget`: a
    /// default above it is lowered to it (and listed in `clamped`), an explicit limit above it
    /// is an error. `max` stays `max`: the container has no limit of its own and the budget
    /// holds it.
    pub fn resolve_within(
        &self,
        meminfo: &MemInfo,
        budget: &GuestBudget,
    ) -> Result<Resolved, LimitsError> {
        let mut limits = self.resolve(meminfo)?;
        let mut clamped = Vec::new();
        if let Some(bytes) = limits.memory_max.filter(|&bytes| bytes > budget.memory_max) {
            if self.memory != MemorySetting::Default {
                let value = match &self.memory {
                    MemorySetting::PercentOfAvailable(percent) => {
                        format!("{percent}% of MemAvailable ({bytes} bytes)")
                    }
                    _ => format!("of {bytes} bytes"),
                };
                return Err(LimitsError::MemoryAboveBudget {
                    value,
                    bytes,
                    budget: budget.memory_max,
                });
            }
            clamped.push(Clamp {
                file: "memory.max",
                default: bytes,
                clamped_to: budget.memory_max,
            });
            limits.memory_max = Some(budget.memory_max);
        }
        if let Some(count) = limits.pids_max.filter(|&count| count > budget.pids_max) {
            if self.pids != PidsSetting::Default {
                return Err(LimitsError::PidsAboveBudget {
                    value: count.to_string(),
                    budget: budget.pids_max,
                });
            }
            clamped.push(Clamp {
                file: "pids.max",
                default: count,
                clamped_to: budget.pids_max,
            });
            limits.pids_max = Some(budget.pids_max);
        }
        Ok(Resolved { limits, clamped })
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: Option<u64>| value.map_or("max".to_string(), |v| v.to_string());
        write!(
            f,
            "memory.max {} memory.swap.max {} pids.max {}",
            show(self.memory_max),
            show(self.swap_max),
            show(self.pids_max)
        )
    }
}
#[cfg(test)]
mod tests;

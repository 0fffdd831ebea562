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

/// A limit, a meminfo file or a budget that cannot be used. Every variant names the value or
/// the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A meminfo file could not be read ([`MemInfo::read_from`]).
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error's text.
        message: String,
    },
    /// The meminfo text has no `MemTotal` or no `MemAvailable` line ([`MemInfo::parse_file`]).
    #[error("{path} has no {field} line")]
    MeminfoMissing {
        /// The file.
        path: PathBuf,
        /// The field missing.
        field: &'static str,
    },
    /// A meminfo field's value is not `<number> kB` (or a bare number).
    #[error("{path}, line {line}: {field} is not a number of kB: {text:?}")]
    MeminfoValue {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The field.
        field: &'static str,
        /// Its value as written.
        text: String,
    },
    /// A meminfo field's value does not fit in 64 bits once in bytes.
    #[error("{path}, line {line}: {field} of {kib} kB does not fit in 64 bits as bytes")]
    MeminfoTooLarge {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The field.
        field: &'static str,
        /// Its value as written, in kB.
        kib: String,
    },
    /// The meminfo text says `MemTotal: 0 kB`.
    #[error("{path}: MemTotal is 0 kB")]
    MeminfoZeroTotal {
        /// The file.
        path: PathBuf,
    },
    /// A memory limit that is neither bytes, a percentage nor `max` (parsing a
    /// [`MemorySetting`]).
    #[error(
        "memory limit {value:?} is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a \
         percentage of available memory (e.g. 50%) or \"max\""
    )]
    MemorySyntax {
        /// The value as given.
        value: String,
    },
    /// A negative memory limit (`-64M`).
    #[error("memory limit {value:?} is negative")]
    MemoryNegative {
        /// The value as given.
        value: String,
    },
    /// A memory limit of 0, as given or once rounded down to whole pages
    /// ([`LimitRequest::resolve`]).
    #[error("memory limit {value:?} is 0: a container cannot run without memory")]
    MemoryZero {
        /// The value as given (or how the default was derived).
        value: String,
    },
    /// A resolved memory limit below [`MEMORY_FLOOR`] ([`LimitRequest::resolve`]).
    #[error("memory limit {value:?} ({bytes} bytes) is below the floor of {MEMORY_FLOOR} bytes")]
    MemoryTooLow {
        /// The value as given (or how the default was derived).
        value: String,
        /// It resolved to this many bytes.
        bytes: u64,
    },
    /// A resolved memory limit above the guest's `MemTotal` ([`LimitRequest::resolve`]).
    #[error(
        "memory limit {value:?} ({bytes} bytes) is above the VM's memory ({total} bytes of \
         MemTotal)"
    )]
    MemoryAboveVm {
        /// The value as given.
        value: String,
        /// It resolved to this many bytes.
        bytes: u64,
        /// The guest's `MemTotal`, in bytes.
        total: u64,
    },
    /// A percentage outside (0%, 100%].
    #[error("memory limit {value:?}: a percentage must be above 0% and at most 100%")]
    MemoryPercent {
        /// The value as given.
        value: String,
    },
    /// A pids limit that is neither a whole number nor `max`.
    #[error(
        "pids limit {value:?} is not understood: give a whole number between 1 and \
         {PIDS_CEILING}, or \"max\""
    )]
    PidsSyntax {
        /// The value as given.
        value: String,
    },
    /// A negative pids limit.
    #[error("pids limit {value:?} is negative")]
    PidsNegative {
        /// The value as given.
        value: String,
    },
    /// A pids limit of 0, for a container or for the guest budget.
    #[error("pids limit {value:?} is 0: the container's init could not even exist")]
    PidsZero {
        /// The value as given.
        value: String,
    },
    /// A pids limit above [`PIDS_CEILING`], for a container or for the guest budget.
    #[error("pids limit {value:?} is absurd: above the kernel's pid ceiling {PIDS_CEILING}")]
    PidsAbsurd {
        /// The value as given.
        value: String,
    },
    /// A swap limit that is neither bytes nor `max`.
    #[error("swap limit {value:?} is not understood: give bytes (0 for none) or \"max\"")]
    SwapSyntax {
        /// The value as given.
        value: String,
    },
    /// A negative swap limit.
    #[error("swap limit {value:?} is negative")]
    SwapNegative {
        /// The value as given.
        value: String,
    },
    /// [`guest_budget`] with a memory budget above what the guest can give.
    #[error(
        "guest budget of {asked} bytes is more than the guest can give: {room} bytes \
         (MemAvailable {available} minus the kernel reserve {kernel_reserve} and the agent \
         reserve {agent_reserve})"
    )]
    BudgetAboveGuest {
        /// The budget asked for, in bytes.
        asked: u64,
        /// What the guest can give: `available` minus both reserves, in bytes (page-rounded).
        room: u64,
        /// The guest's `MemAvailable`, in bytes.
        available: u64,
        /// The kernel reserve, in bytes.
        kernel_reserve: u64,
        /// The agent reserve, in bytes.
        agent_reserve: u64,
    },
    /// [`guest_budget`] on a guest whose budget would fall below [`BUDGET_FLOOR`].
    #[error(
        "the guest is too small for a budget: {budget} bytes remain of MemAvailable {available} \
         after the kernel reserve {kernel_reserve} and the agent reserve {agent_reserve}, below \
         the floor of {BUDGET_FLOOR} (the budget must hold libcontainer's exec helpers beside \
         the containers): a bigger guest, or no budget"
    )]
    BudgetTooSmall {
        /// The budget that remains, in bytes.
        budget: u64,
        /// The guest's `MemAvailable`, in bytes.
        available: u64,
        /// The kernel reserve, in bytes.
        kernel_reserve: u64,
        /// The agent reserve, in bytes.
        agent_reserve: u64,
    },
    /// [`LimitRequest::resolve_within`]: an explicit memory limit above the guest budget (a
    /// default is lowered to it instead).
    #[error(
        "memory limit {value} is above the guest budget of {budget} bytes that every container \
         shares: ask for less, or leave the limit at its default (clamped to the budget)"
    )]
    MemoryAboveBudget {
        /// The limit as asked, described.
        value: String,
        /// It resolved to this many bytes.
        bytes: u64,
        /// The budget's `memory.max`, in bytes.
        budget: u64,
    },
    /// [`LimitRequest::resolve_within`]: an explicit pids limit above the guest budget (a
    /// default is lowered to it instead).
    #[error(
        "pids limit {value} is above the guest budget of {budget} tasks that every container \
         shares: ask for less, or leave the limit at its default (clamped to the budget)"
    )]
    PidsAboveBudget {
        /// The limit as asked.
        value: String,
        /// The budget's `pids.max`.
        budget: u64,
    },
}
/// What an agent asks for; [`LimitRequest::resolve`] turns it into byte and count values.
/// The default asks for every default: 90% of `MemAvailable`, 512 pids, no swap.
///
/// ```
/// use guard::limits::{LimitRequest, MemInfo, MemorySetting};
///
/// // A 128 MiB guest.
/// let meminfo = MemInfo::parse("MemTotal: 131072 kB\nMemAvailable: 100000 kB\n").unwrap();
/// let limits = LimitRequest::default().resolve(&meminfo)?;
/// // 90% of 102400000 bytes, already a page multiple.
/// assert_eq!(limits.memory_max, Some(92_160_000));
/// assert_eq!((limits.pids_max, limits.swap_max), (Some(512), Some(0)));
///
/// let request = LimitRequest {
///     memory: "64M".parse()?,
///     pids: "max".parse()?,
///     ..LimitRequest::default()
/// };
/// let limits = request.resolve(&meminfo)?;
/// assert_eq!((limits.memory_max, limits.pids_max), (Some(64 << 20), None));
/// assert_eq!(limits.to_string(), "memory.max 67108864 memory.swap.max 0 pids.max max");
///
/// // Above the VM's MemTotal, or below the 4 MiB floor: refused, naming the value.
/// for memory in ["1G", "2M"] {
///     let request = LimitRequest { memory: memory.parse()?, ..LimitRequest::default() };
///     assert!(request.resolve(&meminfo).is_err());
/// }
/// assert!("0".parse::<MemorySetting>().is_err());
/// # Ok::<(), guard::limits::LimitsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitRequest {
    /// `memory.max`.
    pub memory: MemorySetting,
    /// `pids.max`.
    pub pids: PidsSetting,
    /// `memory.swap.max`.
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
    /// Resolves against the guest's memory and validates: a memory limit is rounded down to
    /// whole pages and must then lie between [`MEMORY_FLOOR`] and the VM's `MemTotal`; a
    /// percentage is of `MemAvailable`; swap is rounded down to whole pages.
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
    /// The limits to write.
    pub limits: Limits,
    /// The defaults the budget lowered (none when everything fit).
    pub clamped: Vec<Clamp>,
}

impl LimitRequest {
    /// Resolves as [`LimitRequest::resolve`] does, then fits the result into `budget`: a
    /// default above it is lowered to it (and listed in `clamped`), an explicit limit above it
    /// is an error. `max` stays `max`: the container has no limit of its own and the budget
    /// holds it.
    ///
    /// ```
    /// use guard::limits::{BudgetRequest, LimitRequest, LimitsError, MemInfo, guest_budget};
    ///
    /// let meminfo = MemInfo::parse("MemTotal: 131072 kB\nMemAvailable: 100000 kB\n").unwrap();
    /// let budget = guest_budget(&meminfo, 8 << 20, &BudgetRequest::default())?;
    /// // The default (90% of MemAvailable) does not fit: it is lowered to the budget.
    /// let resolved = LimitRequest::default().resolve_within(&meminfo, &budget)?;
    /// assert_eq!(resolved.limits.memory_max, Some(budget.memory_max));
    /// assert_eq!(resolved.clamped[0].file, "memory.max");
    /// // An explicit limit above the budget is an error.
    /// let request = LimitRequest { memory: "80M".parse()?, ..LimitRequest::default() };
    /// assert!(matches!(
    ///     request.resolve_within(&meminfo, &budget),
    ///     Err(LimitsError::MemoryAboveBudget { .. })
    /// ));
    /// # Ok::<(), LimitsError>(())
    /// ```
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
                file: crate::cgroup::memory::MAX,
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
                file: crate::cgroup::pids::MAX,
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

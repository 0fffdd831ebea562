//! The guest budget: what every container together may use, so that no number of containers,
//! each at its default, can reach the global OOM killer or the guest's task table.
//!
//! guard owns the containers' parent cgroup (`/guard`) and gives it
//! `memory.max = MemAvailable − kernel reserve − agent reserve` and a `pids.max` the memory can
//! carry. The kernel reserve is measured, not guessed: `cargo xtask limits` bisects, per guest
//! kernel and memory size, the largest budget at which the memcg OOM killer always wins over
//! the global one under a fork+alloc bomb (docs/LIMITS.md); [`KERNEL_RESERVE_FLOOR`] and
//! [`KERNEL_RESERVE_PERCENT`] sit a margin above the worst of those. Where the agent's forensic
//! log lives in RAM (a tmpfs or ramfs, as a guest's initramfs root), its byte budget is a third
//! reserve: evidence can then never be what pushes the guest to the global OOM killer.
use serde::Serialize;

use super::{DEFAULT_PIDS_MAX, LimitsError, MemInfo, PAGE_SIZE, PIDS_CEILING};

/// The smallest kernel reserve, whatever the guest's size.
pub const KERNEL_RESERVE_FLOOR: u64 = 20 << 20;
/// The kernel reserve as a share of `MemTotal`, for guests large enough that it exceeds the
/// floor (page tables and slab grow with the memory the containers use).
pub const KERNEL_RESERVE_PERCENT: u64 = 10;
/// What one task costs the kernel at least (kernel stack, task_struct, page tables of a small
/// process): the memory budget carries at most budget / this many tasks.
pub const BYTES_PER_TASK: u64 = 32 << 10;
/// Tasks the guest needs outside the budget: the agent's threads, init, the kernel's threads.
pub const TASKS_OUTSIDE: u64 = 256;
/// Below this a budget is refused. Measured (docs/LIMITS.md): every exec into a container
/// clones libcontainer helpers that are charged to the budget, about 4.7 MiB each (rss and
/// shmem in the OOM killer's reports); at budgets of 5 and 8 MiB the OOM killer took them
/// mid-exec and the tenants wave stopped, at 11.7 MiB and above it ran clean 16 times of 16.
pub const BUDGET_FLOOR: u64 = 10 << 20;

/// What an agent asks of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct BudgetRequest {
    /// `memory.max` of the parent in bytes; None: derived from the guest (the default).
    pub memory: Option<u64>,
    /// `pids.max` of the parent; None: derived from the memory budget.
    pub pids: Option<u64>,
    /// The kernel reserve in bytes; None: [`kernel_reserve`] of the guest.
    pub kernel_reserve: Option<u64>,
    /// The byte budget of the agent's forensic log where it lives in RAM (tmpfs, ramfs): memory
    /// the containers must leave free. None (or 0): the log is on disk, or there is none.
    pub log_reserve: Option<u64>,
}

/// The budget for a guest, and how it was derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestBudget {
    /// `memory.max` of the parent cgroup, in bytes (a page multiple).
    pub memory_max: u64,
    /// `pids.max` of the parent cgroup.
    pub pids_max: u64,
    /// The `kernel.threads-max` the guest needs so that `pids_max`, not the task table, stops
    /// a fork bomb.
    pub threads_max: u64,
    /// The guest's `MemAvailable` the budget was derived from.
    pub available: u64,
    /// The kernel reserve subtracted, in bytes.
    pub kernel_reserve: u64,
    /// The agent reserve subtracted, in bytes.
    pub agent_reserve: u64,
    /// The RAM-backed log's budget subtracted, in bytes (0: none).
    pub log_reserve: u64,
}

/// The kernel reserve of a guest with `MemTotal` `total`: the larger of the floor and a share.
pub fn kernel_reserve(total: u64) -> u64 {
    KERNEL_RESERVE_FLOOR.max(total / 100 * KERNEL_RESERVE_PERCENT)
}

/// The budget of a guest whose memory is `meminfo`, with the agent's own growth bounded by
/// `agent_reserve` bytes (its buffers, full: [`crate::footprint::Footprint::total`]). Pure: the
/// same meminfo gives the same budget.
///
/// A requested memory budget above what the guest can give (available minus the reserves) is
/// an error, not a silent overcommit; so is a guest too small for any budget.
///
/// Without a request, `memory_max` is the whole room (page-rounded) and `pids_max` what it
/// carries at [`BYTES_PER_TASK`], at least [`DEFAULT_PIDS_MAX`](super::DEFAULT_PIDS_MAX):
///
/// ```
/// use guard::limits::{BudgetRequest, MemInfo, guest_budget};
///
/// // A 128 MiB guest with 100000 kB available and an agent that may grow by 8 MiB.
/// let meminfo = MemInfo::parse("MemTotal: 131072 kB\nMemAvailable: 100000 kB\n").unwrap();
/// let budget = guest_budget(&meminfo, 8 << 20, &BudgetRequest::default())?;
/// assert_eq!(budget.kernel_reserve, 20 << 20); // the floor: 10% of 128 MiB is less
/// assert_eq!(budget.memory_max, 102_400_000 - (20 << 20) - (8 << 20));
/// assert_eq!(budget.pids_max, budget.memory_max / (32 << 10));
/// assert_eq!(budget.threads_max, budget.pids_max + 256);
///
/// let too_much = BudgetRequest { memory: Some(100 << 20), ..BudgetRequest::default() };
/// assert!(guest_budget(&meminfo, 8 << 20, &too_much).is_err());
/// # Ok::<(), guard::limits::LimitsError>(())
/// ```
pub fn guest_budget(
    meminfo: &MemInfo,
    agent_reserve: u64,
    request: &BudgetRequest,
) -> Result<GuestBudget, LimitsError> {
    let kernel_reserve = request
        .kernel_reserve
        .unwrap_or_else(|| kernel_reserve(meminfo.total));
    let log_reserve = request.log_reserve.unwrap_or(0);
    let reserves = kernel_reserve
        .saturating_add(agent_reserve)
        .saturating_add(log_reserve);
    let room = meminfo.available.saturating_sub(reserves);
    let room = room - room % PAGE_SIZE;
    let memory_max = match request.memory {
        None => room,
        Some(asked) if asked > room => {
            return Err(LimitsError::BudgetAboveGuest {
                asked,
                room,
                available: meminfo.available,
                kernel_reserve,
                agent_reserve,
            });
        }
        Some(asked) => asked - asked % PAGE_SIZE,
    };
    if memory_max < BUDGET_FLOOR {
        return Err(LimitsError::BudgetTooSmall {
            budget: memory_max,
            available: meminfo.available,
            kernel_reserve,
            agent_reserve,
        });
    }
    let carried = memory_max / BYTES_PER_TASK;
    let pids_max = match request.pids {
        None => carried.max(DEFAULT_PIDS_MAX),
        Some(0) => return Err(LimitsError::PidsZero { value: "0".into() }),
        Some(pids) if pids > PIDS_CEILING => {
            return Err(LimitsError::PidsAbsurd {
                value: pids.to_string(),
            });
        }
        Some(pids) => pids,
    };
    Ok(GuestBudget {
        memory_max,
        pids_max,
        threads_max: pids_max + TASKS_OUTSIDE,
        available: meminfo.available,
        kernel_reserve,
        agent_reserve,
        log_reserve,
    })
}

/// A default limit lowered to fit the budget: logged and recorded, never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clamp {
    /// The cgroup file (`memory.max`, `pids.max`).
    pub file: &'static str,
    /// What the default would have been.
    pub default: u64,
    /// What the budget allows, and what the container gets.
    pub clamped_to: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(total_kib: u64, available_kib: u64) -> MemInfo {
        MemInfo {
            total: total_kib * 1024,
            available: available_kib * 1024,
            swap_total: 0,
        }
    }

    #[test]
    fn a_small_guest_keeps_the_floor_and_the_agent_reserve() {
        // A 128 MiB guest as the lean kernel boots it.
        let meminfo = guest(108_036, 66_100);
        let budget = guest_budget(&meminfo, 8 << 20, &BudgetRequest::default()).unwrap();
        assert_eq!(budget.kernel_reserve, KERNEL_RESERVE_FLOOR);
        let room = 66_100 * 1024 - KERNEL_RESERVE_FLOOR - (8 << 20);
        assert_eq!(budget.memory_max, room - room % PAGE_SIZE);
        assert_eq!(budget.memory_max % PAGE_SIZE, 0);
        // 38 MiB carry more tasks than a container's default, and the task table must fit.
        assert_eq!(budget.pids_max, budget.memory_max / BYTES_PER_TASK);
        assert!(budget.pids_max >= DEFAULT_PIDS_MAX);
        assert_eq!(budget.threads_max, budget.pids_max + TASKS_OUTSIDE);
        // Pure: the same input, the same budget.
        assert_eq!(
            budget,
            guest_budget(&meminfo, 8 << 20, &BudgetRequest::default()).unwrap()
        );
    }

    #[test]
    fn a_large_guest_reserves_a_share() {
        let meminfo = guest(4 << 20, 3 << 20);
        let budget = guest_budget(&meminfo, 0, &BudgetRequest::default()).unwrap();
        assert_eq!(
            budget.kernel_reserve,
            (4u64 << 30) / 100 * KERNEL_RESERVE_PERCENT
        );
        assert!(budget.memory_max < meminfo.available - budget.kernel_reserve + 1);
    }

    #[test]
    fn the_pids_budget_never_drops_below_one_default_container() {
        let meminfo = guest(65_536, 32_000);
        let budget = guest_budget(&meminfo, 0, &BudgetRequest::default()).unwrap();
        assert!(budget.memory_max / BYTES_PER_TASK < DEFAULT_PIDS_MAX);
        assert_eq!(budget.pids_max, DEFAULT_PIDS_MAX);
    }

    #[test]
    fn explicit_budgets_are_checked_against_the_guest() {
        let meminfo = guest(131_072, 100_000);
        let request = BudgetRequest {
            memory: Some(50 << 20),
            pids: Some(1000),
            kernel_reserve: None,
            log_reserve: None,
        };
        let budget = guest_budget(&meminfo, 0, &request).unwrap();
        assert_eq!((budget.memory_max, budget.pids_max), (50 << 20, 1000));

        let too_big = BudgetRequest {
            memory: Some(200 << 20),
            ..request
        };
        let error = guest_budget(&meminfo, 0, &too_big).unwrap_err().to_string();
        assert!(
            error.contains(&(200u64 << 20).to_string()) && error.contains("more than the guest"),
            "{error}"
        );
        let error = guest_budget(&guest(32_768, 20_000), 8 << 20, &BudgetRequest::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("too small"), "{error}");
        for (pids, expected) in [(0, "is 0"), (PIDS_CEILING + 1, "absurd")] {
            let request = BudgetRequest {
                pids: Some(pids),
                ..BudgetRequest::default()
            };
            let error = guest_budget(&meminfo, 0, &request).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    /// The 128 MiB guest of issue 30 (MemTotal 88,952 kB, ~51 MB available) with its log on
    /// the initramfs root: the log's default budget (1/32 of MemTotal) comes out of the
    /// containers' room, byte for byte, so that the containers at their budget plus a full log
    /// still leave the kernel its reserve.
    #[test]
    fn a_log_in_ram_comes_out_of_what_containers_may_use() {
        use crate::forensic::{Backing, default_budget};
        let meminfo = guest(88_952, 51_000);
        let log = default_budget(Backing::Ram, meminfo.total, None);
        assert_eq!(log, 88_952 * 1024 / 32);
        let without = guest_budget(&meminfo, 8 << 20, &BudgetRequest::default()).unwrap();
        let request = BudgetRequest {
            log_reserve: Some(log),
            ..BudgetRequest::default()
        };
        let with = guest_budget(&meminfo, 8 << 20, &request).unwrap();
        assert_eq!(with.log_reserve, log);
        assert!(without.memory_max - with.memory_max >= log - PAGE_SIZE);
        assert!(without.memory_max - with.memory_max <= log + PAGE_SIZE);
        // Containers at the budget, the agent at its reserve and the log full leave the kernel
        // its reserve of what was available.
        assert!(
            with.memory_max + with.agent_reserve + with.log_reserve + with.kernel_reserve
                <= meminfo.available
        );
        // A log too big for the guest leaves no budget: refused, not overcommitted.
        let huge = BudgetRequest {
            log_reserve: Some(40 << 20),
            ..BudgetRequest::default()
        };
        assert!(guest_budget(&meminfo, 8 << 20, &huge).is_err());
    }

    #[test]
    fn nonsense_meminfo_cannot_wrap() {
        let meminfo = guest(u64::MAX / 1024, 1);
        assert!(guest_budget(&meminfo, u64::MAX, &BudgetRequest::default()).is_err());
    }
}

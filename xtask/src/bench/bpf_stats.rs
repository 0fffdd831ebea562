//! The kernel's own run time of each BPF program (`kernel.bpf_stats_enabled`): the precise
//! cost figure, where wall-clock ratios on a noisy machine are not. Read from the programs'
//! fdinfo (`run_time_ns`, `run_cnt`) in the observer process; names come from
//! `BPF_OBJ_GET_INFO_BY_FD` on a duplicate of the program's fd (`pidfd_getfd`).
use std::collections::BTreeMap;

use anyhow::Context;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time accounting on while alive, and back as it was on drop.
pub(super) struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    pub(super) fn enable() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(Self { before })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, self.before.trim());
    }
}

/// One program's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ProgramStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every BPF program `pid` holds, by name (several programs of one name add up), with its
/// kernel run time so far.
pub(super) fn programs_of(pid: u32) -> BTreeMap<String, ProgramStats> {
    let mut programs = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return programs;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        let (Some(run_time_ns), Some(run_cnt)) = (field("run_time_ns:"), field("run_cnt:")) else {
            continue;
        };
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        let name = program_name(pid, fd).unwrap_or_else(|| format!("fd{fd}"));
        let stats: &mut ProgramStats = programs.entry(name).or_default();
        stats.run_time_ns += run_time_ns;
        stats.run_cnt += run_cnt;
    }
    programs
}

/// The program's name (`bpf_prog_info.name`, 16 bytes) through a duplicate of its fd.
fn program_name(pid: u32, fd: i32) -> Option<String> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
    // SAFETY: plain syscalls; the duplicated fd is ours and closed below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        if pidfd < 0 {
            return None;
        }
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as libc::c_int;
        libc::close(pidfd);
        if dup < 0 {
            return None;
        }
        // struct bpf_prog_info: `name` at byte 64 (after type, id, tag, jited/xlated sizes
        // and pointers, load_time, created_by_uid, nr_map_ids, map_ids), 16 bytes.
        let mut info = [0u8; 256];
        // union bpf_attr for OBJ_GET_INFO_BY_FD: bpf_fd u32, info_len u32, info u64.
        let mut attr = [0u64; 2];
        attr[0] = dup as u32 as u64 | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        );
        libc::close(dup);
        if rc != 0 {
            return None;
        }
        let name = &info[64..80];
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(String::from_utf8_lossy(&name[..len]).into_owned())
    }
}

/// `after - before`, program by program.
pub(super) fn delta(
    after: &BTreeMap<String, ProgramStats>,
    before: &BTreeMap<String, ProgramStats>,
) -> BTreeMap<String, ProgramStats> {
    after
        .iter()
        .map(|(name, stats)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                ProgramStats {
                    run_time_ns: stats.run_time_ns.saturating_sub(earlier.run_time_ns),
                    run_cnt: stats.run_cnt.saturating_sub(earlier.run_cnt),
                },
            )
        })
        .collect()
}

/// Adds one storm's figures into a running total.
pub(super) fn add(
    total: &mut BTreeMap<String, ProgramStats>,
    storm: &BTreeMap<String, ProgramStats>,
) {
    for (name, stats) in storm {
        let sum = total.entry(name.clone()).or_default();
        sum.run_time_ns += stats.run_time_ns;
        sum.run_cnt += stats.run_cnt;
    }
}

/// The per-program table and each observer's BPF time per fork, against a fork's own cost.
pub(super) fn table(
    observers: &[(&str, &BTreeMap<String, ProgramStats>)],
    forks: u64,
    fork_ns: f64,
) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "\nBPF cost, the kernel's own figure (`kernel.bpf_stats_enabled`: `run_time_ns` and \
         `run_cnt` of each program, summed over the measured rounds: {forks} forks). A fork \
         itself (fork + exit + waitpid, no observer) costs {:.1} µs here.\n\n\
         | observer | program | runs per fork | ns per run | ns per fork |\n\
         | --- | --- | --- | --- | --- |\n",
        fork_ns / 1000.0
    );
    let mut totals = Vec::new();
    for (observer, programs) in observers {
        let mut total_ns = 0u64;
        for (name, stats) in programs.iter().filter(|(_, stats)| stats.run_cnt > 0) {
            total_ns += stats.run_time_ns;
            let _ = writeln!(
                out,
                "| {observer} | {name} | {:.2} | {:.0} | {:.0} |",
                stats.run_cnt as f64 / forks as f64,
                stats.run_time_ns as f64 / stats.run_cnt as f64,
                stats.run_time_ns as f64 / forks as f64,
            );
        }
        totals.push((observer, total_ns as f64 / forks as f64));
    }
    out.push_str(
        "\n| observer | BPF ns per fork | share of a fork's cost |\n| --- | --- | --- |\n",
    );
    for (observer, per_fork) in &totals {
        let _ = writeln!(
            out,
            "| {observer} | {per_fork:.0} | {:.2}% |",
            per_fork / fork_ns * 100.0
        );
    }
    if let [(first, a), (second, b)] = totals.as_slice() {
        let _ = writeln!(
            out,
            "\n{first} / {second}, BPF time per fork over every round: {:.2}",
            a / b
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_subtract_per_program() {
        let stats = |t, c| ProgramStats {
            run_time_ns: t,
            run_cnt: c,
        };
        let before = BTreeMap::from([("fork".to_string(), stats(100, 1))]);
        let after = BTreeMap::from([
            ("fork".to_string(), stats(350, 3)),
            ("exit".to_string(), stats(40, 2)),
        ]);
        let delta = delta(&after, &before);
        assert_eq!(delta["fork"], stats(250, 2));
        assert_eq!(delta["exit"], stats(40, 2));
    }
}

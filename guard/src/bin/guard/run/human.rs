//! `guard run`'s report for a terminal.
use guard::cgroup::{KeyedCounts, LimitValue, memory, pids};

use super::Report;

pub(super) fn print_human(report: &Report) {
    out!("{}", report.guard.to_text());
    let show = |value: Option<u64>| value.map_or("max".to_string(), |v| v.to_string());
    let limit =
        |value: Option<LimitValue>| value.map_or("absent".to_string(), |limit| limit.to_string());
    let applied = &report.limits_applied;
    match (report.exit_code, report.exit_signal) {
        (Some(code), _) => outln!("  exited with code {code}"),
        (_, Some(signal)) => outln!("  killed by signal {signal}"),
        _ => outln!("  ended"),
    }
    outln!(
        "  at creation: memory.max asked {} kernel {}; memory.swap.max asked {} kernel {}; \
         pids.max asked {} kernel {}",
        show(report.limits_resolved.memory_max),
        limit(applied.read_back.memory_max),
        show(report.limits_resolved.swap_max),
        limit(applied.read_back.memory_swap_max),
        show(report.limits_resolved.pids_max),
        limit(applied.read_back.pids_max)
    );
    outln!(
        "  oom_score_adj: container {}, agent after start {}",
        applied.oom_score_adj,
        report.agent_oom_score_adj_after_start
    );
    for exec in &report.execs {
        outln!(
            "  exec {:?} (pid {}): exit code {:?}",
            exec.command,
            exec.pid,
            exec.exit_code
        );
    }
    let events = &report.final_kernel_events;
    let line = |name: &str, counts: &Option<KeyedCounts>| match counts {
        Some(counts) => {
            let pairs: Vec<String> = counts.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
            outln!("  final {name:<20} {}", pairs.join(", "));
        }
        None => outln!("  final {name:<20} absent"),
    };
    line(memory::EVENTS, &events.memory_events);
    line(memory::EVENTS_LOCAL, &events.memory_events_local);
    line(pids::EVENTS, &events.pids_events);
    let t = report.timings;
    outln!(
        "  times: create {} µs, start {} µs, delete {} µs, wall {} ms",
        t.create_us,
        t.start_us,
        t.delete_us,
        report.wall_ms
    );
}

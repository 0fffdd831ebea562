//! The guest half for kernels without tracepoints (`cargo xtask bench --sources-only`): what
//! the live sources of the new tier cost, and what guard's BPF costs where it runs in the
//! interpreter, each as a ratio against no guard in the same boot.
//!
//! `guard-sources-bench` (tests/src/bin/) does the work in the guest; every reading is a
//! fresh workload process (GETPIDS raw getpid, then FORKS fork + exit + waitpid):
//! - `lean`, `tier`: rotating rounds of none, the perf cgroup dummy event (fork/exit per
//!   cgroup, read from its ring), taskstats (every exit over netlink, delay accounting on),
//!   both;
//! - `lean`, `audit`: three phases in order, because audit leaves a mark on the boot: audit
//!   never enabled, guard's audit source open (the fork-denial rule), closed again;
//! - `lean-guard` and `6.12`, `bpf`: rounds of no guard, then `guard watch` on the cgroup,
//!   with `kernel.bpf_stats_enabled`: each program's own run time per fork (the interpreter on
//!   lean-guard, the JIT on Debian's 6.12).
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;
use xtask::vm::{self, VmConfig, VmResult};

use super::interval;

pub(super) const BEGIN: &str = "<!-- sources bench: begin -->";
pub(super) const END: &str = "<!-- sources bench: end -->";

/// Enough for about a second under TCG: the guest's clock ticks in milliseconds.
const GETPIDS: u32 = 1_000_000;
const FORKS: u32 = 1_000;
const CGROUP: &str = "/sys/fs/cgroup/bench";

/// Boots `kernel` with `script`, returning the JSON each named result file holds.
fn boot(kernel: &str, bin: &Path, script: &str, files: &[&str]) -> anyhow::Result<Vec<Value>> {
    println!("sources bench: booting {kernel}");
    let config = VmConfig::shell(kernel, script)
        .binary(bin.join("guard"))
        .binary(bin.join("guard-sources-bench"))
        .timeout(Duration::from_secs(1800))
        .label(format!("bench-sources-{kernel}"));
    let outcome = vm::run(&config).with_context(|| format!("booting the {kernel} guest"))?;
    let VmResult::Completed(done) = &outcome.result else {
        bail!(
            "the {kernel} guest did not complete ({}):\n{}",
            outcome.run_dir.display(),
            outcome.console_tail()
        );
    };
    if done.exit_code != 0 {
        bail!(
            "the {kernel} guest's scenario failed (exit {}):\n{}",
            done.exit_code,
            done.stderr_str()
        );
    }
    files
        .iter()
        .map(|name| {
            let text = done
                .file_str(name)
                .with_context(|| format!("the {kernel} guest sent no {name}"))?;
            // Printed as it comes: a later guest's failure loses no reading.
            println!("{kernel} {name}: {}", text.trim());
            serde_json::from_str(text.trim())
                .with_context(|| format!("the {kernel} guest's {name}: {text:?}"))
        })
        .collect()
}

/// One figure (`fork_ns`, `getpid_ns`) of each reading.
fn figures(readings: &Value, key: &str) -> Vec<f64> {
    readings
        .as_array()
        .map(|list| list.iter().filter_map(|r| r[key].as_f64()).collect())
        .unwrap_or_default()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn ratio(numerators: &[f64], denominators: &[f64]) -> String {
    interval::paired_ratio(numerators, denominators).map_or("–".into(), |r| r.to_string())
}

/// Runs the three guests and returns the markdown section.
pub(super) fn measure(bin: &Path, rounds: usize) -> anyhow::Result<String> {
    let lean = boot(
        "lean",
        bin,
        &format!(
            "set -e\nguard-sources-bench tier {rounds} {GETPIDS} {FORKS} {CGROUP} > /results/tier.json\n\
             guard-sources-bench audit {rounds} {GETPIDS} {FORKS} > /results/audit.json\n"
        ),
        &["tier.json", "audit.json"],
    )?;
    let bpf_script = format!(
        "set -e\nguard-sources-bench bpf {rounds} {FORKS} {CGROUP} /bin/guard > /results/bpf.json\n"
    );
    let interpreted = boot("lean-guard", bin, &bpf_script, &["bpf.json"])?;
    let jit = boot("6.12", bin, &bpf_script, &["bpf.json"])?;
    Ok(section(
        &lean[0],
        &lean[1],
        &interpreted[0],
        &jit[0],
        rounds,
    ))
}

fn section(tier: &Value, audit: &Value, interpreted: &Value, jit: &Value, rounds: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Kernels without tracepoints\n\n\
         `cargo xtask bench --sources-only`: one 128 MiB guest per kernel under QEMU TCG (1 \
         vCPU), `guard-sources-bench` doing the work. Each reading is a fresh process running \
         {GETPIDS} raw getpid syscalls and then {FORKS} fork + exit + waitpid, in a cgroup; \
         {rounds} rounds after a warm-up. Ratios are means of per-round ratios against no \
         source in the same boot, with 95% bootstrap intervals; the ns figures are medians \
         (TCG: tens of times slower than hardware, only the ratios carry over).\n"
    );
    // The tier's sources on lean.
    let rounds_of = |mode: &str| &tier["rounds"][mode];
    let none_fork = figures(rounds_of("none"), "fork_ns");
    let none_getpid = figures(rounds_of("none"), "getpid_ns");
    let _ = writeln!(
        out,
        "### The new tier's sources per fork (`lean`)\n\n\
         | source | ns per fork (median) | fork vs none [95% interval] | getpid vs none |\n\
         | --- | --- | --- | --- |"
    );
    for mode in ["none", "perf", "taskstats", "perf+taskstats"] {
        let fork = figures(rounds_of(mode), "fork_ns");
        let getpid = figures(rounds_of(mode), "getpid_ns");
        let _ = writeln!(
            out,
            "| {mode} | {:.0} | {} | {} |",
            median(&fork),
            ratio(&fork, &none_fork),
            ratio(&getpid, &none_getpid)
        );
    }
    let _ = writeln!(
        out,
        "\nperf: the dummy software event with `task` and `comm` records on the cgroup, one per \
         CPU, its ring drained every 5 ms; the last round's ring held {} fork and {} exit \
         records for {FORKS} forks, {} lost. taskstats: registered for every CPU's exits, delay \
         accounting turned on for the round (off on lean by default) and off after.\n",
        tier["last_perf_round"]["forks"],
        tier["last_perf_round"]["exits"],
        tier["last_perf_round"]["lost"],
    );
    // Audit's phases on lean.
    let phase = |name: &str| &audit["phases"][name]["readings"];
    let never_fork = figures(phase("never"), "fork_ns");
    let never_getpid = figures(phase("never"), "getpid_ns");
    let _ = writeln!(
        out,
        "### Audit's syscall overhead (`lean`)\n\n\
         Phases in this order in one boot (audit marks every task forked once it was ever on); \
         the ratios pair round r of a phase with round r of the first.\n\n\
         | phase | ns per getpid | getpid vs never | ns per fork | fork vs never |\n\
         | --- | --- | --- | --- | --- |"
    );
    for (name, what) in [
        ("never", "audit never enabled in this boot"),
        (
            "rule",
            "guard's audit source open: audit on, the fork-denial rule",
        ),
        ("after", "the source closed: audit off again, rule removed"),
    ] {
        let fork = figures(phase(name), "fork_ns");
        let getpid = figures(phase(name), "getpid_ns");
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {} | {:.0} | {} |",
            median(&getpid),
            ratio(&getpid, &never_getpid),
            median(&fork),
            ratio(&fork, &never_fork)
        );
    }
    // guard's BPF per fork, interpreted and JIT-compiled.
    let _ = writeln!(
        out,
        "\n### guard's BPF per fork: the interpreter (`lean-guard`) and the JIT (`6.12`)\n\n\
         `kernel.bpf_stats_enabled`: each program's `run_time_ns` over its runs, summed over \
         the rounds with guard watching the cgroup; a fork's own cost is the median of the \
         rounds without guard in the same boot.\n\n\
         | kernel | program | runs per fork | ns per run | ns per fork |\n\
         | --- | --- | --- | --- | --- |"
    );
    let mut totals = Vec::new();
    for (kernel, result) in [("lean-guard", interpreted), ("6.12", jit)] {
        let forks =
            result["forks"].as_f64().unwrap_or(1.0) * result["rounds"].as_f64().unwrap_or(1.0);
        let mut total = 0.0;
        if let Some(programs) = result["programs"].as_object() {
            for (name, stats) in programs {
                let time = stats["run_time_ns"].as_f64().unwrap_or(0.0);
                let count = stats["run_cnt"].as_f64().unwrap_or(0.0);
                if count == 0.0 {
                    continue;
                }
                total += time / forks;
                let _ = writeln!(
                    out,
                    "| {kernel} | {name} | {:.2} | {:.0} | {:.0} |",
                    count / forks,
                    time / count,
                    time / forks
                );
            }
        }
        let none = figures(&result["none"], "fork_ns");
        let with = figures(&result["guard"], "fork_ns");
        totals.push((
            kernel,
            result["jited"].as_bool(),
            total,
            median(&none),
            ratio(&with, &none),
        ));
    }
    let _ = writeln!(
        out,
        "\n| kernel | JIT | BPF ns per fork | a fork without guard (ns) | share | fork wall time with guard vs without |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for (kernel, jited, total, fork, wall) in &totals {
        let _ = writeln!(
            out,
            "| {kernel} | {} | {total:.0} | {fork:.0} | {:.2}% | {wall} |",
            jited.map_or("?", |on| if on { "yes" } else { "no (interpreter)" }),
            total / fork * 100.0
        );
    }
    if let [(_, _, interpreted, _, _), (_, _, jit, _, _)] = totals.as_slice() {
        let _ = writeln!(
            out,
            "\nInterpreter / JIT, BPF ns per fork: {:.1}× (both under TCG, which slows the JIT's \
             native code and the interpreter's loop alike)",
            interpreted / jit
        );
    }
    out
}

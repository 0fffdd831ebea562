//! `cargo xtask limits`: measures the guest budget's kernel reserve instead of guessing it. For
//! each guest kernel and memory size, bisects the smallest kernel reserve (so the largest
//! budget) at which the memcg OOM killer always wins over the global one under the tenants
//! wave (a pids bomb, a 512 MiB allocation and a 200 × 2 MiB fork+alloc bomb at once beside a
//! steady tenant). The wave first runs `--confirm` times at the library's default reserve; when
//! that is safe, the bisection searches below it. The table goes into docs/LIMITS.md between
//! its markers.
use std::{fmt::Write as _, path::Path};

use anyhow::bail;
use serde_json::Value;
use xtask::vm::{self, VmResult};

use crate::cmd;

const BEGIN: &str = "<!-- limits:begin -->";
const END: &str = "<!-- limits:end -->";

#[derive(clap::Args)]
pub struct LimitsArgs {
    /// Guest kernels (repeatable).
    #[arg(long = "kernel", default_values_t = ["6.1", "6.12", "lean", "lean-guard"].map(String::from))]
    kernels: Vec<String>,
    /// Guest memory sizes in MiB (repeatable).
    #[arg(long = "memory", default_values_t = [128u32, 256])]
    memory: Vec<u32>,
    /// Waves per bisection step (all must be free of global OOM kills).
    #[arg(long, default_value_t = 2)]
    runs_per_step: u32,
    /// Waves at the library's default reserve, per kernel and size.
    #[arg(long, default_value_t = 10)]
    confirm: u32,
    /// The largest reserve tried when the default is not safe, in MiB.
    #[arg(long, default_value_t = 32)]
    max_reserve_mib: u64,
    /// The bisection's resolution, in MiB.
    #[arg(long, default_value_t = 2)]
    step_mib: u64,
    /// Print the table only; leave docs/LIMITS.md as it is.
    #[arg(long)]
    no_write: bool,
}

/// A wave still running after this long is livelocked (tiny budgets make the memcg OOM
/// killer chase the bombs' re-forks forever): it counts as not clean, and the batch stops,
/// since its leftovers would skew the next wave. A clean wave takes 15-40 s under TCG.
const WAVE_TIMEOUT_S: u64 = 300;

/// What a batch of waves in one guest showed.
#[derive(Debug, Default)]
struct Batch {
    runs: u32,
    /// Waves that completed with no global OOM kill and no log overrun.
    clean: u32,
    global_kills: u64,
    memcg_kills: u64,
    /// The guest's MemAvailable, the kernel reserve and the budget, from the first wave.
    available: u64,
    kernel_reserve: u64,
    budget: u64,
    vm_died: bool,
    /// Runs that left no summary, with the selftest's exit code (the console has why).
    failed: Vec<String>,
}

impl Batch {
    fn safe(&self) -> bool {
        !self.vm_died && self.runs > 0 && self.clean == self.runs
    }

    /// How the batch went, for the table: what made it unsafe, or "yes".
    fn outcome(&self) -> &'static str {
        if self.safe() {
            "yes"
        } else if self.vm_died {
            "no (the VM died)"
        } else if self.global_kills > 0 {
            "no (global OOM kills)"
        } else if self.failed.iter().any(|exit| exit.ends_with(" exit 143")) {
            "no (livelock: the wave outran its timeout)"
        } else {
            "no (a wave failed)"
        }
    }
}

/// Boots one guest that runs the tenants wave `runs` times with kernel reserve `reserve`
/// (None: the library's default).
fn batch(
    kernel: &str,
    memory: u32,
    bin: &Path,
    reserve: Option<u64>,
    runs: u32,
) -> anyhow::Result<Batch> {
    let reserve_arg = reserve.map_or(String::new(), |bytes| format!("--kernel-reserve {bytes}"));
    let script = format!(
        "for i in $(seq 1 {runs}); do timeout {WAVE_TIMEOUT_S} guard selftest --scenario tenants \
         {reserve_arg} --out /results/run$i > /dev/null 2>&1; code=$?; echo \"run $i exit \
         $code\"; rm -rf /results/run$i/log; [ $code = 0 ] || break; done"
    );
    let config = vm::VmConfig::shell(kernel, &script)
        .memory_mib(memory)
        .binary(bin.join("guard"))
        .binary(bin.join("guard-stress"))
        .timeout(std::time::Duration::from_secs(
            120 + (WAVE_TIMEOUT_S + 20) * u64::from(runs),
        ))
        .label(format!("limits-{kernel}-{memory}"));
    let outcome = vm::run(&config)?;
    let mut batch = Batch {
        runs,
        ..Batch::default()
    };
    let done = match outcome.result {
        VmResult::Completed(done) => done,
        _ => {
            batch.vm_died = true;
            return Ok(batch);
        }
    };
    for run in 1..=runs {
        let Some(text) = done.file_str(&format!("run{run}/waves.json")) else {
            // The wave failed before its summary (a budget below the floor, say): not clean.
            let exit = done
                .stdout_str()
                .lines()
                .find(|line| line.starts_with(&format!("run {run} exit")))
                .unwrap_or("no exit line")
                .to_string();
            batch.failed.push(exit);
            continue;
        };
        let summary: Value = serde_json::from_str(&text)?;
        let oom = &summary["tenants"]["kernel_log_oom_kills"];
        let number = |value: &Value| value.as_u64().unwrap_or(0);
        batch.global_kills += number(&oom["global"]);
        batch.memcg_kills += number(&oom["memcg"]);
        if number(&oom["global"]) == 0
            && number(&oom["overruns"]) == 0
            && summary["agent_oom_score_adj"] == -1000
        {
            batch.clean += 1;
        }
        if batch.available == 0 {
            batch.available = number(&summary["budget"]["budget"]["available"]);
            batch.kernel_reserve = number(&summary["budget"]["budget"]["kernel_reserve"]);
            batch.budget = number(&summary["budget"]["read_back"]["memory_max"]["value"]);
        }
    }
    Ok(batch)
}

struct Row {
    kernel: String,
    memory: u32,
    /// The smallest safe reserve in MiB (None: none up to the maximum was safe).
    smallest_safe: Option<u64>,
    steps: Vec<(u64, &'static str)>,
    confirm: Batch,
}

fn bisect(args: &LimitsArgs, kernel: &str, memory: u32, bin: &Path) -> anyhow::Result<Row> {
    let mut steps = Vec::new();
    let mut probe = |mib: u64| -> anyhow::Result<bool> {
        let result = batch(kernel, memory, bin, Some(mib << 20), args.runs_per_step)?;
        let safe = result.safe();
        println!(
            "limits: {kernel} {memory} MiB, kernel reserve {mib} MiB: {} (global kills {}, memcg \
             kills {}, budget {} of MemAvailable {}){}{}",
            if safe { "safe" } else { "UNSAFE" },
            result.global_kills,
            result.memcg_kills,
            result.budget,
            result.available,
            if result.vm_died { "; THE VM DIED" } else { "" },
            if result.failed.is_empty() {
                String::new()
            } else {
                format!("; no summary: {}", result.failed.join(", "))
            }
        );
        steps.push((mib, result.outcome()));
        Ok(safe)
    };
    // The default first: when it is safe it bounds the search (nothing above it is needed).
    let confirm = batch(kernel, memory, bin, None, args.confirm)?;
    let default_mib = confirm.kernel_reserve.div_ceil(1 << 20);
    println!(
        "limits: {kernel} {memory} MiB at the default reserve ({default_mib} MiB): {}/{} clean, \
         global kills {}",
        confirm.clean, confirm.runs, confirm.global_kills
    );
    // Invariant: `high` is safe, `low` is not (or is below the range).
    let smallest_safe = if probe(0)? {
        Some(0)
    } else {
        let high = if confirm.safe() && default_mib > 0 {
            Some(default_mib)
        } else if probe(args.max_reserve_mib)? {
            Some(args.max_reserve_mib)
        } else {
            None
        };
        high.map(|mut high| {
            let mut low = 0;
            while high - low > args.step_mib {
                let middle = (low + high) / 2 / args.step_mib * args.step_mib;
                let middle = middle.max(low + args.step_mib);
                match probe(middle) {
                    Ok(true) => high = middle,
                    Ok(false) => low = middle,
                    Err(error) => {
                        println!(
                            "limits: {kernel} {memory} MiB: step {middle} MiB failed: {error:#}"
                        );
                        break;
                    }
                }
            }
            high
        })
    };
    Ok(Row {
        kernel: kernel.to_string(),
        memory,
        smallest_safe,
        steps,
        confirm,
    })
}

pub fn run(args: &LimitsArgs) -> anyhow::Result<()> {
    if args.step_mib == 0 || args.runs_per_step == 0 {
        bail!("--step-mib and --runs-per-step must be at least 1");
    }
    let bin = cmd::prepare_guest_binaries(&args.kernels)?;
    let mut rows = Vec::new();
    for kernel in &args.kernels {
        for &memory in &args.memory {
            rows.push(bisect(args, kernel, memory, &bin)?);
        }
    }
    let mut table = String::from(
        "| kernel | guest | MemAvailable at start | smallest safe kernel reserve | steps (MiB: \
         safe?) | default reserve | at the default: clean runs | global OOM kills | memcg OOM \
         kills |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in &rows {
        let steps: Vec<String> = row
            .steps
            .iter()
            .map(|(mib, outcome)| format!("{mib}: {outcome}"))
            .collect();
        writeln!(
            table,
            "| {} | {} MiB | {:.1} MiB | {} | {} | {:.1} MiB | {}/{}: {} | {} | {} |",
            row.kernel,
            row.memory,
            row.confirm.available as f64 / 1048576.0,
            row.smallest_safe
                .map_or(format!("> {} MiB", args.max_reserve_mib), |mib| format!(
                    "{mib} MiB"
                )),
            steps.join(", "),
            row.confirm.kernel_reserve as f64 / 1048576.0,
            row.confirm.clean,
            row.confirm.runs,
            row.confirm.outcome(),
            row.confirm.global_kills,
            row.confirm.memcg_kills
        )?;
    }
    println!("\n{table}");
    if !args.no_write {
        let doc = cmd::write_between_markers("docs/LIMITS.md", BEGIN, END, &table)?;
        println!("limits: the table is in {}", doc.display());
    }
    Ok(())
}

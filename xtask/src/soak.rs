//! `cargo xtask soak --runs N`: the scenarios N times per kernel, each with its protection on
//! and off; a survival table is the project's headline reliability figure. Modes: the
//! multi-tenant wave with and without the guest budget (default), the one-container waves
//! with and without limits (`--mode waves`).
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Context;
use serde_json::Value;
use xtask::vm::{self, VmResult};

use crate::cmd;

const BEGIN: &str = "<!-- soak:begin -->";
const END: &str = "<!-- soak:end -->";

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Runs per kernel and mode.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Guest kernels.
    #[arg(long = "kernel", default_values_t = vec!["6.1".to_string(), "6.12".to_string()])]
    pub kernels: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Which scenario: `tenants` (four containers at once, budget on and off) or `waves` (one
    /// container, limits on and off).
    #[arg(long, value_enum, default_value_t = Mode::Tenants)]
    pub mode: Mode,
    /// Print the table only; leave docs/LIMITS.md as it is (the tenants mode writes its table
    /// there, between `<!-- soak:begin -->` and `<!-- soak:end -->`).
    #[arg(long)]
    pub no_write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Tenants,
    Waves,
}

impl Mode {
    /// The selftest arguments with the protection on and off, and what it is called.
    fn variants(self) -> [(&'static str, &'static str); 2] {
        match self {
            Mode::Tenants => [
                ("budget", "--scenario tenants"),
                ("no budget", "--scenario tenants --no-budget"),
            ],
            Mode::Waves => [
                ("limits", "--scenario waves"),
                ("no limits", "--scenario waves --no-limits"),
            ],
        }
    }
}

#[derive(Default)]
struct Row {
    runs: usize,
    survived: usize,
    global_ooms: u64,
    /// The kernel log's memcg OOM kills (the tenants wave).
    memcg_ooms: u64,
    agent_intact: usize,
    verdicts: BTreeMap<String, usize>,
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let bin = cmd::prepare_guest_binaries(&args.kernels)?;
    let mut rows: BTreeMap<(String, &str), Row> = BTreeMap::new();
    for round in 1..=args.runs {
        for kernel in &args.kernels {
            for (mode, selftest_args) in args.mode.variants() {
                let mut config = cmd::selftest_vm(
                    kernel,
                    args.memory,
                    &bin,
                    selftest_args,
                    format!("soak-{kernel}-{round}"),
                );
                config.progress = false;
                let outcome = vm::run(&config)?;
                let row = rows.entry((kernel.clone(), mode)).or_default();
                row.runs += 1;
                let verdict = match &outcome.result {
                    VmResult::Completed(done) => {
                        row.survived += 1;
                        let summary: Value = done
                            .file_str("waves.json")
                            .context("no waves.json")
                            .and_then(|text| Ok(serde_json::from_str(&text)?))
                            .unwrap_or(Value::Null);
                        row.global_ooms += global_oom_kills(&summary);
                        row.memcg_ooms += summary["tenants"]["kernel_log_oom_kills"]["memcg"]
                            .as_u64()
                            .unwrap_or(0);
                        if summary["agent_oom_score_adj"] == -1000 {
                            row.agent_intact += 1;
                        }
                        verdicts(&summary)
                    }
                    VmResult::Died { .. } => "VM died".to_string(),
                    VmResult::TimedOut { .. } => "VM hung".to_string(),
                };
                println!(
                    "round {round} {kernel} {mode}: {verdict} ({:.1} s)",
                    outcome.wall_time.as_secs_f64()
                );
                *row.verdicts.entry(verdict).or_default() += 1;
            }
        }
    }
    let mut table = format!(
        "| kernel | guest | {} | runs | VM survived | agent intact | global OOM kills | memcg OOM \
         kills | verdicts |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        args.mode.variants()[0].0
    );
    for ((kernel, mode), row) in &rows {
        let verdicts: Vec<String> = row
            .verdicts
            .iter()
            .map(|(verdict, count)| format!("{verdict} ×{count}"))
            .collect();
        writeln!(
            table,
            "| {kernel} | {} MiB | {} | {} | {}/{} | {}/{} | {} | {} | {} |",
            args.memory,
            if mode.starts_with("no ") { "off" } else { "on" },
            row.runs,
            row.survived,
            row.runs,
            row.agent_intact,
            row.runs,
            row.global_ooms,
            row.memcg_ooms,
            verdicts.join(", ")
        )?;
    }
    println!("\n{table}");
    if args.mode == Mode::Tenants && !args.no_write {
        let doc = cmd::write_between_markers("docs/LIMITS.md", BEGIN, END, &table)?;
        println!("soak: the table is in {}", doc.display());
    }
    Ok(())
}

/// Global OOM kills a run saw: the kernel log's (the tenants wave reads it), else the probes'
/// kills outside every container plus the report's.
fn global_oom_kills(summary: &Value) -> u64 {
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    if !summary["tenants"].is_null() {
        return number(&summary["tenants"]["kernel_log_oom_kills"]["global"]);
    }
    number(&summary["global"]["bpf"]["oom_kills"])
        + number(&summary["report"]["oom"]["global_kills"])
}

/// The run's verdict: the container's, or for the tenants wave each hostile tenant's limit
/// verdicts and whether the steady tenant finished.
fn verdicts(summary: &Value) -> String {
    let tenants = &summary["tenants"];
    if tenants.is_null() {
        return summary["report"]["verdict"]
            .as_str()
            .unwrap_or("no report")
            .to_string();
    }
    let containers = &tenants["containers"];
    let verdict = |id: &str, limit: &str| {
        containers[id]["report"][limit]["verdict"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "pids {}, memory {}, forkalloc {}, steady {}",
        verdict("tenant-pids", "pids"),
        verdict("tenant-memory", "memory"),
        verdict("tenant-forkalloc", "memory"),
        if containers["tenant-steady"]["exit_code"] == 0 {
            "done"
        } else {
            "FAILED"
        }
    )
}

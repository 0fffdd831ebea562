//! `cargo xtask soak --runs N`: the scenario N times per kernel, with and without limits; a
//! survival table is the project's headline reliability figure.
use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;
use xtask::vm::{self, VmResult};

use crate::cmd;

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
}

#[derive(Default)]
struct Row {
    runs: usize,
    survived: usize,
    global_ooms: u64,
    agent_intact: usize,
    verdicts: BTreeMap<String, usize>,
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let bin = cmd::prepare_guest_binaries(&args.kernels)?;
    let mut rows: BTreeMap<(String, bool), Row> = BTreeMap::new();
    for round in 1..=args.runs {
        for kernel in &args.kernels {
            for no_limits in [false, true] {
                let mut config = cmd::selftest_vm(
                    kernel,
                    args.memory,
                    &bin,
                    no_limits,
                    format!("soak-{kernel}-{round}"),
                );
                config.progress = false;
                let outcome = vm::run(&config)?;
                let row = rows.entry((kernel.clone(), no_limits)).or_default();
                row.runs += 1;
                let verdict = match &outcome.result {
                    VmResult::Completed(done) => {
                        row.survived += 1;
                        let summary: Value = done
                            .file_str("waves.json")
                            .context("no waves.json")
                            .and_then(|text| Ok(serde_json::from_str(&text)?))
                            .unwrap_or(Value::Null);
                        let global = summary["global"]["bpf"]["oom_kills"].as_u64().unwrap_or(0)
                            + summary["report"]["oom"]["global_kills"]
                                .as_u64()
                                .unwrap_or(0);
                        row.global_ooms += global;
                        if summary["agent_oom_score_adj"] == -1000 {
                            row.agent_intact += 1;
                        }
                        summary["report"]["verdict"]
                            .as_str()
                            .unwrap_or("no report")
                            .to_string()
                    }
                    VmResult::Died { .. } => "VM died".to_string(),
                    VmResult::TimedOut { .. } => "VM hung".to_string(),
                };
                println!(
                    "round {round} {kernel} {}: {verdict} ({:.1} s)",
                    if no_limits { "no limits" } else { "limits" },
                    outcome.wall_time.as_secs_f64()
                );
                *row.verdicts.entry(verdict).or_default() += 1;
            }
        }
    }
    println!(
        "\n| kernel | limits | runs | VM survived | agent intact | global OOM kills | verdicts |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for ((kernel, no_limits), row) in &rows {
        let verdicts: Vec<String> = row
            .verdicts
            .iter()
            .map(|(verdict, count)| format!("{verdict} ×{count}"))
            .collect();
        println!(
            "| {kernel} | {} | {} | {}/{} | {}/{} | {} | {} |",
            if *no_limits { "off" } else { "on" },
            row.runs,
            row.survived,
            row.runs,
            row.agent_intact,
            row.runs,
            row.global_ooms,
            verdicts.join(", ")
        );
    }
    Ok(())
}

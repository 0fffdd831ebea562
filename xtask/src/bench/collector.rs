//! The collector's throughput with durable acknowledgements (a record acknowledged once a group
//! commit's fdatasync has it on disk) against acknowledgements as soon as it is written, in the
//! same run: `guard-stream-bench` streams pre-written logs from 1 guest, then from 100 at once,
//! into a collector in its own process, both modes in alternating order each round.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Context as _;

use super::interval;
use super::readings::median;

/// The markers around the collector's section of docs/BENCHMARKS.md (`--collector-only`
/// replaces what stands between them).
pub(super) const BEGIN: &str = "<!-- collector bench: begin -->";
pub(super) const END: &str = "<!-- collector bench: end -->";

/// Records per guest: the single guest streams as many as the hundred together.
const CASES: [(usize, usize); 2] = [(1, 100_000), (100, 1_000)];

struct Case {
    guests: usize,
    records: usize,
    durable: Vec<f64>,
    written: Vec<f64>,
}

fn run_case(bench: &Path, guests: usize, records: usize, rounds: usize) -> anyhow::Result<Case> {
    // A real disk (the target directory's), not a tmpfs: there fdatasync would cost nothing.
    let dir = xtask::paths::target_dir().join(format!("stream-bench-{}", std::process::id()));
    let output = Command::new(bench)
        .args([guests.to_string(), records.to_string(), rounds.to_string()])
        .arg(&dir)
        .output()
        .with_context(|| format!("running {}", bench.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        output.status.success(),
        "guard-stream-bench {guests} {records}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "guard-stream-bench said {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let seconds = |key: &str| -> Vec<f64> {
        value[key]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Case {
        guests,
        records,
        durable: seconds("durable_s"),
        written: seconds("written_s"),
    })
}

/// The collector's section of docs/BENCHMARKS.md.
pub(super) fn measure(bin: &Path, rounds: usize) -> anyhow::Result<String> {
    let bench = bin.join("guard-stream-bench");
    let mut table = String::new();
    writeln!(table, "\n## The collector\n")?;
    writeln!(
        table,
        "`guard-stream-bench`: pre-written logs streamed at once by senders with their keys into \
         a collector on this machine's disk, {rounds} rounds, each running both modes in \
         alternating order. *Durable*: a record is acknowledged once the group commit (a round \
         at most every 5 ms: one fdatasync per file written) has it on disk, the default; \
         *written*: as soon as it is written to the file. The ratio is durable over written \
         throughput, the mean of paired rounds with its 95% bootstrap interval.\n"
    )?;
    writeln!(
        table,
        "| guests × records | durable records/s (median) | written records/s (median) | durable / written [95% interval] |"
    )?;
    writeln!(table, "| --- | --- | --- | --- |")?;
    for (guests, records) in CASES {
        let case = run_case(&bench, guests, records, rounds)?;
        let total = (case.guests * case.records) as f64;
        let rates = |walls: &[f64]| walls.iter().map(|wall| total / wall).collect::<Vec<f64>>();
        let (durable, written) = (rates(&case.durable), rates(&case.written));
        println!(
            "collector, {guests} guest(s) × {records}: durable {durable:.0?} records/s, written {written:.0?}"
        );
        writeln!(
            table,
            "| {} × {} | {:.0} | {:.0} | {} |",
            case.guests,
            case.records,
            median(&mut durable.clone()),
            median(&mut written.clone()),
            interval::paired_ratio(&durable, &written).map_or("–".to_string(), |r| r.to_string())
        )?;
    }
    Ok(table)
}

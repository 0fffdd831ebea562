//! `cargo xtask kernels`: what guard's kernel fragment costs, measured in one run. Each guest
//! kernel boots a few times in a 128 MiB guest with the same image; per kernel: guard's tier,
//! the image size, the build time from scratch (recorded by setup), the boot time to init, and
//! MemTotal and MemAvailable after boot, medians, with the deltas against `lean`. The table
//! goes into docs/KERNELS.md between its markers.
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use xtask::{
    paths,
    vm::{self, VmConfig, VmResult},
};

use crate::cmd;

const BEGIN: &str = "<!-- kernel-costs:begin -->";
const END: &str = "<!-- kernel-costs:end -->";

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Guest kernels to measure; the first is the baseline of the deltas.
    #[arg(long = "kernel", default_values_t = ["lean", "lean-guard"].map(String::from).to_vec())]
    pub kernels: Vec<String>,
    /// Boots per kernel (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub boots: usize,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Print the table only; leave docs/KERNELS.md alone.
    #[arg(long)]
    pub no_write: bool,
}

/// One kernel's measurements.
struct Row {
    kernel: String,
    tier: u64,
    bzimage_bytes: Option<u64>,
    build_seconds: Option<u64>,
    boot_seconds: f64,
    mem_total_kb: u64,
    mem_available_kb: u64,
}

pub fn run(args: &KernelsArgs) -> anyhow::Result<()> {
    if args.boots == 0 || args.kernels.is_empty() {
        bail!("--boots must be at least 1 and at least one --kernel given");
    }
    let bin = cmd::prepare_guest_binaries(&args.kernels)?;
    let mut rows = Vec::new();
    for kernel in &args.kernels {
        rows.push(measure(args, kernel, &bin)?);
    }
    let table = table(&rows, args);
    println!("\n{table}");
    if !args.no_write {
        let doc = cmd::write_between_markers("docs/KERNELS.md", BEGIN, END, &table)?;
        println!("written to {}", doc.display());
    }
    Ok(())
}

fn measure(args: &KernelsArgs, kernel: &str, bin: &Path) -> anyhow::Result<Row> {
    let mut boots = Vec::new();
    let mut totals = Vec::new();
    let mut available = Vec::new();
    let mut tier = 0;
    for boot in 1..=args.boots {
        // Settle first: right after boot the page cache still moves by hundreds of kB.
        let config = VmConfig::shell(
            kernel,
            "sleep 2; sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
            cat /proc/meminfo > /results/meminfo
            guard probe --json > /results/probe.json",
        )
        .memory_mib(args.memory)
        .binary(bin.join("guard"))
        .label(format!("cost-{kernel}-{boot}"));
        let outcome = vm::run(&config)?;
        let VmResult::Completed(done) = &outcome.result else {
            bail!(
                "the {kernel} guest did not complete:\n{}",
                outcome.console_tail()
            );
        };
        let meminfo = done
            .file_str("meminfo")
            .context("no meminfo from the guest")?;
        totals.push(meminfo_kb(&meminfo, "MemTotal").context("the guest's /proc/meminfo")?);
        available.push(meminfo_kb(&meminfo, "MemAvailable").context("the guest's /proc/meminfo")?);
        let probe: Value = serde_json::from_str(&done.file_str("probe.json").unwrap_or_default())
            .context("guard probe --json printed no JSON")?;
        tier = probe["tier"].as_u64().unwrap_or(0);
        boots.push(outcome.boot_time.map_or(f64::NAN, |t| t.as_secs_f64()));
        eprintln!(
            "kernels: {kernel} boot {boot}/{}: tier {tier}, MemTotal {} kB, MemAvailable {} kB, \
             to init {:.2} s",
            args.boots,
            totals.last().unwrap(),
            available.last().unwrap(),
            boots.last().unwrap()
        );
    }
    let manifest = manifest(kernel);
    Ok(Row {
        kernel: kernel.to_string(),
        tier,
        bzimage_bytes: manifest("bzimage_bytes"),
        build_seconds: manifest("build_seconds"),
        boot_seconds: median_f64(&mut boots),
        mem_total_kb: median(&mut totals),
        mem_available_kb: median(&mut available),
    })
}

/// A number from the kernel's setup manifest, if setup recorded it (lean kernels only).
fn manifest(kernel: &str) -> impl Fn(&str) -> Option<u64> {
    let text = paths::kernel_search_dirs()
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(kernel).join(paths::KERNEL_MANIFEST)).ok())
        .unwrap_or_default();
    move |key| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim().parse().ok())
    }
}

/// A `Name:   1234 kB` line's number, as /proc/meminfo and /proc/<pid>/status write them.
pub(crate) fn meminfo_kb(meminfo: &str, field: &str) -> anyhow::Result<u64> {
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} line"))
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn table(rows: &[Row], args: &KernelsArgs) -> String {
    use std::fmt::Write as _;
    let base = &rows[0];
    let mut out = format!(
        "Measured by `cargo xtask kernels` in one run: {} boots per kernel in a {} MiB guest \
         under QEMU TCG, medians; deltas against `{}`.\n\n\
         | kernel | guard tier | bzImage | build from scratch | boot to init | MemTotal | \
         MemAvailable |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        args.boots, args.memory, base.kernel
    );
    let delta = |value: u64, base: u64| {
        if value == base {
            String::new()
        } else {
            format!(" ({:+.2} MiB)", (value as f64 - base as f64) / 1024.0)
        }
    };
    for row in rows {
        let bzimage = row.bzimage_bytes.map_or("-".to_string(), |bytes| {
            let mb = bytes as f64 / 1e6;
            match base.bzimage_bytes {
                Some(b) if b != bytes => {
                    format!("{mb:.2} MB ({:+.2} MB)", (bytes as f64 - b as f64) / 1e6)
                }
                _ => format!("{mb:.2} MB"),
            }
        });
        let build = row.build_seconds.map_or("-".to_string(), |s| {
            format!("{} min {:02} s", s / 60, s % 60)
        });
        let _ = writeln!(
            out,
            "| {} | {} | {bzimage} | {build} | {:.2} s ({:+.2} s) | {} kB{} | {} kB{} |",
            row.kernel,
            row.tier,
            row.boot_seconds,
            row.boot_seconds - base.boot_seconds,
            row.mem_total_kb,
            delta(row.mem_total_kb, base.mem_total_kb),
            row.mem_available_kb,
            delta(row.mem_available_kb, base.mem_available_kb),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_fields_by_name() {
        let text = "MemTotal:      108036 kB\nMemFree: 1 kB\nMemAvailable:   72780 kB\n";
        assert_eq!(meminfo_kb(text, "MemTotal").unwrap(), 108036);
        assert_eq!(meminfo_kb(text, "MemAvailable").unwrap(), 72780);
        assert!(meminfo_kb(text, "Mem").is_err());
    }
}

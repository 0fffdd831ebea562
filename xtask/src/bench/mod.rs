//! `cargo xtask bench`: what the guard costs, as ratios within one run.
//!
//! Interleaved rounds (none, guard, bpftrace, in rotating order) of a fork storm in a
//! registered cgroup, after a warm-up round; medians and spreads; attach time over cold
//! starts; the guard's memory idle and under the storm. The results are written to
//! docs/BENCHMARKS.md by the bench itself, so re-running it refreshes them.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::cmd;

mod bpf_stats;
mod chart;
mod collector;
mod guest;
mod interval;
mod readings;
mod sources;
mod storm;

use readings::*;
use storm::*;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Forks per storm.
    #[arg(long, default_value_t = 10_000)]
    pub forks: u64,
    /// Measured rounds (after one warm-up round). Each round runs every observer once, in
    /// rotating order; the ratios' intervals come from pairing rounds, so more rounds give
    /// narrower intervals (20 rounds take about 3 minutes here).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Cold starts measured for the attach time.
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    /// Where to write the results table (relative to the workspace root).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub output: PathBuf,
    /// Guest kernels for the guest half (the guard's memory in a 128 MiB guest); repeatable.
    #[arg(long = "guest-kernel", default_values_t = ["lean-guard".to_string()])]
    pub guest_kernels: Vec<String>,
    /// Skip the guest half.
    #[arg(long, conflicts_with = "guest_only")]
    pub no_guest: bool,
    /// Only the guest half: print its table, leave the output file alone.
    #[arg(long)]
    pub guest_only: bool,
    /// Rounds of the collector's throughput (durable acknowledgements against acknowledgements
    /// on write, 1 guest and 100 at once); 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub collector_rounds: usize,
    /// Only the collector's throughput: its section of the output file is replaced, the rest
    /// left alone.
    #[arg(long, conflicts_with_all = ["guest_only", "no_guest"])]
    pub collector_only: bool,
    /// Rounds of the kernels-without-tracepoints section (the new tier's sources and audit on
    /// `lean`, guard's interpreted BPF on `lean-guard` against the JIT on `6.12`: three guest
    /// boots, about 15 minutes under TCG); 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub sources_rounds: usize,
    /// Only that section: it is replaced in the output file, the rest left alone.
    #[arg(long, conflicts_with_all = ["guest_only", "no_guest", "collector_only"])]
    pub sources_only: bool,
    /// With --sources-only: use the binaries already in target/release (guard,
    /// guard-sources-bench) instead of running setup and the release build first.
    #[arg(long, requires = "sources_only")]
    pub no_build: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.forks == 0 || args.starts == 0 {
        bail!("--rounds, --forks and --starts must be at least 1");
    }
    if args.sources_only {
        let bin = if args.no_build {
            xtask::paths::target_dir().join("release")
        } else {
            cmd::prepare_guest_binaries(&["lean".to_string(), "lean-guard".to_string()])?
        };
        let section = sources::measure(&bin, args.sources_rounds.max(1))?;
        let doc = cmd::write_between_markers(
            &args.output.to_string_lossy(),
            sources::BEGIN,
            sources::END,
            &section,
        )?;
        println!("{section}\nwritten to {}", doc.display());
        return Ok(());
    }
    if args.collector_only {
        let bin = cmd::prepare_guest_binaries(&[])?;
        let section = collector::measure(&bin, args.collector_rounds.max(1))?;
        let doc = cmd::write_between_markers(
            &args.output.to_string_lossy(),
            collector::BEGIN,
            collector::END,
            &section,
        )?;
        println!("{section}\nwritten to {}", doc.display());
        return Ok(());
    }
    let guest_kernels = if args.no_guest {
        &[][..]
    } else {
        &args.guest_kernels[..]
    };
    let bin = cmd::prepare_guest_binaries(guest_kernels)?;
    // The guest half first: a broken guest fails before the host's minutes of storms.
    let guest_rows = if guest_kernels.is_empty() {
        Vec::new()
    } else {
        // The dependent as its CI check builds it, against the object the release build
        // just embedded.
        let (object, _) = crate::ebpf_object::object_for_checks()?;
        let dependent = crate::dependent::build(&object)?;
        guest::measure(guest_kernels, &bin, &dependent.binary)?
    };
    if args.guest_only {
        println!("{}", guest::table(&guest_rows));
        return Ok(());
    }
    let (guard, stress) = (bin.join("guard"), bin.join("guard-stress"));
    let cgroup = cgroup2_mount()?.join(format!("guard-bench-{}", std::process::id()));
    std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let result = measure(args, &guard, &stress, &cgroup);
    let _ = std::fs::remove_dir(&cgroup);
    let measured = result?;
    let output = xtask::paths::workspace_root().join(&args.output);
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let chart = output.with_file_name(CHART);
    chart::rounds(&chart, args.forks, &measured.rounds)?;
    let mut table = measured.table;
    writeln!(
        table,
        "\n![Forks per second of each round, per observer]({CHART})"
    )?;
    if !guest_rows.is_empty() {
        table.push_str(&guest::table(&guest_rows));
    }
    if args.collector_rounds > 0 {
        let section = collector::measure(&bin, args.collector_rounds)?;
        write!(table, "{}\n{section}{}\n", collector::BEGIN, collector::END)?;
    }
    if args.sources_rounds > 0 {
        let section = sources::measure(&bin, args.sources_rounds)?;
        write!(table, "{}\n{section}{}\n", sources::BEGIN, sources::END)?;
    }
    std::fs::write(&output, &table).with_context(|| format!("writing {}", output.display()))?;
    println!("\n{table}\nwritten to {}", output.display());
    Ok(())
}

/// The chart of the rounds, beside the results file.
const CHART: &str = "bench-rounds.svg";

/// The host half's results: its markdown, and each observer's round wall times for the chart.
struct Measured {
    table: String,
    rounds: Vec<(&'static str, Vec<f64>)>,
}

fn measure(
    args: &BenchArgs,
    guard: &Path,
    stress: &Path,
    cgroup: &Path,
) -> anyhow::Result<Measured> {
    let observers = [
        Observer::None,
        Observer::Guard,
        Observer::GuardLogged,
        Observer::Bpftrace,
    ];
    let mut walls: [Vec<f64>; 4] = Default::default();
    let _bpf_stats = bpf_stats::StatsEnabled::enable()?;
    let mut bpf_totals: [BTreeMap<String, bpf_stats::ProgramStats>; 4] = Default::default();
    // Each round's BPF nanoseconds per fork, per observer: paired rounds give the interval.
    let mut bpf_per_round: [Vec<f64>; 4] = Default::default();
    let mut logged_losses = Vec::new();
    let mut guard_peaks = Vec::new();
    let mut miscounts = Vec::new();
    // Progress on a terminal; the round lines below stay (they are the bench's record).
    let mut progress = xtask::progress::Progress::new(
        "bench: rounds",
        xtask::progress::Total::Count(((args.rounds + 1) * observers.len()) as u64),
    );
    let mut storms_done = 0u64;
    for round in 0..=args.rounds {
        let warmup = round == 0;
        // Rotate the order so no observer always runs first (caches, frequency, noise).
        for offset in 0..observers.len() {
            let index = (offset + round) % observers.len();
            let observer = observers[index];
            progress.update(storms_done, &format!("round {round}, {}", observer.name()));
            let result = storm(observer, guard, stress, cgroup, args.forks)?;
            storms_done += 1;
            let rate = args.forks as f64 / result.wall.as_secs_f64();
            println!(
                "round {round}{} {:<9} {:>8.0} forks/s{}",
                if warmup { " (warm-up)" } else { "" },
                observer.name(),
                rate,
                result
                    .counted
                    .map_or(String::new(), |n| format!("  counted {n}"))
            );
            if warmup {
                continue;
            }
            walls[index].push(result.wall.as_secs_f64());
            bpf_stats::add(&mut bpf_totals[index], &result.bpf);
            let storm_ns: u64 = result.bpf.values().map(|stats| stats.run_time_ns).sum();
            bpf_per_round[index].push(storm_ns as f64 / args.forks as f64);
            if let Some(counted) = result.counted.filter(|&n| n != args.forks) {
                miscounts.push(format!(
                    "{} counted {counted} of {}",
                    observer.name(),
                    args.forks
                ));
            }
            if observer == Observer::Guard {
                guard_peaks.extend(result.peak_kib);
            }
            if observer == Observer::GuardLogged {
                logged_losses.extend(result.lost);
            }
        }
    }
    progress.clear();

    // Attach time: process start to every program attached and the cgroup registered.
    let mut attach = Vec::new();
    let mut idle_rss = Vec::new();
    let mut map_kib = 0;
    for _ in 0..args.starts {
        let started = Instant::now();
        let mut running = spawn_ready(
            Command::new(guard)
                .args(["watch", "--cgroup"])
                .arg(format!("bench={}", cgroup.display())),
            "guard: watching",
            Duration::from_secs(60),
        )?;
        attach.push(started.elapsed().as_secs_f64() * 1000.0);
        idle_rss.push(rss_kib(running.child.id()).1 as f64);
        map_kib = bpf_map_memlock_kib(running.child.id());
        interrupt(&mut running)?;
    }

    // The pipeline's userspace ceiling: synthetic records through decode and the log.
    let pipeline = |fsync: &str| -> anyhow::Result<String> {
        let dir = std::env::temp_dir().join(format!("guard-bench-pipeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let output = Command::new(guard.with_file_name("guard-pipeline"))
            .arg("1000000")
            .arg(&dir)
            .arg(fsync)
            .output()
            .context("running guard-pipeline")?;
        let _ = std::fs::remove_dir_all(&dir);
        let line = String::from_utf8_lossy(&output.stdout).to_string();
        let value: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("guard-pipeline said {line:?}"))?;
        Ok(format!(
            "{:.0}",
            value["events_per_second"].as_f64().unwrap_or(0.0)
        ))
    };
    let micro: serde_json::Value = {
        let output = Command::new(guard.with_file_name("guard-pipeline"))
            .args(["--micro", "2000000"])
            .output()
            .context("running guard-pipeline --micro")?;
        serde_json::from_slice(&output.stdout).context("guard-pipeline --micro output")?
    };
    let synthetic_never = pipeline("never")?;
    let synthetic_interval = pipeline("interval=100")?;

    // The cost of registering one container: attach with many cgroups versus with one.
    const REGISTERED: usize = 100;
    let parent = cgroup.parent().context("the bench cgroup has a parent")?;
    let many: Vec<PathBuf> = (0..REGISTERED)
        .map(|index| parent.join(format!("guard-bench-reg-{}-{index}", std::process::id())))
        .collect();
    for dir in &many {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut with_many = Vec::new();
    for _ in 0..args.starts.min(5) {
        let mut command = Command::new(guard);
        command.arg("watch");
        for (index, dir) in many.iter().enumerate() {
            command
                .arg("--cgroup")
                .arg(format!("r{index}={}", dir.display()));
        }
        let started = Instant::now();
        let mut running = spawn_ready(
            &mut command,
            &format!("guard: watching r{} ", REGISTERED - 1),
            Duration::from_secs(60),
        )?;
        with_many.push(started.elapsed().as_secs_f64() * 1000.0);
        interrupt(&mut running)?;
    }
    for dir in &many {
        let _ = std::fs::remove_dir(dir);
    }
    let attach_median = median(&mut attach.clone());
    let per_registration_ms =
        (median(&mut with_many) - attach_median).max(0.0) / (REGISTERED - 1) as f64;

    // Medians of copies: `walls` keeps round order, which the paired intervals need.
    let mut medians = [0.0; 4];
    for (index, values) in walls.iter().enumerate() {
        medians[index] = median(&mut values.clone());
    }
    let versus_none = |index: usize| interval::paired_ratio(&walls[index], &walls[0]);
    let rate = |index: usize| args.forks as f64 / medians[index];
    let mut table = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(table, "# Benchmarks\n")?;
    writeln!(
        table,
        "Written by `cargo xtask bench` on {date}: kernel {}, {cpus} CPUs. Fork storm: \
         {} forks + exit + waitpid in a registered cgroup, {} interleaved rounds after a \
         warm-up (each round runs every observer once, in rotating order); medians, with \
         min–max in brackets. A ratio against no observer is the mean over rounds of that \
         round's ratio, with its 95% bootstrap interval (10,000 resamples of the rounds); this \
         machine has no hardware counters for `perf stat` (instructions: not supported), so \
         wall time it is. Single figures on these noisy machines mean little.\n",
        kernel.trim(),
        args.forks,
        args.rounds
    )?;
    writeln!(
        table,
        "| observer | forks/s (median) | wall s [min–max] | wall time vs none [95% interval] |"
    )?;
    writeln!(table, "| --- | --- | --- | --- |")?;
    for (index, observer) in observers.iter().enumerate() {
        let (min, max) = spread(&walls[index]);
        writeln!(
            table,
            "| {} | {:.0} | {:.3} [{:.3}–{:.3}] | {} |",
            observer.name(),
            rate(index),
            medians[index],
            min,
            max,
            versus_none(index).map_or("–".to_string(), |ratio| ratio.to_string())
        )?;
    }
    let (attach_min, attach_max) = spread(&attach);
    let mut peaks: Vec<f64> = guard_peaks.iter().map(|&kib| kib as f64).collect();
    writeln!(table)?;
    writeln!(table, "| measure | value |")?;
    writeln!(table, "| --- | --- |")?;
    let show =
        |ratio: Option<interval::Interval>| ratio.map_or("–".to_string(), |r| r.to_string());
    writeln!(
        table,
        "| guard / none (fork-storm wall time, mean of paired rounds [95% interval]) | {} |",
        show(versus_none(1))
    )?;
    writeln!(
        table,
        "| guard / bpftrace (fork-storm wall time, paired rounds) | {} |",
        show(interval::paired_ratio(&walls[1], &walls[3]))
    )?;
    writeln!(
        table,
        "| attach: start to all programs attached and one cgroup registered (median of {}) | {:.1} ms [{:.1}–{:.1}] |",
        args.starts,
        median(&mut attach),
        attach_min,
        attach_max
    )?;
    writeln!(
        table,
        "| pipeline, synthetic (1,000,000 fork records → decode → hash-chained log), fsync never | {synthetic_never} events/s |"
    )?;
    writeln!(
        table,
        "| pipeline, synthetic, fsync interval=100 | {synthetic_interval} events/s |"
    )?;
    writeln!(
        table,
        "| micro: decode one ring-buffer record / SHA-256 of a 330-byte log line | {} ns / {} ns |",
        micro["decode_ns"], micro["sha256_330_bytes_ns"]
    )?;
    writeln!(
        table,
        "| BPF map memory (memlock of guard's maps, ring buffer included) | {:.1} MiB |",
        map_kib as f64 / 1024.0
    )?;
    writeln!(
        table,
        "| pipeline fed by the kernel (guard+log under the storm) | {:.0} events/s, {} lost over {} runs |",
        rate(2),
        logged_losses.iter().sum::<u64>(),
        logged_losses.len()
    )?;
    writeln!(
        table,
        "| registering one container (attach with {REGISTERED} cgroups vs 1, per cgroup) | {:.3} ms |",
        per_registration_ms
    )?;
    writeln!(
        table,
        "| guard RSS idle (median) | {:.1} MiB |",
        median(&mut idle_rss) / 1024.0
    )?;
    let megabytes = |path: &Path| {
        std::fs::metadata(path).map_or("–".to_string(), |meta| {
            format!("{:.1} MB", meta.len() as f64 / 1e6)
        })
    };
    writeln!(
        table,
        "| binaries (release profile: fat LTO, one codegen unit, symbols stripped): guard / example agent | {} / {} |",
        megabytes(guard),
        megabytes(&guard.with_file_name("examples").join("agent"))
    )?;
    if !peaks.is_empty() {
        writeln!(
            table,
            "| guard peak RSS under the storm (median) | {:.1} MiB |",
            median(&mut peaks) / 1024.0
        )?;
    }
    let measured_forks = args.forks * args.rounds as u64;
    table.push_str(&bpf_stats::table(
        &[("guard", &bpf_totals[1]), ("bpftrace", &bpf_totals[3])],
        measured_forks,
        medians[0] / args.forks as f64 * 1e9,
    ));
    writeln!(
        table,
        "\nguard / bpftrace, BPF time per fork, mean of paired rounds [95% interval]: {}",
        show(interval::paired_ratio(&bpf_per_round[1], &bpf_per_round[3]))
    )?;
    writeln!(table)?;
    writeln!(table, "| measure | value |")?;
    writeln!(table, "| --- | --- |")?;
    writeln!(
        table,
        "| counting errors | {} |",
        if miscounts.is_empty() {
            "none: guard and bpftrace counted every fork".to_string()
        } else {
            miscounts.join("; ")
        }
    )?;
    writeln!(
        table,
        "\nThe release profile was chosen by measurement (2026-12-05, this machine): with symbols \
         stripped only, guard was 13.9 MB and its idle RSS 9.5 MiB; fat LTO and one codegen \
         unit make them 11.4 MB and 8.8 MiB (the example agent 10.1 → 8.5 MB), for about a \
         minute more of release build on 2 cores (182 → 236 s from scratch in an earlier \
         measurement, 249 s today on a busier machine). In a micro-VM the binary lives in the \
         initramfs, in RAM."
    )?;
    let rounds = observers
        .iter()
        .zip(walls)
        .map(|(observer, walls)| (observer.name(), walls))
        .collect();
    Ok(Measured { table, rounds })
}

//! Writes a stream of synthetic events to a forensic log, for the crash test and throughput
//! measurements. With --print-seq it prints each record's seq once `append` has returned, so a
//! test knows which records the writer considered written (durable with --fsync always).
//!
//! guard-log-writer DIR [--count N] [--fsync always|never|interval=MS] [--rotate-bytes B]
//!     [--checkpoint-every N] [--test-split-writes B] [--containers N] [--print-seq] [--repair]
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::time::Instant;

use anyhow::{Context as _, bail};
use guard::forensic::serde_json::json;
use guard::forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: guard-log-writer DIR [options]")?;
    let mut count = u64::MAX;
    let mut containers = 3u64;
    let mut print_seq = false;
    let mut options = LogOptions {
        fsync: FsyncPolicy::Always,
        rotate_bytes: None,
        checkpoint_every: 100,
        boot_id: None,
        repair_torn_tail: false,
        test_split_writes: None,
        ..LogOptions::default()
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => count = value()?.parse()?,
            "--fsync" => options.fsync = value()?.parse()?,
            "--rotate-bytes" => options.rotate_bytes = Some(value()?.parse()?),
            "--checkpoint-every" => options.checkpoint_every = value()?.parse()?,
            "--test-split-writes" => {
                options.test_split_writes = Some(value()?.parse::<NonZeroUsize>()?)
            }
            "--containers" => containers = value()?.parse()?,
            "--print-seq" => print_seq = true,
            "--repair" => options.repair_torn_tail = true,
            other => bail!("unknown option {other}"),
        }
    }
    let limits = json!({"memory_max": 64 << 20, "pids_max": 64});
    let mut writer = LogWriter::create(&dir, options, &StartInfo::new(1, limits))?;
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    for i in 0..count {
        let container = format!("c{}", i % containers.max(1));
        let payload = json!({"i": i, "pid": 1000 + i % 5000, "comm": "stress", "ok": i % 7 != 0});
        let seq = writer.append("fork", Some(&container), &payload)?;
        if print_seq {
            writeln!(stdout, "{seq}")?;
        }
    }
    writer.close()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {count} records in {secs:.3} s: {:.0} records/s",
        count as f64 / secs
    );
    Ok(())
}

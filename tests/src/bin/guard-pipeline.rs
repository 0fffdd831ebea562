//! guard-pipeline: the userspace ceiling of the event pipeline, without the kernel. Synthetic
//! fork records go through the same decode → attribution → hash-chained log path as live ones
//! (the ring-buffer decoder, the event log's `append_event`, `LogWriter` with the chosen
//! fsync policy).
//!
//! usage: guard-pipeline EVENTS LOG_DIR [FSYNC]   (FSYNC: always | interval=<ms> | never;
//! default interval=100). Prints one JSON line: events, seconds, events per second.
//!
//!        guard-pipeline --micro EVENTS   times the stages alone (decode; SHA-256 of a
//!        log-sized line) and prints one JSON line of ns per event for each.
use std::{process::ExitCode, time::Instant};

use guard::{
    forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo},
    internals::{append_event, attributed, decode},
};
use guard_common::{EventHeader, EventKind, ForkEvent};
use sha2::Digest as _;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--micro") {
        return match args.get(1).map(|count| count.parse::<u64>()) {
            Some(Ok(count)) => {
                println!("{}", micro(count));
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("usage: guard-pipeline --micro EVENTS");
                ExitCode::from(2)
            }
        };
    }
    let (Some(count), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: guard-pipeline EVENTS LOG_DIR [always|interval=<ms>|never]");
        return ExitCode::from(2);
    };
    let Ok(count) = count.parse::<u64>() else {
        eprintln!("guard-pipeline: EVENTS must be a whole number, got {count:?}");
        return ExitCode::from(2);
    };
    let policy = args.get(2).map_or("interval=100", String::as_str);
    let fsync: FsyncPolicy = match policy.parse() {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("guard-pipeline: {error}");
            return ExitCode::from(2);
        }
    };
    match run(count, dir, fsync) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("guard-pipeline: {error}");
            ExitCode::FAILURE
        }
    }
}

fn fork_record(seq: u64) -> ForkEvent {
    ForkEvent {
        header: EventHeader {
            kind: EventKind::Fork as u16,
            cpu: 0,
            seq,
            ktime_ns: seq * 1000,
            cgroup_id: 4242,
            ..Default::default()
        },
        parent_pid: 100,
        child_pid: 100 + seq as u32,
    }
}

fn as_bytes(record: &ForkEvent) -> &[u8] {
    // SAFETY: viewing a repr(C) integer struct as its bytes, as the ring buffer hands them.
    unsafe {
        std::slice::from_raw_parts(
            (record as *const ForkEvent).cast::<u8>(),
            size_of::<ForkEvent>(),
        )
    }
}

/// ns per event of each stage alone: decoding a ring-buffer record, hashing a log line.
fn micro(count: u64) -> String {
    let records: Vec<ForkEvent> = (1..=count.min(100_000)).map(fork_record).collect();
    let started = Instant::now();
    let mut decoded = 0u64;
    for index in 0..count {
        let record = &records[(index as usize) % records.len()];
        decoded += decode(as_bytes(record)).map_or(0, |event| event.ktime_ns & 1);
    }
    let decode_ns = started.elapsed().as_nanos() as f64 / count as f64;
    // A typical fork record line is ~330 bytes.
    let line = vec![b'x'; 330];
    let started = Instant::now();
    let mut folded = 0u8;
    for _ in 0..count {
        folded ^= sha2::Sha256::digest(std::hint::black_box(&line))[0];
    }
    let hash_ns = started.elapsed().as_nanos() as f64 / count as f64;
    format!(
        "{{\"events\":{count},\"decode_ns\":{decode_ns:.1},\"sha256_330_bytes_ns\":{hash_ns:.1},\"sink\":{}}}",
        decoded as u8 ^ folded
    )
}

fn run(count: u64, dir: &str, fsync: FsyncPolicy) -> Result<String, Box<dyn std::error::Error>> {
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(1, serde_json::Value::Null))?;
    let container = Some("bench".to_string());
    let started = Instant::now();
    for seq in 1..=count {
        let record = fork_record(seq);
        let event = attributed(container.clone(), decode(as_bytes(&record))?);
        append_event(&mut writer, &event)?;
    }
    writer.close()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"events\":{count},\"seconds\":{seconds:.3},\"events_per_second\":{:.0}}}",
        count as f64 / seconds
    ))
}

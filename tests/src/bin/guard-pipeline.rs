//! guard-pipeline: the userspace ceiling of the event pipeline, without the kernel. Synthetic
//! fork records go through the same decode → attribution → hash-chained log path as live ones
//! (`events::decode`, `event_log::append_event`, `LogWriter` with the chosen fsync policy).
//!
//! usage: guard-pipeline EVENTS LOG_DIR [FSYNC]   (FSYNC: always | interval=<ms> | never;
//! default interval=100). Prints one JSON line: events, seconds, events per second.
use std::{process::ExitCode, time::Instant};

use guard::{
    GuardEvent, event_log,
    events::decode,
    forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo},
};
use guard_common::{EventHeader, EventKind, ForkEvent};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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

fn run(count: u64, dir: &str, fsync: FsyncPolicy) -> Result<String, Box<dyn std::error::Error>> {
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(1, serde_json::Value::Null))?;
    let container = Some("bench".to_string());
    let started = Instant::now();
    for seq in 1..=count {
        let record = ForkEvent {
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
        };
        // SAFETY: viewing a repr(C) integer struct as its bytes, as the ring buffer hands them.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const ForkEvent).cast::<u8>(),
                size_of::<ForkEvent>(),
            )
        };
        let event = GuardEvent {
            container: container.clone(),
            event: decode(bytes)?,
        };
        event_log::append_event(&mut writer, &event)?;
    }
    writer.close()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"events\":{count},\"seconds\":{seconds:.3},\"events_per_second\":{:.0}}}",
        count as f64 / seconds
    ))
}

//! guard-stream-bench: the collector's throughput with durable acknowledgements (group commit:
//! a record is acknowledged once an fdatasync has it on disk) against acknowledgements as soon
//! as a record is written, in the same run: GUESTS senders in this process, each with its key
//! and its socket, streaming RECORDS pre-written records at once into a collector storing
//! under DIR (a real disk: a tmpfs would make fdatasync free).
//!
//! usage: guard-stream-bench GUESTS RECORDS ROUNDS DIR
//!
//! Each round runs both modes, in alternating order. Prints one JSON line: the guests, the
//! records per guest, and each mode's wall seconds per round.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use guard::forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use guard::stream::{
    Acks, Address, Auth, Collector, CollectorOptions, Endpoint, Sender, SenderOptions, StreamKey,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = args.iter().take(3).filter_map(|a| a.parse().ok()).collect();
    let (Some(dir), &[guests, records, rounds]) = (args.get(3), &numbers[..]) else {
        eprintln!("usage: guard-stream-bench GUESTS RECORDS ROUNDS DIR");
        return ExitCode::from(2);
    };
    match bench(guests, records, rounds, Path::new(dir)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("guard-stream-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bench(guests: usize, records: usize, rounds: usize, dir: &Path) -> Result<String, String> {
    let _ = std::fs::remove_dir_all(dir);
    let logs: Vec<PathBuf> = (0..guests)
        .map(|index| write_log(&dir.join(format!("logs/{index}")), records))
        .collect::<Result<_, _>>()?;
    let mut durable = Vec::new();
    let mut written = Vec::new();
    for round in 0..rounds {
        for first in [round % 2 == 0, round % 2 == 1] {
            let (acks, times) = if first {
                (
                    Acks::Durable {
                        interval: Duration::from_millis(5),
                    },
                    &mut durable,
                )
            } else {
                (Acks::Written, &mut written)
            };
            let store = dir.join(format!(
                "round-{round}-{}",
                if first { "durable" } else { "written" }
            ));
            times.push(run(&logs, acks, &store)?);
            let _ = std::fs::remove_dir_all(&store);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(json!({
        "guests": guests,
        "records_per_guest": records,
        "durable_s": durable,
        "written_s": written,
    })
    .to_string())
}

fn write_log(dir: &Path, records: usize) -> Result<PathBuf, String> {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("bench".into()),
        rotate_bytes: Some(1 << 20),
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(1, json!(null)))
        .map_err(|e| e.to_string())?;
    for i in 0..records {
        writer
            .append(
                "fork",
                Some("tenant"),
                &json!({"child_pid": i, "parent_pid": 1}),
            )
            .map_err(|e| e.to_string())?;
    }
    writer.close().map_err(|e| e.to_string())?;
    Ok(dir.to_path_buf())
}

/// Every log streamed at once into a fresh collector with `acks`: the wall seconds until the
/// host has acknowledged the last record of every log.
fn run(logs: &[PathBuf], acks: Acks, store: &Path) -> Result<f64, String> {
    let mut options = CollectorOptions::new(store.join("copies"));
    options.acks = acks;
    let collector = Collector::start(options, |_| {}).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(store.join("sockets")).map_err(|e| e.to_string())?;
    let mut senders = Vec::new();
    let mut endpoints = Vec::new();
    for (index, _) in logs.iter().enumerate() {
        let key = StreamKey::generate().map_err(|e| e.to_string())?;
        let name = format!("vm-{index}");
        let path = store.join(format!("sockets/{index}"));
        collector
            .listen(Endpoint {
                name: name.clone(),
                path: path.clone(),
                auth: Auth::Key(key.clone()),
            })
            .map_err(|e| e.to_string())?;
        endpoints.push(SenderOptions::new(Address::Unix(path), name).with_key(key));
    }
    // Every log holds the same records: a start, the events, a stop.
    let expected = guard::forensic::verify(&logs[0])
        .map_err(|e| e.to_string())?
        .records;
    let started = Instant::now();
    for (log, options) in logs.iter().zip(endpoints) {
        senders.push(Sender::start(log, options).map_err(|e| e.to_string())?);
    }
    // Done when the host has acknowledged every record of every log (the senders' own
    // finishing is not the collector's time).
    let mut waiting: Vec<&Sender> = senders.iter().collect();
    while !waiting.is_empty() {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("the collector did not acknowledge every record within 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
        waiting.retain(|sender| sender.stats().acked_next_seq < expected);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for sender in senders {
        let stats = sender.finish(Duration::from_secs(60));
        if !stats.delivered {
            return Err(format!("a sender did not deliver: {stats:?}"));
        }
    }
    Ok(elapsed)
}

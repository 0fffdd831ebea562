//! `guard log timeline` on a log written record by record: the picture is drawn (SVG and PNG,
//! of the size the panels need) and the data it plots (`--data`) is exactly the records'.
use std::process::Command;

use crate::forensic_log::{TempDir, guard_bin};
use guard::forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use serde_json::Value;

#[test]
fn a_timeline_plots_exactly_the_logs_records() {
    let scratch = TempDir::new("timeline");
    let log = scratch.0.join("log");
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(&log, options, &StartInfo::new(2, json!(null))).unwrap();
    for i in 0..40u64 {
        writer
            .append(
                "reclaim",
                Some("web"),
                &json!({"duration_ns": 1_000_000 + i}),
            )
            .unwrap();
        if i % 10 == 9 {
            writer
                .append(
                    "oom_victim",
                    Some("web"),
                    &json!({"victim_pid": 100 + i, "comm": "bomb"}),
                )
                .unwrap();
            writer
                .append(
                    "kernel_file",
                    Some("web"),
                    &json!({"file": "memory.events", "counts": {"oom": i / 10 + 1, "oom_kill": i / 10 + 1}}),
                )
                .unwrap();
        }
        writer
            .append("fork_denied", Some("db"), &json!({}))
            .unwrap();
    }
    writer
        .append(
            "wave",
            Some("web"),
            &json!({"wave": "memory_bomb", "elapsed_ms": 1}),
        )
        .unwrap();
    writer.close().unwrap();

    let data = scratch.0.join("plotted.json");
    for picture in ["incident.svg", "incident.png"] {
        let out = scratch.0.join(picture);
        let run = Command::new(guard_bin())
            .args(["log", "timeline"])
            .arg(&log)
            .arg("--out")
            .arg(&out)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let bytes = std::fs::read(&out).unwrap();
        if picture.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // Width, then two panels' height and the title's, big-endian in IHDR.
            let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
            let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
            assert_eq!((width, height), (1400, 40 + 2 * 420));
        } else {
            let svg = String::from_utf8(bytes).unwrap();
            for text in ["container web", "container db", "memory_bomb", "bomb 109"] {
                assert!(svg.contains(text), "{text} missing from the SVG");
            }
        }
    }
    let plotted: Value = serde_json::from_slice(&std::fs::read(&data).unwrap()).unwrap();
    let web = &plotted["containers"]["web"];
    assert_eq!(web["oom_kills"].as_array().unwrap().len(), 4);
    let oom_kill = web["memory_events"]["oom_kill"].as_array().unwrap();
    assert_eq!(oom_kill.last().unwrap()["value"], 4.0);
    let stall: f64 = web["reclaim_stall_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    let written: f64 = (0..40u64).map(|i| (1_000_000 + i) as f64 / 1e6).sum();
    assert!((stall - written).abs() < 1e-6, "{stall} vs {written}");
    let db = &plotted["containers"]["db"]["fork_denials"];
    assert_eq!(db.as_array().unwrap().len(), 40);
    assert_eq!(db.as_array().unwrap().last().unwrap()["value"], 40.0);

    // Bad input: an unknown extension, an unknown container, a log that does not verify.
    let refuse = |args: &[&str], text: &str| {
        let run = Command::new(guard_bin())
            .args(["log", "timeline"])
            .arg(&log)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(text), "{stderr}");
    };
    refuse(&["--out", "x.gif"], ".svg or .png");
    refuse(
        &["--out", "x.svg", "--container", "nope"],
        "--container nope",
    );
    let file = log.join("guard-000000.jsonl");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("bomb", "bomx", 1);
    std::fs::write(&file, text).unwrap();
    refuse(&["--out", "x.svg"], "does not verify");
}

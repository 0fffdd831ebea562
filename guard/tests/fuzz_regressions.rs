//! Replays the fuzz targets' committed inputs through the same harnesses cargo-fuzz runs
//! (guard/fuzz/harness), on stable and without libFuzzer: the seeds, and every input that once
//! crashed a target (`guard/fuzz/regressions/<target>/`), so a fixed bug stays fixed.
use std::path::{Path, PathBuf};

#[path = "../fuzz/harness/mod.rs"]
mod harness;

/// Every file of `guard/fuzz/<kind>/<target>/` (none when the folder does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `harness` on every seed and regression input of `target`, naming the input that fails.
fn replay(target: &str, harness: fn(&[u8])) {
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "no seeds for fuzz target {target}");
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
    }
}

#[test]
fn forensic_log() {
    replay("forensic_log", harness::forensic_log::run);
}

#[test]
fn meminfo() {
    replay("meminfo", harness::meminfo::run);
}

#[test]
fn tracepoint_format() {
    replay("tracepoint_format", harness::tracepoint_format::run);
}

#[test]
fn event_decode() {
    replay("event_decode", harness::event_decode::run);
}

#[test]
fn container_id() {
    replay("container_id", harness::container_id::run);
}

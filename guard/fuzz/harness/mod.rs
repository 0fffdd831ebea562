//! Fuzz harnesses: one module per cargo-fuzz target, each with `run(&[u8])` that exercises the
//! code under test and asserts its properties (a violated property panics, as a crash does).
//!
//! Two users include these files with `#[path]`: the targets in `fuzz_targets/` (each only
//! its own module) and `guard/tests/fuzz_regressions.rs` (all of them), which replays the
//! committed seeds and crashers so a fixed bug stays fixed without nightly or libFuzzer.
pub mod container_id;
pub mod event_decode;
pub mod forensic_log;
pub mod meminfo;
pub mod tracepoint_format;

//! cargo-fuzz target; the checks live in harness/tracepoint_format.rs, shared with guard/tests/fuzz_regressions.rs.
#![no_main]

#[path = "../harness/tracepoint_format.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));

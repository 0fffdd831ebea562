//! cargo-fuzz target; the checks live in harness/container_id.rs, shared with guard/tests/fuzz_regressions.rs.
#![no_main]

#[path = "../harness/container_id.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));

//! cargo-fuzz target; the checks live in harness/event_decode.rs, shared with guard/tests/fuzz_regressions.rs.
#![no_main]

#[path = "../harness/event_decode.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));

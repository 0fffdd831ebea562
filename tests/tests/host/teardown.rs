//! A guard's end: `shutdown` returns once its programs, maps and perf events are gone from
//! the process; a drop returns at once and they go soon after, on a thread of its own.
use serde_json::Value;

use guard_tests::host::root_or_skip;

const START: &str = env!("CARGO_BIN_EXE_guard-start");

/// `guard-start 1 ENDING` (as root: the programs load), its last line as JSON.
fn end_with(ending: &str) -> Value {
    let output = std::process::Command::new(START)
        .args(["1", ending])
        .output()
        .expect("guard-start runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

#[test]
fn shutdown_returns_once_the_programs_are_gone() {
    if !root_or_skip("shutdown_returns_once_the_programs_are_gone") {
        return;
    }
    let ended = end_with("shutdown");
    assert!(ended["before"].as_u64().unwrap() > 0, "{ended}");
    assert_eq!(ended["after"], 0, "{ended}");
}

#[test]
fn a_dropped_guard_is_torn_down_off_the_callers_thread() {
    if !root_or_skip("a_dropped_guard_is_torn_down_off_the_callers_thread") {
        return;
    }
    let ended = end_with("drop");
    assert!(ended["before"].as_u64().unwrap() > 0, "{ended}");
    assert_eq!(
        ended["after"], 0,
        "the teardown thread never finished: {ended}"
    );
    eprintln!("drop: {ended}");
}

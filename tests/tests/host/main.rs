//! guard's host-kernel integration tests, in one binary: a mod per signal where a test is
//! about one (fork, attach, fork_denied, throttle), and per theme otherwise (loss, the
//! reader's faults, bad input, the forensic log, the log stream, the metrics).
//!
//! Requirements: the BPF tests load programs and create cgroups in the host's cgroup v2
//! hierarchy, so they need root; a non-root run skips them with a printed reason outside CI
//! and fails under CI (`CI=true`). The forensic log tests need python3 and no root.
mod attach;
mod bad_input;
mod forensic_log;
mod fork;
mod fork_denied;
mod log_budget;
mod log_outage;
mod loss;
mod metrics;
mod privilege;
mod reader_fault;
mod sources;
mod stream;
mod subscription;
mod summaries;
mod teardown;
mod throttle;
mod tier1;
mod timeline;

/// The stress workload the BPF tests run in their cgroups (built by cargo for these tests:
/// the library cannot name it, as `CARGO_BIN_EXE_*` exists only for test targets).
const STRESS: &str = env!("CARGO_BIN_EXE_guard-stress");

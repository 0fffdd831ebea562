//! guard-start: starts a guard as an agent does and says how it went: for the tests of a start
//! without privilege (run under `setpriv` as another user, with chosen capabilities), and of
//! the guard's end (its programs gone from this process once `shutdown` returns, or soon after
//! a drop that returned at once).
//!
//! usage: guard-start MIN_TIER [shutdown|drop]. Prints `tier N` and the privilege diagnosis
//! and the capability notes as JSON, or `error: …` (exit 1); with an ending, then a JSON line of the BPF descriptors this
//! process holds before and after it. guard's warnings go to stderr.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use guard::{Guard, GuardOptions, Tier};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let min_tier = args
        .first()
        .and_then(|tier| tier.parse::<i64>().ok())
        .and_then(|tier| Tier::try_from(tier).ok());
    let (Some(min_tier), ending) = (min_tier, args.get(1).map(String::as_str)) else {
        eprintln!("usage: guard-start MIN_TIER (0, 1 or 2) [shutdown|drop]");
        return ExitCode::from(2);
    };
    let mut options = GuardOptions::default();
    options.min_tier = min_tier;
    let guard = match Guard::start(options).await {
        Ok(guard) => guard,
        Err(error) => {
            println!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("tier {}", u8::from(guard.tier()));
    let capabilities = guard.capabilities();
    println!(
        "{}",
        serde_json::json!({"privilege": capabilities.privilege, "notes": capabilities.notes})
    );
    let before = bpf_descriptors();
    let started = Instant::now();
    let (returned_ms, after) = match ending {
        None => return ExitCode::SUCCESS,
        Some("shutdown") => {
            guard.shutdown().await;
            (started.elapsed().as_millis(), bpf_descriptors())
        }
        Some("drop") => {
            drop(guard);
            let returned = started.elapsed().as_millis();
            // The teardown runs on a thread of its own, and the runtime drops the aborted
            // tasks (their map descriptors) as it goes on: wait for both, boundedly.
            while bpf_descriptors() > 0 && started.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (returned, bpf_descriptors())
        }
        Some(other) => {
            eprintln!("unknown ending {other:?}: shutdown or drop");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "before": before,
            "after": after,
            "returned_ms": returned_ms,
            "gone_ms": started.elapsed().as_millis(),
        })
    );
    ExitCode::SUCCESS
}

/// This process's descriptors of BPF programs, maps and the perf events that attach them.
fn bpf_descriptors() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.starts_with("anon_inode:bpf") || target == "anon_inode:[perf_event]"
        })
        .count()
}

//! guard-start: starts a guard as an agent does and says how it went, for the tests of a start
//! without privilege (run under `setpriv` as another user, with chosen capabilities).
//!
//! usage: guard-start MIN_TIER. Prints `tier N` and the privilege diagnosis as JSON, or
//! `error: …` (exit 1); guard's warnings go to stderr.
use std::process::ExitCode;

use guard::{Guard, GuardOptions, Tier};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .init();
    let Some(min_tier) = std::env::args()
        .nth(1)
        .and_then(|tier| tier.parse::<i64>().ok())
        .and_then(|tier| Tier::try_from(tier).ok())
    else {
        eprintln!("usage: guard-start MIN_TIER (0, 1 or 2)");
        return ExitCode::from(2);
    };
    let options = GuardOptions {
        min_tier,
        ..GuardOptions::default()
    };
    match Guard::start(options).await {
        Ok(guard) => {
            println!("tier {}", u8::from(guard.tier()));
            println!(
                "{}",
                serde_json::to_string(&guard.capabilities().privilege).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

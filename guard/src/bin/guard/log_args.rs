//! The `--log DIR` / `--fsync` options shared by the commands that write a forensic log.
use std::path::PathBuf;

use anyhow::Context;
use guard::{
    Guard,
    forensic::{FsyncPolicy, LogOptions},
    sinks::event_log::EventLog,
};

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Write the hash-chained forensic log (every event, the limits, the final report) into
    /// this directory; keep it outside every container's root filesystem.
    #[arg(long = "log", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When the log reaches the disk: `always` (every record), `interval=<ms>`, or `never`.
    /// Default: interval=100.
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,
}

impl LogArgs {
    /// Starts the log if one was asked for.
    pub fn start(
        &self,
        guard: &Guard,
        limits: serde_json::Value,
    ) -> anyhow::Result<Option<EventLog>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let options = LogOptions {
            fsync: self.fsync.unwrap_or(LogOptions::default().fsync),
            ..LogOptions::default()
        };
        EventLog::start(guard, dir, options, limits)
            .map(Some)
            .with_context(|| format!("starting the forensic log in {}", dir.display()))
    }
}

/// Records the final reports, closes the log and says where it is and its head.
pub async fn finish(log: Option<EventLog>, reports: &[guard::Report]) -> anyhow::Result<()> {
    let Some(log) = log else {
        return Ok(());
    };
    for report in reports {
        log.record("report", Some(&report.container), report)
            .await?;
    }
    let head = log.close().await?;
    eprintln!(
        "guard: forensic log in {}: {} records, head {}",
        head.file.display(),
        head.next_seq,
        head.prev
    );
    Ok(())
}

//! The `--log DIR` / `--fsync` / `--stream ADDR` options shared by the commands that write a
//! forensic log.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use guard::{
    Guard,
    forensic::{FsyncPolicy, LogOptions},
    sinks::event_log::EventLog,
    stream::{Address, Sender, SenderOptions},
};

/// How long a finishing stream waits for the host to acknowledge the log's last records.
const STREAM_FINISH: Duration = Duration::from_secs(10);

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
    #[command(flatten)]
    pub stream: StreamArgs,
}

/// `--stream ADDR` / `--stream-name NAME`: ship the forensic log to a host collector as it is
/// written (`guard collect`; see docs/STREAM.md).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StreamArgs {
    /// Also send every record of the forensic log, byte for byte, to a collector:
    /// `vsock:PORT` (the host, CID 2), `vsock:CID:PORT`, or `unix:PATH`. Needs a log. A
    /// stalled or absent collector never slows the guard: the stream resumes where the
    /// host's copy ends.
    #[arg(long, value_name = "ADDR")]
    pub stream: Option<Address>,
    /// The name the collector stores this guest's log under. Default: the host name.
    #[arg(long, value_name = "NAME", requires = "stream", value_parser = parse_guest_name)]
    pub stream_name: Option<String>,
}

fn parse_guest_name(name: &str) -> Result<String, String> {
    if guard::stream::wire::valid_guest_name(name) {
        Ok(name.to_string())
    } else {
        Err(guard::stream::StreamError::GuestName {
            name: name.to_string(),
        }
        .to_string())
    }
}

impl StreamArgs {
    /// Starts shipping the log in `dir`, if asked to.
    pub fn start(&self, dir: &std::path::Path) -> anyhow::Result<Option<Sender>> {
        let Some(address) = &self.stream else {
            return Ok(None);
        };
        let name = match &self.stream_name {
            Some(name) => name.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .unwrap_or_else(|_| "guest".to_string()),
        };
        Sender::start(dir, SenderOptions::new(address.clone(), name))
            .map(Some)
            .context("starting the log stream")
    }
}

/// Ends a stream after the log was closed: its `stop` goes out, and what the host
/// acknowledged is said.
pub fn finish_stream(sender: Option<Sender>) {
    let Some(sender) = sender else { return };
    let stats = sender.finish(STREAM_FINISH);
    eprintln!(
        "guard: log stream: {} line(s) sent over {} connection(s), the host holds {} record(s){}",
        stats.lines_sent,
        stats.connections,
        stats.acked_next_seq,
        stats
            .last_error
            .map(|error| format!(" (last error: {error})"))
            .unwrap_or_default()
    );
}

impl LogArgs {
    /// Starts the log if one was asked for (and its stream, see [`LogArgs::start_stream`]).
    pub fn start(
        &self,
        guard: &Guard,
        limits: serde_json::Value,
    ) -> anyhow::Result<Option<EventLog>> {
        let Some(dir) = &self.dir else {
            if self.stream.stream.is_some() {
                return Err(crate::args::UsageError(
                    "--stream ships the forensic log: give --log DIR too".into(),
                )
                .into());
            }
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

impl LogArgs {
    /// The log's stream, once the log is started.
    pub fn start_stream(&self) -> anyhow::Result<Option<Sender>> {
        match &self.dir {
            Some(dir) => self.stream.start(dir),
            None => Ok(None),
        }
    }
}

/// Records the final reports, closes the log and says where it is and its head; then ends
/// the stream.
pub async fn finish(
    log: Option<EventLog>,
    reports: &[guard::Report],
    sender: Option<Sender>,
) -> anyhow::Result<()> {
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
    finish_stream(sender);
    Ok(())
}

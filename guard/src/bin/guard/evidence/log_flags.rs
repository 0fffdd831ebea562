//! The `--log DIR` / `--fsync` / `--stream ADDR` flags of the commands that write a forensic
//! log (exec, watch, run; selftest has `--stream` alone: its log's place is fixed).
use std::path::PathBuf;

use anyhow::Context;
use guard::{
    forensic::{FsyncPolicy, LogOptions},
    stream::{Address, Sender, SenderOptions},
};

use super::LogPlan;

#[derive(clap::Args, Debug, Clone)]
pub struct LogFlags {
    /// Write the hash-chained forensic log (every event, the limits, the final report) into
    /// this directory; keep it outside every container's root filesystem.
    #[arg(long = "log", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When the log reaches the disk: `always` (every record), `interval=<ms>`, or `never`.
    /// Default: interval=100.
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,
    #[command(flatten)]
    pub stream: StreamFlags,
}

/// `--stream ADDR` / `--stream-name NAME`: ship the forensic log to a host collector as it is
/// written (`guard collect`; see docs/STREAM.md).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StreamFlags {
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

impl StreamFlags {
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

impl LogFlags {
    /// The log these flags ask for (none without `--log`, which `--stream` needs).
    pub fn plan(&self) -> anyhow::Result<LogPlan> {
        if self.dir.is_none() && self.stream.stream.is_some() {
            return Err(crate::args::UsageError(
                "--stream ships the forensic log: give --log DIR too".into(),
            )
            .into());
        }
        Ok(LogPlan {
            dir: self.dir.clone(),
            options: LogOptions {
                fsync: self.fsync.unwrap_or(LogOptions::default().fsync),
                ..LogOptions::default()
            },
            stream: self.stream.clone(),
        })
    }
}

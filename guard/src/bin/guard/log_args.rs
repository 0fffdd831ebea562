//! The `--log DIR` / `--fsync` / `--stream ADDR` options shared by the commands that write a
//! forensic log.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use guard::{
    Guard,
    forensic::{FsyncPolicy, LogOptions},
    sinks::event_log::EventLog,
    stream::{Address, Sender, SenderOptions, StreamKey},
};

/// How long a finishing stream waits for the host to acknowledge the log's last records.
const STREAM_FINISH: Duration = Duration::from_secs(10);
/// The exit status of a command whose own work succeeded but whose log stream did not deliver
/// the whole log to the host (docs/ERRORS.md).
pub const STREAM_NOT_DELIVERED: u8 = 5;

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
    /// The name the collector stores this guest's log under: the name the host gave this
    /// VM's transport (the host refuses any other). Default: the host name.
    #[arg(long, value_name = "NAME", requires = "stream", value_parser = parse_guest_name)]
    pub stream_name: Option<String>,
    /// The guest's stream key (64 hex digits in a file only root may read, mode 0400, outside
    /// every container's root filesystem and never on the kernel command line): the proof the
    /// collector asks for. Without it, only a collector listening with --no-auth takes the
    /// stream.
    #[arg(long, value_name = "FILE", requires = "stream")]
    pub stream_key: Option<PathBuf>,
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
        let mut options = SenderOptions::new(address.clone(), name);
        if let Some(path) = &self.stream_key {
            options = options.with_key(StreamKey::read(path)?);
        }
        Sender::start(dir, options)
            .map(Some)
            .context("starting the log stream")
    }
}

/// Ends a stream after the log was closed: its `stop` goes out, and what the host
/// acknowledged, or why it holds less, is said. False: the host does not hold the whole log.
pub fn finish_stream(sender: Option<Sender>) -> bool {
    let Some(sender) = sender else { return true };
    let stats = sender.finish(STREAM_FINISH);
    let how = match (&stats.failure, stats.delivered) {
        (_, true) => "the host holds the whole log".to_string(),
        (Some(failure), false) => format!("NOT DELIVERED: {failure}"),
        (None, false) => format!(
            "NOT DELIVERED: no acknowledgement of the log's end within {STREAM_FINISH:?}{}",
            stats
                .last_error
                .as_ref()
                .map(|error| format!(" (last error: {error})"))
                .unwrap_or_default()
        ),
    };
    eprintln!(
        "guard: log stream: {} line(s) sent over {} connection(s), {} record(s) acknowledged; \
         {how}",
        stats.lines_sent, stats.connections, stats.acked_next_seq,
    );
    stats.delivered
}

/// A command's exit status once its stream is finished: a success whose log did not reach
/// the host becomes [`STREAM_NOT_DELIVERED`]; a failure keeps its own status.
pub fn with_stream(code: ExitCode, delivered: bool) -> ExitCode {
    if !delivered && code == ExitCode::SUCCESS {
        ExitCode::from(STREAM_NOT_DELIVERED)
    } else {
        code
    }
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
/// the stream. False: the stream did not deliver the whole log.
pub async fn finish(
    log: Option<EventLog>,
    reports: &[guard::Report],
    sender: Option<Sender>,
) -> anyhow::Result<bool> {
    let Some(log) = log else {
        return Ok(true);
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
    Ok(finish_stream(sender))
}

//! The `--log DIR` / `--fsync` / `--stream ADDR` flags of the commands that write a forensic
//! log (exec, watch, run; selftest has `--stream` alone: its log's place is fixed).
use std::path::PathBuf;
use std::sync::{Arc, atomic::AtomicU64};

use anyhow::Context;
use guard::{
    forensic::{ByteBudget, FsyncPolicy, LogOptions},
    sinks::{json_lines::JsonLinesOptions, summary::SummaryPolicy},
    stream::{Address, Sender, SenderOptions, StreamKey},
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
    pub summaries: SummaryFlags,
    #[command(flatten)]
    pub budget: BudgetFlag,
    #[command(flatten)]
    pub stream: StreamFlags,
}

/// `--summaries POLICY`: how storms are folded in the log and the events file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SummaryFlags {
    /// How a storm is written, in the log and the --events file: `BURST/INTERVAL` keeps the
    /// first BURST events of a container's burst of one kind (fork, exit, exec, fork_denied,
    /// oom_victim, reclaim, kernel_file) as records of their own, then writes one `summary`
    /// record per INTERVAL (`ms` or `s`) with their count, first and last time, totals and
    /// first few events; a quiet INTERVAL ends the burst. `off`: one record per event. Counters and
    /// reports are exact either way. Default: 8/1s (docs/LOG-FORMAT.md, "Summaries").
    #[arg(long = "summaries", value_name = "POLICY")]
    pub policy: Option<SummaryPolicy>,
}

impl SummaryFlags {
    /// The policy asked for, or the default.
    pub fn policy(&self) -> SummaryPolicy {
        self.policy.unwrap_or_default()
    }

    /// The `--events` file's options.
    pub fn events_file(&self) -> JsonLinesOptions {
        let mut options = JsonLinesOptions::default();
        options.summaries = self.policy();
        options
    }
}

/// `--log-budget BYTES`: how large the forensic log's files may grow together.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BudgetFlag {
    /// The forensic log's byte budget: bytes (4194304, 4096K, 4M, 1G), `auto` or `none`.
    /// Default: auto: on a RAM-backed filesystem (tmpfs, ramfs) MemTotal/32 within 1–64 MiB,
    /// elsewhere a quarter of the free space up to 4 GiB, never more than a quarter of the
    /// filesystem's free space. At the budget the oldest files after the first are removed
    /// and recorded in-band (docs/LOG-FORMAT.md); reports and verdicts are always kept.
    #[arg(long = "log-budget", value_name = "BYTES")]
    pub log_budget: Option<ByteBudget>,
}

impl BudgetFlag {
    /// The budget asked for (the default: auto).
    pub fn budget(&self) -> ByteBudget {
        self.log_budget.unwrap_or_default()
    }

    /// The `--events` file's budget: the same setting, resolved where that file lives.
    pub fn for_events(&self, path: &std::path::Path) -> anyhow::Result<Option<u64>> {
        if path.as_os_str() == "-" {
            return Ok(None);
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        Ok(guard::forensic::resolve_budget(self.budget(), dir)?)
    }
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

impl StreamFlags {
    /// Starts shipping the log in `dir`, if asked to, publishing the host's acknowledgement
    /// to `acked` (the log's budget removes only what the host holds).
    pub fn start(
        &self,
        dir: &std::path::Path,
        acked: Option<Arc<AtomicU64>>,
    ) -> anyhow::Result<Option<Sender>> {
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
        options.acked = acked;
        Sender::start(dir, options)
            .map(Some)
            .context("starting the log stream")
    }
}

impl StreamFlags {
    /// Where the stream publishes the host's acknowledgement for the log's budget (None:
    /// no stream).
    pub fn acked(&self) -> Option<Arc<AtomicU64>> {
        self.stream.as_ref().map(|_| Arc::new(AtomicU64::new(0)))
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
                budget: self.budget.budget(),
                acked: self.stream.acked(),
                ..LogOptions::default()
            },
            summaries: self.summaries.policy(),
            stream: self.stream.clone(),
        })
    }
}

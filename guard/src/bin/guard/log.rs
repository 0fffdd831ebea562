//! `guard log …`: show, follow, verify and stats for the forensic log.
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use guard::forensic::{self, Entry, Filter, Follower, LogReader, ReaderError, time};

mod timeline;
mod verify;

pub const DEFAULT_LOG_DIR: &str = "/var/lib/guard/log";

/// Exit status of `verify` when the only defect is a torn final line (repairable).
pub const EXIT_TORN_TAIL: u8 = 3;
/// Exit status of `verify` when every record verifies but the newest session never wrote its
/// `stop`: the guard died or was killed, and what it had not written yet is missing.
pub const EXIT_ENDED_ABRUPTLY: u8 = 4;

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log directory (the one holding guard-NNNNNN.jsonl).
    #[arg(long, short = 'd', global = true, default_value = DEFAULT_LOG_DIR)]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: LogCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LogCommand {
    /// Print records (a table, or the raw JSON lines with --json).
    Show(FilterArgs),
    /// Print records as they are appended, like tail -f.
    Follow(FollowArgs),
    /// Check every line, seq continuity and the hash chain across files, and how the last
    /// writer session ended. Exit status: 0 valid and closed with a stop record, 1 invalid,
    /// 3 valid up to a torn final line (repairable), 4 valid but the last session ended
    /// without a stop (the guard died: records after its last one may be missing).
    Verify(VerifyArgs),
    /// Count records per kind and per container.
    Stats(StatsArgs),
    /// Draw an incident per container over time (.svg or .png): memory.events, pids.events,
    /// fork denials, OOM kills, reclaim stall, losses, waves.
    Timeline(timeline::TimelineArgs),
}

#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// Only records of this container.
    #[arg(long)]
    pub container: Option<String>,
    /// Only records of this kind (fork, oom_kill, lost, checkpoint…).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only records at or after this time: RFC 3339 (2026-11-29T20:00:00Z) or ago (10m, 1h30m).
    #[arg(long)]
    pub since: Option<String>,
    /// Print the records' exact JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Matching records from the newest file to print before following.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub lines: usize,
    /// How often to look for new records.
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Truncate a torn final line (and nothing else), saying what was removed.
    #[arg(long)]
    pub repair: bool,
    /// Print the result as one JSON object (`verdict`: ok, ended_abruptly, torn_tail, failed).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LogArgs) -> anyhow::Result<ExitCode> {
    let result = match args.command {
        LogCommand::Show(filter) => show(&args.dir, &filter),
        LogCommand::Follow(follow_args) => follow(&args.dir, &follow_args),
        LogCommand::Verify(verify_args) => verify::verify(&args.dir, &verify_args),
        LogCommand::Stats(stats_args) => stats(&args.dir, &stats_args),
        LogCommand::Timeline(timeline_args) => timeline::run(&args.dir, &timeline_args),
    };
    match result {
        // A closed pipe (`guard log show | head`) is the reader being done, not a failure.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn build_filter(args: &FilterArgs) -> anyhow::Result<Filter> {
    let since_ns = match &args.since {
        Some(since) => Some(time::parse_since(since, time::realtime_ns()?)?),
        None => None,
    };
    Ok(Filter {
        container: args.container.clone(),
        kind: args.kind.clone(),
        since_ns,
    })
}

fn show(dir: &std::path::Path, args: &FilterArgs) -> anyhow::Result<ExitCode> {
    let filter = build_filter(args)?;
    let mut printer = Printer::new(args.json);
    let mut bad_lines = 0u64;
    for item in LogReader::open(dir)? {
        match item {
            Ok(entry) if filter.matches(&entry.record) => printer.print(&entry)?,
            Ok(_) => {}
            Err(e) if e.is_line_error() => {
                bad_lines += 1;
                printer.flush()?;
                eprintln!("warning: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    printer.flush()?;
    if bad_lines > 0 {
        eprintln!("{bad_lines} line(s) could not be shown; run `guard log verify`");
    }
    Ok(ExitCode::SUCCESS)
}

fn follow(dir: &std::path::Path, args: &FollowArgs) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&args.filter)?;
    let mut printer = Printer::new(args.filter.json);
    let mut follower = Follower::newest_file(dir)?;
    let mut backlog = VecDeque::with_capacity(args.lines.min(10_000));
    let mut pending_error: Option<anyhow::Error> = None;
    let keep = |item: Result<Entry, ReaderError>, backlog: &mut VecDeque<Entry>| match item {
        Ok(entry) if filter.matches(&entry.record) => {
            if backlog.len() == args.lines {
                backlog.pop_front();
            }
            if args.lines > 0 {
                backlog.push_back(entry);
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: {e}"),
    };
    follower.poll(&mut |item| keep(item, &mut backlog))?;
    for entry in backlog.drain(..) {
        printer.print(&entry)?;
    }
    printer.flush()?;
    loop {
        std::thread::sleep(Duration::from_millis(args.interval_ms));
        follower.poll(&mut |item| match item {
            Ok(entry) if filter.matches(&entry.record) => {
                if pending_error.is_none()
                    && let Err(e) = printer.print(&entry)
                {
                    pending_error = Some(e);
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: {e}"),
        })?;
        if let Some(e) = pending_error.take() {
            return Err(e);
        }
        printer.flush()?;
    }
}

fn stats(dir: &std::path::Path, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let stats = forensic::stats(dir)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} record(s) in {} file(s)",
        stats.records, stats.files
    )?;
    if let (Some(first), Some(last)) = (&stats.first_wall, &stats.last_wall) {
        writeln!(out, "from {first} to {last}")?;
    }
    if stats.unreadable_lines > 0 || stats.torn_tail {
        writeln!(
            out,
            "unreadable lines: {}, torn tail: {} (run `guard log verify`)",
            stats.unreadable_lines, stats.torn_tail
        )?;
    }
    // EVENTS: the kind's own records plus the events its `summary` records folded.
    writeln!(out, "\n{:<20} {:>12} {:>12}", "KIND", "RECORDS", "EVENTS")?;
    let kinds: std::collections::BTreeSet<&String> = stats
        .per_kind
        .keys()
        .chain(stats.summarized.keys())
        .collect();
    for kind in kinds {
        let records = stats.per_kind.get(kind).copied().unwrap_or(0);
        let events = records + stats.summarized.get(kind).copied().unwrap_or(0);
        writeln!(out, "{kind:<20} {records:>12} {events:>12}")?;
    }
    if !stats.per_container.is_empty() {
        writeln!(out, "\n{:<24} {:>12}  BY KIND", "CONTAINER", "RECORDS")?;
        for (container, kinds) in &stats.per_container {
            let total: u64 = kinds.values().sum();
            let folded = stats.per_container_summarized.get(container);
            let by_kind: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .chain(
                    folded
                        .into_iter()
                        .flatten()
                        .map(|(k, n)| format!("{k}+={n}")),
                )
                .collect();
            writeln!(out, "{container:<24} {total:>12}  {}", by_kind.join(" "))?;
        }
        if !stats.summarized.is_empty() {
            writeln!(
                out,
                "(kind+=N: N more events of the kind, folded into summary records)"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes entries as a table (coloured on a terminal) or as their exact JSON lines.
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    colour: bool,
    header_done: bool,
    payload_width: usize,
}

const SEQ_W: usize = 9;
const TIME_W: usize = 23;
const KIND_W: usize = 12;
const CONTAINER_W: usize = 16;

impl Printer {
    fn new(json: bool) -> Self {
        let stdout = std::io::stdout();
        let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let columns = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(120);
        let fixed = SEQ_W + TIME_W + KIND_W + CONTAINER_W + 4;
        Self {
            out: std::io::BufWriter::with_capacity(64 << 10, stdout),
            json,
            colour,
            header_done: false,
            payload_width: columns.saturating_sub(fixed).max(20),
        }
    }

    fn print(&mut self, entry: &Entry) -> anyhow::Result<()> {
        if self.json {
            self.out.write_all(&entry.raw)?;
            self.out.write_all(b"\n")?;
            return Ok(());
        }
        if !self.header_done {
            self.header_done = true;
            let header = format!(
                "{:>SEQ_W$} {:<TIME_W$} {:<KIND_W$} {:<CONTAINER_W$} PAYLOAD",
                "SEQ", "TIME (UTC)", "KIND", "CONTAINER"
            );
            if self.colour {
                writeln!(self.out, "\x1b[1m{header}\x1b[0m")?;
            } else {
                writeln!(self.out, "{header}")?;
            }
            // Show the first screenful at once rather than when the buffer fills.
            self.out.flush()?;
        }
        let record = &entry.record;
        // 2026-11-29T20:03:15.123456789Z → 2026-11-29 20:03:15.123
        let time: String = record
            .wall
            .chars()
            .take(TIME_W)
            .map(|c| if c == 'T' { ' ' } else { c })
            .collect();
        let kind = clip(&record.kind, KIND_W);
        let container = clip(record.container.as_deref().unwrap_or("-"), CONTAINER_W);
        let payload = clip(&record.payload.to_string(), self.payload_width);
        if self.colour {
            let colour = kind_colour(&record.kind);
            writeln!(
                self.out,
                "{:>SEQ_W$} \x1b[2m{time:<TIME_W$}\x1b[0m {colour}{kind:<KIND_W$}\x1b[0m \x1b[36m{container:<CONTAINER_W$}\x1b[0m {payload}",
                record.seq
            )?;
        } else {
            writeln!(
                self.out,
                "{:>SEQ_W$} {time:<TIME_W$} {kind:<KIND_W$} {container:<CONTAINER_W$} {payload}",
                record.seq
            )?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("writing to stdout")
    }
}

fn kind_colour(kind: &str) -> &'static str {
    match kind {
        "lost" | "oom_kill" | "global_oom" => "\x1b[1;31m",
        "throttle" | "fork_denied" | "livelock" => "\x1b[33m",
        "start" | "stop" | "rotate" | "checkpoint" | "repair" => "\x1b[2;32m",
        _ => "\x1b[34m",
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

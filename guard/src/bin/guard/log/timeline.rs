//! `guard log timeline`: an incident's picture per container over time, from a forensic log.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use guard::timeline;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each container gets a panel: the kernel's memory.events oom and oom_kill and pids.events max as
steps, the probes' fork denials and throttled events, each OOM kill as a cross (the first few
named with their command), the agent's waves shaded, and below, the time its tasks spent in
memcg direct reclaim. Losses, if any, appear on every panel.

Examples:
  guard log --dir /var/lib/guard/log timeline --out incident.svg
  guard log timeline /var/lib/guard/log --out incident.png --container web-1 --data incident.json")]
pub struct TimelineArgs {
    /// The log directory (default: --dir).
    pub log: Option<PathBuf>,
    /// The picture to write: .svg or .png.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Only this container.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Also write the plotted series as JSON (to check or replot them).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
}

pub fn run(dir: &std::path::Path, args: &TimelineArgs) -> anyhow::Result<ExitCode> {
    let dir = args.log.as_deref().unwrap_or(dir);
    let records = timeline::read_log(dir)?;
    let plotted = timeline::timeline(&records, args.container.as_deref());
    if let Some(only) = &args.container
        && !plotted.containers.contains_key(only)
    {
        anyhow::bail!(
            "--container {only}: no records of that container in {}",
            dir.display()
        );
    }
    let title = format!(
        "guard timeline: {} ({} records, {:.1} s)",
        dir.display(),
        plotted.records,
        plotted.duration_s
    );
    timeline::draw(&plotted, &args.out, &title)?;
    if let Some(path) = &args.data {
        std::fs::write(path, serde_json::to_vec_pretty(&plotted)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for (id, track) in &plotted.containers {
        eprintln!("guard: {id}: {}", timeline::data::totals(track));
    }
    eprintln!("guard: timeline in {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

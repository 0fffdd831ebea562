//! `cargo xtask fuzz`: runs the cargo-fuzz targets in guard/fuzz for a fixed time each and
//! reports executions and crashes; a crashing input is kept as a regression test.
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use xtask::paths;

use crate::cmd;

/// How often a running target prints a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
#[command(
    about = "Run the cargo-fuzz targets (log reader/verifier, meminfo, tracepoint formats, event \
decoder, container ids) for N seconds each and report executions and crashes",
    long_about = "Run guard's cargo-fuzz targets (guard/fuzz, a workspace of its own) one after \
the other, each for --seconds, and print a table of seconds, executions and crashes.\n\n\
Needs the nightly toolchain (libFuzzer and AddressSanitizer need -Z flags; `cargo xtask setup` \
installs it). cargo-fuzz is installed with `cargo install cargo-fuzz` when missing.\n\n\
Per target it:\n\
  1. builds it with `cargo +nightly fuzz build` (into $CARGO_TARGET_DIR/fuzz, default \
target/fuzz),\n\
  2. runs `cargo +nightly fuzz run <target> guard/fuzz/corpus/<target> guard/fuzz/seeds/<target> \
[guard/fuzz/regressions/<target>] -- -max_total_time=N`: libFuzzer starts from the committed \
seeds and earlier crashers and keeps what it finds in corpus/ (not committed, reused by the \
next run),\n\
  3. keeps libFuzzer's full output in target/fuzz/logs/<target>.log and prints a progress \
line every 30 s,\n\
  4. on a crash copies the input from guard/fuzz/artifacts/<target>/ into \
guard/fuzz/regressions/<target>/ and says so; the command then exits non-zero.\n\n\
A crasher in regressions/ is replayed by `cargo test -p guard --test fuzz_regressions` (stable, \
part of the normal test suite): fix the bug, commit the input, and the test keeps it fixed. To \
rerun one input under the fuzz build: cd guard && cargo +nightly fuzz run <target> \
fuzz/regressions/<target>/<file>.\n\n\
Examples:\n\
  cargo xtask fuzz                                  every target, 300 s each\n\
  cargo xtask fuzz --target forensic_log --seconds 60\n\
  cargo xtask fuzz --target meminfo --target event_decode\n\n\
See docs/FUZZING.md for what each target asserts."
)]
pub struct FuzzArgs {
    /// A target to run (repeatable); default: every target in guard/fuzz/fuzz_targets.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub seconds: u64,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    seconds: f64,
    executions: Option<u64>,
    crashes: Vec<PathBuf>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let fuzz_dir = paths::workspace_root().join("guard").join("fuzz");
    let targets = select_targets(&fuzz_dir, &args.targets)?;
    ensure_tools()?;
    let target_dir = paths::target_dir().join("fuzz");
    let logs = target_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let mut outcomes = Vec::new();
    for target in &targets {
        build(&fuzz_dir, &target_dir, target)?;
        let outcome = run_target(&fuzz_dir, &target_dir, target, args.seconds)?;
        outcomes.push(outcome);
    }

    println!("\n| target | seconds | executions | exec/s | crashes |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for outcome in &outcomes {
        let (executions, rate) = match outcome.executions {
            Some(n) => (n.to_string(), format!("{:.0}", n as f64 / outcome.seconds)),
            None => ("?".to_string(), "?".to_string()),
        };
        println!(
            "| {} | {:.0} | {executions} | {rate} | {} |",
            outcome.target,
            outcome.seconds,
            outcome.crashes.len()
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    println!();
    for outcome in &crashed {
        for path in &outcome.crashes {
            println!("crash in {}: kept as {}", outcome.target, path.display());
        }
    }
    bail!(
        "{} target(s) crashed; fix the bug and commit the input(s) above: \
         `cargo test -p guard --test fuzz_regressions` replays them",
        crashed.len()
    )
}

/// The requested targets, checked against guard/fuzz/fuzz_targets/*.rs (all when none asked).
fn select_targets(fuzz_dir: &Path, requested: &[String]) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let known: BTreeSet<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    if requested.is_empty() {
        return Ok(known.into_iter().collect());
    }
    for target in requested {
        if !known.contains(target) {
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            bail!(
                "no fuzz target {target:?}; the targets are: {}",
                names.join(", ")
            );
        }
    }
    Ok(requested.to_vec())
}

/// Checks for nightly and installs cargo-fuzz when it is missing.
fn ensure_tools() -> Result<()> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !works("cargo", &["+nightly", "--version"]) {
        bail!(
            "the nightly toolchain is missing (libFuzzer needs it): run `cargo xtask setup` or \
             `rustup toolchain install nightly`"
        );
    }
    if works("cargo", &["fuzz", "--version"]) {
        println!("fuzz: cargo-fuzz is installed");
        return Ok(());
    }
    println!("fuzz: cargo-fuzz is missing; installing it (takes a minute or two)");
    cmd::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    Ok(())
}

/// `cargo +nightly fuzz <subcommand>` from guard/ (cargo-fuzz finds guard/fuzz from there).
fn fuzz_command(fuzz_dir: &Path, target_dir: &Path, subcommand: &str) -> Command {
    let mut command = Command::new("cargo");
    // rustup's cargo proxy picks the toolchain from `+nightly`; CARGO from the outer cargo
    // would be the stable binary, which rejects it.
    command
        .args(["+nightly", "fuzz", subcommand, "--target-dir"])
        .arg(target_dir)
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    command
}

/// Builds one target quietly (cargo replays the eBPF build's warnings on every build); the
/// output is shown only when the build fails.
fn build(fuzz_dir: &Path, target_dir: &Path, target: &str) -> Result<()> {
    let mut command = fuzz_command(fuzz_dir, target_dir, "build");
    command.arg(target);
    let line = cmd::describe(&command);
    println!("==> {line}");
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    if !output.status.success() {
        std::io::stderr().write_all(&output.stderr)?;
        bail!("`{line}` failed ({})", output.status);
    }
    println!(
        "fuzz: {target} built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_target(fuzz_dir: &Path, target_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    // libFuzzer adds what it finds to the first folder only: seeds and crashers stay as they are.
    let mut inputs = vec![corpus];
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        if dir.is_dir() {
            inputs.push(dir);
        }
    }
    // Scratch files of targets that need a directory (forensic_log): in memory when possible,
    // since the log code fsyncs.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() { shm } else { target_dir }.join(format!("guard-fuzz-{target}"));
    fs::create_dir_all(&scratch)?;
    let log_path = target_dir.join("logs").join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut command = fuzz_command(fuzz_dir, target_dir, "run");
    command
        .arg(target)
        .args(&inputs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A hang is a bug too: report any input that takes this long as a timeout crash.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .env("GUARD_FUZZ_SCRATCH", &scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("==> {}", cmd::describe(&command));
    println!(
        "fuzz: {target}: {seconds} s; full output in {}",
        log_path.display()
    );

    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    // libFuzzer reports on stderr; the target's own stdout goes to the log as well.
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let echo = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // Lines arrive on a channel so progress is printed on time even while libFuzzer is quiet.
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (lines, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stats = Stats::default();
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        let wait = next_progress.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                stats.see(&line);
                if is_alarm(&line) {
                    println!("fuzz: {target}: {line}");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                next_progress += PROGRESS_EVERY;
                println!(
                    "fuzz: {target}: {:>4.0}/{seconds} s, {} executions, coverage {}, corpus {}",
                    started.elapsed().as_secs_f64(),
                    stats.last_count.unwrap_or(0),
                    stats.coverage.as_deref().unwrap_or("?"),
                    stats.corpus.as_deref().unwrap_or("?"),
                );
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed().as_secs_f64();
    for line in echo.join().unwrap_or_default() {
        writeln!(log, "{line}")?;
    }

    let mut crashes = Vec::new();
    for artifact in &stats.artifacts {
        crashes.push(keep_crasher(fuzz_dir, target, artifact)?);
    }
    if !status.success() && crashes.is_empty() {
        bail!(
            "`cargo fuzz run {target}` failed ({status}) without a crash input; see {}",
            log_path.display()
        );
    }
    let _ = fs::remove_dir_all(&scratch);
    let executions = stats.executions.or(stats.last_count);
    println!(
        "fuzz: {target}: {elapsed:.0} s, {} executions, {} crash(es)",
        executions.map_or("?".to_string(), |n| n.to_string()),
        crashes.len()
    );
    Ok(Outcome {
        target: target.to_string(),
        seconds: elapsed,
        executions,
        crashes,
    })
}

/// Copies a crash artifact into regressions/<target>/ and returns its new path.
fn keep_crasher(fuzz_dir: &Path, target: &str, artifact: &Path) -> Result<PathBuf> {
    // cargo-fuzz runs from guard/, so relative artifact paths are relative to it.
    let source = if artifact.is_absolute() {
        artifact.to_path_buf()
    } else {
        fuzz_dir.parent().unwrap_or(fuzz_dir).join(artifact)
    };
    let dir = fuzz_dir.join("regressions").join(target);
    fs::create_dir_all(&dir)?;
    let name = source
        .file_name()
        .context("artifact path without a file name")?;
    let kept = dir.join(name);
    fs::copy(&source, &kept)
        .with_context(|| format!("copying {} to {}", source.display(), kept.display()))?;
    println!(
        "fuzz: {target}: crash input kept as {} (replayed by the fuzz_regressions test)",
        kept.display()
    );
    Ok(kept)
}

/// Lines worth showing at once: the run found something.
fn is_alarm(line: &str) -> bool {
    [
        "ERROR",
        "panicked",
        "SUMMARY",
        "deadly signal",
        "Test unit written",
        "ALARM",
    ]
    .iter()
    .any(|needle| line.contains(needle))
}

/// What libFuzzer's output says so far.
#[derive(Default)]
struct Stats {
    /// `#N` of the latest status line.
    last_count: Option<u64>,
    coverage: Option<String>,
    corpus: Option<String>,
    /// `stat::number_of_executed_units` from -print_final_stats.
    executions: Option<u64>,
    /// Inputs libFuzzer wrote after a crash, leak or timeout.
    artifacts: Vec<PathBuf>,
}

impl Stats {
    fn see(&mut self, line: &str) {
        // `#123456	pulse  cov: 1234 ft: 2345 corp: 56/1234b lim: 4096 exec/s: 2057 rss: 45Mb`
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if let Some(count) = words.next().and_then(|n| n.parse().ok()) {
                self.last_count = Some(count);
            }
            let mut words = words.peekable();
            while let Some(word) = words.next() {
                match word {
                    "cov:" => self.coverage = words.peek().map(|v| v.to_string()),
                    "corp:" => self.corpus = words.peek().map(|v| v.to_string()),
                    _ => {}
                }
            }
        } else if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = value.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            self.artifacts.push(PathBuf::from(rest.trim()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut stats = Stats::default();
        for line in [
            "INFO: Seed: 1234",
            "#2048\tpulse  cov: 812 ft: 2301 corp: 91/4212b lim: 4096 exec/s: 1024 rss: 61Mb",
            "#612345\tDONE   cov: 901 ft: 2900 corp: 120/6100b lim: 4096 exec/s: 2041 rss: 70Mb",
            "Done 612345 runs in 300 second(s)",
            "stat::number_of_executed_units: 612345",
            "artifact_prefix='fuzz/artifacts/meminfo/'; Test unit written to \
             fuzz/artifacts/meminfo/crash-0a1b",
        ] {
            stats.see(line);
        }
        assert_eq!(stats.last_count, Some(612_345));
        assert_eq!(stats.executions, Some(612_345));
        assert_eq!(stats.coverage.as_deref(), Some("901"));
        assert_eq!(stats.corpus.as_deref(), Some("120/6100b"));
        assert_eq!(
            stats.artifacts,
            [PathBuf::from("fuzz/artifacts/meminfo/crash-0a1b")]
        );
    }
}

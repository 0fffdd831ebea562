//! `cargo xtask demo`: the README's main job. A 128 MiB guest runs `guard selftest`: one
//! guarded container, three bomb waves, live events as they happen, a per-wave table, the
//! final report, and the forensic log copied to the host.
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use xtask::vm::{self, VmResult};

use crate::cmd;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Guest kernel(s): 6.1, 6.12, lean, lean-guard (repeat the flag for several).
    #[arg(long = "kernel", default_values_t = vec!["6.12".to_string()])]
    pub kernels: Vec<String>,
    /// Run the waves with limits off (probes on): what happens without guard's limits.
    #[arg(long)]
    pub no_limits: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// The selftest's `--summaries` policy (`off`, or BURST/INTERVAL such as `8/1s`), to
    /// compare the log's size with and without interval summaries.
    #[arg(long, value_name = "POLICY")]
    pub summaries: Option<String>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let bin = cmd::prepare_guest_binaries(&args.kernels)?;
    for kernel in &args.kernels {
        demo(args, kernel, &bin)?;
    }
    Ok(())
}

fn demo(args: &DemoArgs, kernel: &str, bin: &Path) -> anyhow::Result<()> {
    println!(
        "\n## {} MiB guest, {kernel} kernel: one container, three bomb waves; then four tenants at \
         once{}\n",
        args.memory,
        if args.no_limits { ", LIMITS OFF" } else { "" }
    );
    println!(
        "guard runs as the guest agent (oom_score_adj -1000); the container gets memory.max and \
         pids.max=512; each wave runs inside it. Live events:\n"
    );
    // The evidence leaves the guest as it is written: a collector on the host receives the
    // forensic log over vsock (docs/STREAM.md) and gives its own verdict at the end.
    let guest_name = format!("demo-{}", kernel.replace('.', "-"));
    let host = HostCollector::start(bin, &guest_name)?;
    let mut config = cmd::selftest_vm(
        kernel,
        args.memory,
        bin,
        // Both scenarios in one agent under the guest budget: the one-container waves, then
        // four tenants at once. (Run after a --no-budget waves run in the same guest, the
        // budget, derived from what that run left, was too small and the tenants livelocked.)
        &format!(
            "{} {} --stream vsock:{STREAM_PORT} --stream-name {guest_name} --stream-key {}",
            if args.no_limits { "--no-limits" } else { "" },
            args.summaries
                .as_ref()
                .map(|policy| format!("--summaries {policy}"))
                .unwrap_or_default(),
            vm::GUEST_KEY_PATH
        ),
        format!("demo-{kernel}"),
    )
    .vm_entry(&host.vm);
    config.echo_console = Some("[guard]".to_string());
    let outcome = vm::run(&config)?;
    let done = match outcome.result {
        VmResult::Completed(done) => done,
        VmResult::Died { console_tail } => {
            println!("\nTHE VM DIED. Console tail:\n{console_tail}");
            host.finish(None)?;
            return if args.no_limits {
                Ok(())
            } else {
                bail!("the guest died with limits on")
            };
        }
        VmResult::TimedOut { console_tail } => {
            println!("\nTHE VM HUNG (timed out). Console tail:\n{console_tail}");
            host.finish(None)?;
            return if args.no_limits {
                Ok(())
            } else {
                bail!("the guest hung with limits on")
            };
        }
    };
    let summary: Value = serde_json::from_str(
        &done
            .file_str("waves.json")
            .with_context(|| format!("the guest wrote no waves.json:\n{}", done.stderr_str()))?,
    )?;
    print_waves(&summary);
    print_tenants(&summary);
    println!("\nFinal report (the container's limits, counters and verdicts):\n");
    println!("{}", done.stdout_str().trim_end());

    let log_dir = outcome.run_dir.join("forensic-log");
    std::fs::create_dir_all(&log_dir)?;
    for (path, bytes) in &done.files {
        if let Some(file) = path.strip_prefix("log/") {
            std::fs::write(log_dir.join(file), bytes)?;
        }
    }
    println!(
        "\nForensic log on the host: {}\n  verify it:  target/release/guard log --dir {0} verify\n  \
         or without guard:  python3 tests/verify_log.py {0}\n  read it:    target/release/guard log --dir {0} show --kind wave",
        log_dir.display()
    );
    let status = std::process::Command::new(bin.join("guard"))
        .args(["log", "--dir"])
        .arg(&log_dir)
        .arg("verify")
        .status()?;
    if !status.success() {
        bail!("the forensic log from the guest does not verify");
    }
    host.finish(Some(&log_dir))?;
    let picture = outcome.run_dir.join("timeline.png");
    let drawn = std::process::Command::new(bin.join("guard"))
        .args(["log", "timeline"])
        .arg(&log_dir)
        .arg("--out")
        .arg(&picture)
        .stderr(std::process::Stdio::null())
        .status()?;
    if drawn.success() {
        println!(
            "\nThe incident as a picture (each container over time: memory.events, OOM kills, \
             reclaim stall, the waves): {}",
            picture.display()
        );
    } else {
        bail!("guard log timeline could not draw {}", picture.display());
    }
    println!(
        "\nboot {:.1} s, scenario {:.1} s, wall {:.1} s",
        outcome.boot_time.unwrap_or_default().as_secs_f64(),
        outcome.scenario_time.unwrap_or_default().as_secs_f64(),
        outcome.wall_time.as_secs_f64()
    );
    Ok(())
}

/// The guest streams to this port (`guard --stream vsock:PORT`).
const STREAM_PORT: u32 = 7000;

/// `guard collect --vm-dir` on the host, as an orchestrator runs it for its VMs: the guest's
/// directory under it holds the VM's key (the guest gets the same key in its initramfs) and
/// the end of its vsock bridge. Its status lines are printed as they come.
struct HostCollector {
    child: std::process::Child,
    lines: std::thread::JoinHandle<Vec<String>>,
    vm: vm::VmEntry,
    dir: std::path::PathBuf,
    scratch: std::path::PathBuf,
}

impl HostCollector {
    fn start(bin: &Path, guest: &str) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        // Unix socket paths hold 107 bytes: a short folder of our own.
        let scratch = std::env::temp_dir().join(format!("guard-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let vms = scratch.join("vms");
        std::fs::create_dir_all(&vms)?;
        let vm = vm::VmEntry::create(&vms, guest)?;
        let dir = xtask::paths::target_dir().join("demo-host-copies");
        let _ = std::fs::remove_dir_all(dir.join(guest));
        let mut child = std::process::Command::new(bin.join("guard"))
            .arg("collect")
            .arg("--vm-dir")
            .arg(&vms)
            .arg("--port")
            .arg(STREAM_PORT.to_string())
            .arg("--dir")
            .arg(&dir)
            .args(["--streams", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting guard collect")?;
        let stdout = child.stdout.take().context("guard collect's stdout")?;
        let lines = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                println!("[host] {line}");
                seen.push(line);
            }
            seen
        });
        // The collector must listen before the guest connects (the guest retries, but the
        // demo should not start with a failed connection).
        let socket = vm.vsock().host_socket(STREAM_PORT);
        let started = std::time::Instant::now();
        while !socket.exists() && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Self {
            child,
            lines,
            vm,
            dir: dir.join(guest),
            scratch,
        })
    }

    /// Waits for the stream's verdict and prints it beside the guest's own log (when the
    /// guest sent it back): the two must be the same bytes.
    fn finish(mut self, guest_log: Option<&Path>) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.child.try_wait()?.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
            println!("[host] no verdict within 60 s of the guest's end");
        }
        let status = self.child.wait()?;
        let lines = self.lines.join().unwrap_or_default();
        let _ = std::fs::remove_dir_all(&self.scratch);
        let verdict = lines.last().cloned().unwrap_or_default();
        println!(
            "\nThe host's copy, streamed over vsock as it was written: {}",
            self.dir.display()
        );
        println!("  the collector's verdict: {verdict}");
        if let Some(guest_log) = guest_log {
            let same = log_bytes(guest_log)? == log_bytes(&self.dir)?;
            println!(
                "  the guest's own log (sent back at the end): {}",
                if same {
                    "the same bytes as the host's copy"
                } else {
                    "DIFFERS from the host's copy"
                }
            );
            if !same || !status.success() {
                bail!("the host's streamed copy is not the guest's complete log ({verdict})");
            }
        }
        Ok(())
    }
}

/// A log folder's `guard-*.jsonl` files, in order, as (name, bytes).
fn log_bytes(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("guard-") && name.ends_with(".jsonl") {
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// The multi-tenant wave: each container's verdicts and kills, the budget, kills by scope.
fn print_tenants(summary: &Value) {
    let wave = &summary["tenants"];
    if wave.is_null() {
        return;
    }
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    println!(
        "\nFour tenants at once under the guest budget (memory.max {} bytes, pids.max {} for all \
         of them together):\n",
        wave["budget"]["read_back"]["memory_max"], wave["budget"]["read_back"]["pids_max"]
    );
    println!(
        "{:<18} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}",
        "container", "exit", "denied", "OOM kills", "by budget", "pids", "memory"
    );
    for (id, container) in wave["containers"].as_object().into_iter().flatten() {
        let report = &container["report"];
        println!(
            "{:<18} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}",
            id,
            container["exit_code"].as_i64().map_or_else(
                || format!("sig {}", container["signal"]),
                |code| code.to_string()
            ),
            number(&report["kernel_since_watch"]["pids_events"]["max"]),
            number(&report["oom"]["kernel_kills"]),
            number(&report["oom"]["ancestor_kills"]),
            report["pids"]["verdict"].as_str().unwrap_or("?"),
            report["memory"]["verdict"].as_str().unwrap_or("?"),
        );
    }
    let oom = &wave["kernel_log_oom_kills"];
    println!(
        "\nkernel log: {} memcg OOM kills, {} global; steady tenant {} ms alone, {} ms beside the \
         bombs (×{:.2})",
        number(&oom["memcg"]),
        number(&oom["global"]),
        wave["steady"]["alone_ms"],
        wave["steady"]["beside_bombs_ms"],
        wave["steady"]["slowdown"].as_f64().unwrap_or(0.0)
    );
}

fn print_waves(summary: &Value) {
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let sources: Vec<&str> = summary["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "\nguard ran at tier {} with live sources: {}",
        summary["tier"],
        sources.join(", ")
    );
    // Tier 1 has no BPF counters: its per-process evidence is the sources' records.
    let live = if summary["tier"].as_u64() == Some(1) {
        "sources"
    } else {
        "bpf"
    };
    println!(
        "\nPer wave ({} and the kernel's own files, counted during the wave):\n",
        if live == "bpf" {
            "BPF counters"
        } else {
            "perf's fork records, the kernel log's OOM kills"
        }
    );
    println!(
        "{:<16} {:>6} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "wave",
        "forks",
        "denied",
        "pids.max*",
        "OOM kills",
        "oom_kill*",
        "memcg oom*",
        "reclaims",
        "fresh exec",
        "agent"
    );
    for wave in summary["waves"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:>6} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>9} {:>6}",
            wave["wave"].as_str().unwrap_or("?"),
            number(&wave[live]["forks"]),
            number(&wave[live]["fork_denied"]),
            number(&wave["kernel"]["pids_events"]["max"]),
            number(&wave[live]["oom_kills"]),
            number(&wave["kernel"]["memory_events"]["oom_kill"]),
            number(&wave["kernel"]["memory_events_local"]["oom"]),
            number(&wave[live]["reclaim_runs"]),
            if wave["fresh_exec_ok"] == true {
                "ok"
            } else {
                "FAILED"
            },
            wave["agent_oom_score_adj"]
        );
    }
    println!(
        "(* from the kernel's pids.events / memory.events: the probes' counts must match them)"
    );
    let global = number(&summary["global"]["bpf"]["oom_kills"]);
    if global > 0 {
        println!("GLOBAL OOM: {global} task(s) outside every container were killed");
    }
}

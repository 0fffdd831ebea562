//! `cargo xtask vm`: boot a guest and run a command inside.

use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use xtask::paths;
use xtask::vm::{self, Accel, VmConfig, VmResult};

#[derive(clap::Args, Debug)]
#[command(
    about = "Boot a guest VM and run a command in it",
    long_about = "Build an initramfs (static busybox, the init in xtask/src/vm/init.sh, the guard \
binaries with their shared libraries), boot it with QEMU and a Debian kernel from the setup \
cache, run CMD as the guest agent would (oom_score_adj -1000, cgroup2 with +memory +pids, \
tracefs, a tmpfs root), and print its stdout, stderr and exit code. Files the command leaves \
in the guest's /results are copied to a host folder that is printed.\n\n\
By default `cargo build --release -p guard --features cli` and `cargo build --release -p guard-tests --bins` \
run first and target/release/guard and guard-stress go into the guest's /bin.\n\n\
Exit status: the guest command's exit code; 100 if the VM died (kernel panic, init died), \
101 if it timed out. Boot time, scenario wall time and a progress line every 10 s go to \
stderr.\n\n\
Examples:\n  cargo xtask vm --kernel 6.1 -- guard probe --json\n  \
cargo xtask vm --kernel 6.12 --no-build -- sh -c 'cat /sys/fs/cgroup/cgroup.controllers'\n  \
guard collect keygen /tmp/v.key && guard collect --dir /tmp/copies --listen web=unix:/tmp/v/vsock_7000 \
--key web=/tmp/v.key &\n  \
cargo xtask vm --vsock /tmp/v --stream-key /tmp/v.key -- guard exec --cgroup /sys/fs/cgroup/j --log /tmp/log \
--stream vsock:7000 --stream-name web --stream-key /etc/guard/stream.key -- true\n\n\
Environment: GUARD_VM_ACCEL=tcg|kvm|auto (default auto: KVM only if a short probe boot works, cached per host boot), GUARD_QEMU, GUARD_BUSYBOX, \
CARGO_TARGET_DIR, GUARD_KERNELS_DIR."
)]
pub struct VmArgs {
    /// Kernel: 6.1 or 6.12 (installed by `cargo xtask setup`) or a path to a kernel image.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Seconds before the VM is killed and reported as timed out.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Extra host binary to put in the guest's /bin (with its shared libraries); repeatable.
    #[arg(long = "bin", value_name = "PATH")]
    bins: Vec<PathBuf>,
    /// Extra host file as HOST_PATH:GUEST_PATH (mode kept as executable or not); repeatable.
    #[arg(long = "file", value_name = "HOST:GUEST")]
    files: Vec<String>,
    /// Do not run cargo build; use the guard binaries already in target/release.
    #[arg(long)]
    no_build: bool,
    /// Leave the guard binaries out (busybox-only guest, nothing is built).
    #[arg(long)]
    no_guard: bool,
    /// Accelerator: tcg, kvm, or auto (kvm only if a short probe boot works).
    #[arg(long, value_parser = Accel::parse)]
    accel: Option<Accel>,
    /// oom_score_adj of the guest command ("none" leaves the kernel default).
    #[arg(long, default_value = "-1000", allow_hyphen_values = true)]
    oom_score_adj: String,
    /// Host folder for the files the command leaves in the guest's /results
    /// (default: <run folder>/results).
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Extra kernel command-line words (e.g. "loglevel=7" to see boot messages); repeatable.
    #[arg(long = "append", value_name = "WORDS")]
    append: Vec<String>,
    /// Print one JSON object on stdout instead of the command's raw output: result
    /// ("completed", "died", "timed_out"), exit_code, stdout, stderr, files (name → size),
    /// results_dir, boot_s, scenario_s, wall_s, accel, kernel, run_dir, console_tail.
    #[arg(long)]
    json: bool,
    /// Give the guest a vsock device bridged to host Unix sockets in DIR (rust-vmm's
    /// vhost-device-vsock, as Firecracker and libkrun do): a guest connection to CID 2 port P
    /// arrives on DIR/vsock_P, where something must listen (e.g. `guard collect --listen
    /// NAME=unix:DIR/vsock_7000 --key NAME=FILE --dir COPIES`). Keep DIR short: Unix socket
    /// paths hold 107 bytes.
    #[arg(long, value_name = "DIR")]
    vsock: Option<PathBuf>,
    /// Put this stream key file (`guard collect keygen FILE`) in the guest at
    /// /etc/guard/stream.key, mode 0400, for the guest command's `--stream-key`.
    #[arg(long, value_name = "FILE")]
    stream_key: Option<PathBuf>,
    /// Print the whole guest console after the run.
    #[arg(long)]
    console: bool,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub const EXIT_DIED: i32 = 100;
pub const EXIT_TIMED_OUT: i32 = 101;

pub fn run(args: VmArgs) -> Result<i32> {
    let mut config = VmConfig::new(&args.kernel, args.command.clone());
    // Fail on a bad kernel name before spending a minute on cargo build.
    vm::resolve_kernel(&args.kernel)?;
    config.memory_mib = args.memory;
    config.extra_cmdline = args.append.clone();
    config.cpus = args.cpus;
    config.timeout = Duration::from_secs(args.timeout);
    if let Some(accel) = args.accel {
        config.accel = accel;
    }
    config.vsock = args.vsock.as_deref().map(vm::VsockConfig::in_dir);
    if let Some(key) = &args.stream_key {
        let contents = std::fs::read(key)
            .with_context(|| format!("reading --stream-key {}", key.display()))?;
        config = config.file(vm::GUEST_KEY_PATH, contents, 0o400);
    }
    config.oom_score_adj = match args.oom_score_adj.as_str() {
        "none" => None,
        value => Some(value.parse().with_context(|| {
            format!("--oom-score-adj {value:?} is not an integer (or \"none\")")
        })?),
    };
    if !args.no_guard {
        if !args.no_build {
            cargo_build(&["build", "--release", "-p", "guard", "--features", "cli"])?;
            cargo_build(&["build", "--release", "-p", "guard-tests", "--bins"])?;
        }
        let release = paths::target_dir().join("release");
        for name in ["guard", "guard-stress"] {
            let path = release.join(name);
            if !path.is_file() {
                bail!(
                    "{} does not exist: build it (drop --no-build) or pass --no-guard",
                    path.display()
                );
            }
            config.binaries.push(path);
        }
    }
    config.binaries.extend(args.bins.iter().cloned());
    for spec in &args.files {
        let (host, guest) = spec
            .split_once(':')
            .with_context(|| format!("--file {spec:?}: expected HOST_PATH:GUEST_PATH"))?;
        let contents = std::fs::read(host).with_context(|| format!("--file: reading {host}"))?;
        let executable = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(host)?.permissions().mode() & 0o111 != 0
        };
        config = config.file(guest, contents, if executable { 0o755 } else { 0o644 });
    }

    let outcome = vm::run(&config)?;
    if args.console {
        eprintln!(
            "----- console -----\n{}\n-------------------",
            outcome.console
        );
    }
    let timing = format!(
        "boot {} | scenario {} | wall {:.2} s",
        outcome
            .boot_time
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "?".into()),
        outcome
            .scenario_time
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "?".into()),
        outcome.wall_time.as_secs_f64()
    );
    match &outcome.result {
        VmResult::Completed(done) => {
            use std::io::Write as _;
            if !args.json {
                std::io::stdout().write_all(&done.stdout)?;
                std::io::stdout().flush()?;
                std::io::stderr().write_all(&done.stderr)?;
            }
            let dir = args
                .results
                .clone()
                .unwrap_or_else(|| outcome.run_dir.join("results"));
            if !done.files.is_empty() {
                for (name, data) in &done.files {
                    // Names come from the guest: never let one climb out of the folder.
                    let relative = std::path::Path::new(name);
                    if !relative
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                    {
                        eprintln!("[vm] ignoring result file with an unsafe name {name:?}");
                        continue;
                    }
                    let path = dir.join(relative);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&path, data)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                eprintln!(
                    "[vm] {} result file(s) in {}",
                    done.files.len(),
                    dir.display()
                );
            }
            if args.json {
                println!("{}", json_summary(&outcome, Some(&dir)));
            }
            eprintln!("[vm] exit code {} | {timing}", done.exit_code);
            Ok(done.exit_code)
        }
        VmResult::Died { console_tail } => {
            if args.json {
                println!("{}", json_summary(&outcome, None));
            }
            eprintln!("[vm] VM DIED | {timing}\n--- console tail ---\n{console_tail}");
            eprintln!("[vm] run folder {}", outcome.run_dir.display());
            Ok(EXIT_DIED)
        }
        VmResult::TimedOut { console_tail } => {
            if args.json {
                println!("{}", json_summary(&outcome, None));
            }
            eprintln!(
                "[vm] VM TIMED OUT after {} s | {timing}\n--- console tail ---\n{console_tail}",
                args.timeout
            );
            eprintln!("[vm] run folder {}", outcome.run_dir.display());
            Ok(EXIT_TIMED_OUT)
        }
    }
}

/// A JSON string literal (hand-rolled: xtask stays free of serde).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_summary(outcome: &vm::VmOutcome, results_dir: Option<&std::path::Path>) -> String {
    let seconds = |d: Option<Duration>| {
        d.map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or_else(|| "null".into())
    };
    let path = |p: &std::path::Path| json_string(&p.display().to_string());
    let (result, exit_code, stdout, stderr, files, tail) = match &outcome.result {
        VmResult::Completed(done) => (
            "completed",
            done.exit_code.to_string(),
            json_string(&done.stdout_str()),
            json_string(&done.stderr_str()),
            format!(
                "{{{}}}",
                done.files
                    .iter()
                    .map(|(name, data)| format!("{}:{}", json_string(name), data.len()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "null".to_string(),
        ),
        VmResult::Died { console_tail } | VmResult::TimedOut { console_tail } => (
            if matches!(outcome.result, VmResult::Died { .. }) {
                "died"
            } else {
                "timed_out"
            },
            "null".into(),
            "null".into(),
            "null".into(),
            "{}".into(),
            json_string(console_tail),
        ),
    };
    format!(
        "{{\"result\":\"{result}\",\"exit_code\":{exit_code},\"stdout\":{stdout},\"stderr\":{stderr},\
         \"files\":{files},\"results_dir\":{},\"boot_s\":{},\"scenario_s\":{},\"wall_s\":{},\
         \"accel\":\"{}\",\"kernel\":{},\"run_dir\":{},\"console_tail\":{tail}}}",
        results_dir.map(path).unwrap_or_else(|| "null".into()),
        seconds(outcome.boot_time),
        seconds(outcome.scenario_time),
        seconds(Some(outcome.wall_time)),
        outcome.accel,
        path(&outcome.kernel),
        path(&outcome.run_dir),
    )
}

fn cargo_build(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("[vm] $ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(paths::workspace_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

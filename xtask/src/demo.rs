//! `cargo xtask demo`: the README's main job.
//!
//! Until the guest suite lands this shows the host half of the story: the capability report,
//! then a fork storm in a fresh cgroup, counted exactly by the BPF probe.
use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::cmd::{self, cargo};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Forks the demo workload makes inside its cgroup.
    #[arg(long, default_value_t = 1000)]
    pub forks: u64,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    // A fresh machine has nothing: install first (a second run only checks, in seconds).
    crate::setup::run(crate::setup::SetupArgs::default())?;
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "guard",
        "-p",
        "guard-tests",
        "--bins",
    ]))?;
    let bin_dir = workspace_root()?.join("target/release");
    let guard = bin_dir.join("guard");
    let stress = bin_dir.join("guard-stress");

    println!("\n## 1. What this kernel offers\n");
    cmd::run(Command::new(&guard).arg("probe"))?;

    println!("\n## 2. A fork storm in a fresh cgroup, counted by the eBPF probe\n");
    let mount = cgroup2_mount()?;
    let cgroup = mount.join(format!("guard-demo-{}", std::process::id()));
    cmd::run(
        Command::new(&guard)
            .args(["exec", "--id", "demo", "--cgroup"])
            .arg(&cgroup)
            .arg("--")
            .arg(&stress)
            .args(["fork", &args.forks.to_string()]),
    )?;
    println!(
        "\nThe workload reported its own tally (first JSON line); the guard's BPF counter and \
         the events delivered must both equal the successful forks."
    );
    Ok(())
}

pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

/// The cgroup2 mount point from /proc/self/mountinfo.
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 filesystem is mounted")
}

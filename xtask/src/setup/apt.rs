//! apt: the Debian packages the harness and the peers need, installed once.
use anyhow::{Context as _, Result};
use std::process::Command;

use super::*;

#[derive(Default)]
pub(super) struct Apt {
    /// `apt-get update` runs at most once per setup, and only when something is missing.
    updated: bool,
}

impl Apt {
    pub(super) fn update(&mut self) -> Result<()> {
        if !self.updated {
            run_root(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }
}

pub(super) fn is_root() -> bool {
    capture(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

/// Runs a command that needs root, through sudo when we are not root.
pub(super) fn run_root(cmd: &mut Command) -> Result<()> {
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    if is_root() {
        return run_cmd(cmd);
    }
    let mut sudo = Command::new("sudo");
    sudo.arg("-E")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(&mut sudo).context("needs root: run setup as root or with sudo available")
}

pub(super) fn dpkg_installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|status| status.trim() == "install ok installed")
        .unwrap_or(false)
}

pub(super) fn apt_packages(apt: &mut Apt, report: &mut Report) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        report.add("apt", Outcome::Present(APT_PACKAGES.join(" ")));
        return Ok(());
    }
    println!("setup: apt: missing {}", missing.join(" "));
    apt.update()?;
    run_root(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    report.add("apt", Outcome::Installed(missing.join(" ")));
    Ok(())
}

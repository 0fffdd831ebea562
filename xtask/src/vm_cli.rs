//! `cargo xtask vm`: boot a guest and run a command inside.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct VmArgs {}

pub fn run(_args: VmArgs) -> Result<i32> {
    Ok(0)
}

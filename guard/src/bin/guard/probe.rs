//! `guard probe`: what this kernel offers, and the tier that follows.
use std::process::ExitCode;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let report = guard::CapabilityReport::probe();
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

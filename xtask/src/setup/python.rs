//! Python packages the tests use: the Prometheus project's client, whose strict OpenMetrics
//! parser checks guard's metrics (`tests/check_metrics.py`).
use std::process::Command;

use super::*;

const PROMETHEUS_CLIENT: &str = "prometheus-client==0.26.0";

pub(super) fn python_packages(report: &mut Report) -> Result<()> {
    let present = || {
        capture(Command::new("python3").args(["-c", "import prometheus_client.openmetrics.parser"]))
            .is_ok()
    };
    if present() {
        report.add(
            "python prometheus-client",
            Outcome::Present("prometheus_client".into()),
        );
        return Ok(());
    }
    run_cmd(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        PROMETHEUS_CLIENT,
    ]))?;
    if !present() {
        anyhow::bail!("pip installed {PROMETHEUS_CLIENT} but python3 cannot import it");
    }
    report.add(
        "python prometheus-client",
        Outcome::Installed(PROMETHEUS_CLIENT.into()),
    );
    Ok(())
}

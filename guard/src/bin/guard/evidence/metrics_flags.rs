//! `--metrics ADDR`, shared by the commands that run a guard (exec, watch, run, selftest) and
//! by `collect`: the counters as OpenMetrics text at `http://ADDR/metrics` while they run.
use std::sync::Arc;

use anyhow::Context as _;
use guard::{
    Guard,
    metrics::{self, MetricsAddress, MetricsListener},
    sinks::event_log::EventLogGauge,
};

/// `--metrics ADDR`.
#[derive(clap::Args, Debug, Default)]
pub struct MetricsFlags {
    /// Serve every counter of the report, per container, as OpenMetrics text at
    /// http://ADDR/metrics while the command runs, for Prometheus to scrape: HOST:PORT
    /// (127.0.0.1:9464; port 0 picks a free one, printed on stderr) or unix:PATH. The metrics
    /// are listed in docs/METRICS.md.
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub metrics: Option<MetricsAddress>,
}

fn parse_address(text: &str) -> Result<MetricsAddress, String> {
    text.parse()
        .map_err(|error: metrics::MetricsError| error.to_string())
}

/// A metrics server running on the tokio runtime; stopped on drop.
pub struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MetricsFlags {
    /// Binds the address (before anything else runs, so a taken port fails the command at
    /// once) and says where it serves.
    pub async fn bind(&self) -> anyhow::Result<Option<MetricsListener>> {
        let Some(address) = &self.metrics else {
            return Ok(None);
        };
        let listener = MetricsListener::bind(address)
            .await
            .with_context(|| format!("--metrics {address}"))?;
        match listener.local_addr() {
            Some(bound) => eprintln!("guard: metrics at http://{bound}/metrics"),
            None => eprintln!("guard: metrics at {address} (GET /metrics)"),
        }
        Ok(Some(listener))
    }
}

/// Serves `guard`'s counters (and its log's figures) on `listener`, if there is one.
pub fn serve_guard(
    listener: Option<MetricsListener>,
    guard: &Arc<Guard>,
    log: Option<EventLogGauge>,
) -> Option<Served> {
    let listener = listener?;
    let guard = Arc::clone(guard);
    let render = move || {
        let guard = Arc::clone(&guard);
        let log = log.clone();
        async move {
            let snapshot = metrics::snapshot(&guard, log.as_ref()).await;
            metrics::render(&snapshot).map_err(|error| error.to_string())
        }
    };
    Some(Served(tokio::spawn(metrics::serve(listener, render))))
}

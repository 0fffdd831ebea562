//! The counters as OpenMetrics text, the exposition format Prometheus scrapes (feature
//! `metrics`): every counter a [`Report`](crate::Report) has, per container, named by
//! Prometheus conventions (`guard_fork_denied_total{container="web-1",cause="pids_max"}`, units
//! in names, `_total` for counters, HELP and TYPE lines).
//!
//! - [`encode`]: the text, from the reports (as their JSON: a live guard's and those a forensic
//!   log holds encode the same way), the reader's health, the log's and the stream's figures.
//! - [`snapshot`]: a running guard's figures, as of now; [`snapshot_of_log`]: a forensic log's,
//!   after the fact.
//! - [`serve`]: `GET /metrics` over HTTP on a TCP address or a Unix socket, the text made
//!   fresh by a caller's function on every scrape.
//!
//! docs/METRICS.md lists every metric with the report field it comes from.
use std::path::PathBuf;

pub mod encode;
mod from_log;
mod live;
pub mod serve;
#[cfg(test)]
mod tests;

pub use encode::{LogFigures, Snapshot, StreamFigures, render};
pub use from_log::snapshot_of_log;
pub use live::snapshot;
pub use serve::{MetricsAddress, MetricsListener, serve};

/// What can go wrong rendering or serving the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {address:?}: {why}")]
    Address { address: String, why: String },
    #[error("listening for metrics on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("metrics socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the metrics: {0}")]
    Encode(std::fmt::Error),
    #[error("the forensic log in {dir}: {why}")]
    Log { dir: PathBuf, why: String },
}

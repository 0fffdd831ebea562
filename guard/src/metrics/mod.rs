//! The counters as OpenMetrics text, the exposition format Prometheus scrapes (feature
//! `metrics`): every counter a [`Report`](crate::Report) has, per container, named by
//! Prometheus conventions (`guard_fork_denied_total{container="web-1",cause="pids_max"}`, units
//! in names, `_total` for counters, HELP and TYPE lines).
//!
//! - [`encode`]: the text, from the reports (as their JSON: a live guard's and those a forensic
//!   log holds encode the same way), the reader's health, the log's and the stream's figures.
//! - [`snapshot`]: a running guard's figures, as of now; [`snapshot_of_log`]: a forensic log's,
//!   after the fact.
//! - [`serve`](fn@serve): `GET /metrics` over HTTP on a TCP address or a Unix socket, the text made
//!   fresh by a caller's function on every scrape.
//!
//! docs/METRICS.md lists every metric with the report field it comes from.
use std::path::PathBuf;

pub mod encode;
mod from_log;
mod live;
mod report;
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
    /// A `--metrics` address that is neither `HOST:PORT` nor `unix:PATH`.
    #[error("metrics address {address:?}: {why}")]
    Address {
        /// The address as given.
        address: String,
        /// What was expected instead.
        why: String,
    },
    /// The address could not be bound (a port in use, no permission).
    #[error("listening for metrics on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// A Unix socket path that holds something else, or a stale socket that cannot go.
    #[error("metrics socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What is wrong with it.
        source: std::io::Error,
    },
    /// The text could not be written (a formatting error in the client library).
    #[error("encoding the metrics: {0}")]
    Encode(std::fmt::Error),
    /// A forensic log that cannot be read, or does not verify.
    #[error("the forensic log in {dir}: {why}")]
    Log {
        /// The log's directory.
        dir: PathBuf,
        /// Why it was refused.
        why: String,
    },
}

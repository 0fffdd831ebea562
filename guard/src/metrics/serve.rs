//! `GET /metrics` over HTTP/1.1 (hyper), on a TCP address or a Unix socket. Each scrape calls
//! the caller's function for fresh text; one task per connection, so a slow scraper holds only
//! its own.
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use super::MetricsError;
use crate::stream::address::unix_socket_path;

/// OpenMetrics' media type; Prometheus asks for it and accepts it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where metrics are served: `HOST:PORT` (e.g. `127.0.0.1:9464`) or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    /// A TCP address, `127.0.0.1:9464`.
    Tcp(SocketAddr),
    /// A Unix socket, `unix:/run/guard/metrics.sock`.
    Unix(PathBuf),
}

impl FromStr for MetricsAddress {
    type Err = MetricsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| MetricsError::Address {
            address: text.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = unix_socket_path(text) {
            return path.map(MetricsAddress::Unix).map_err(bad);
        }
        text.parse().map(MetricsAddress::Tcp).map_err(|_| {
            bad("expected HOST:PORT with a numeric address (127.0.0.1:9464, [::1]:9464) or unix:PATH")
        })
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Tcp(address) => write!(f, "{address}"),
            MetricsAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound metrics socket: binding first lets a caller refuse a taken port before it starts
/// anything else.
pub enum MetricsListener {
    /// Bound to a TCP address.
    Tcp(TcpListener),
    /// Bound to a Unix socket at the path, removed again on drop.
    Unix(UnixListener, PathBuf),
}

impl MetricsListener {
    /// Binds `address` (inside a tokio runtime). A stale Unix socket file is replaced; any
    /// other file at that path is an error.
    pub async fn bind(address: &MetricsAddress) -> Result<Self, MetricsError> {
        let listen = |source| MetricsError::Listen {
            address: address.to_string(),
            source,
        };
        match address {
            MetricsAddress::Tcp(socket) => Ok(MetricsListener::Tcp(
                TcpListener::bind(socket).await.map_err(listen)?,
            )),
            MetricsAddress::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(MetricsListener::Unix(
                    UnixListener::bind(path).map_err(listen)?,
                    path.clone(),
                ))
            }
        }
    }

    /// The TCP address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            MetricsListener::Tcp(listener) => listener.local_addr().ok(),
            MetricsListener::Unix(..) => None,
        }
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        if let MetricsListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), MetricsError> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| MetricsError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(MetricsError::Socket {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ),
        }),
        Err(_) => Ok(()),
    }
}

/// Serves `GET /metrics` with the text `render` makes, for ever. Other paths get 404, other
/// methods 405; a failed render is a 500 with its message.
pub async fn serve<F, Fut>(listener: MetricsListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    loop {
        let accepted =
            match &listener {
                MetricsListener::Tcp(tcp) => tcp.accept().await.map(|(stream, _)| {
                    tokio::spawn(connection(TokioIo::new(stream), render.clone()))
                }),
                MetricsListener::Unix(unix, _) => unix.accept().await.map(|(stream, _)| {
                    tokio::spawn(connection(TokioIo::new(stream), render.clone()))
                }),
            };
        if let Err(error) = accepted {
            warn!(%error, "accepting a metrics connection");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn connection<I, F, Fut>(io: I, render: F)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let render = render.clone();
        async move { Ok::<_, Infallible>(respond(&request, render).await) }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        debug!(%error, "a metrics connection ended with an error");
    }
}

async fn respond<F, Fut>(request: &Request<Incoming>, render: F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    let plain = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            plain,
            "guard serves its counters at /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "GET /metrics\n".into(),
        );
    }
    match render().await {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            plain,
            format!("rendering the metrics failed: {error}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "127.0.0.1:9464".parse::<MetricsAddress>().unwrap(),
            MetricsAddress::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/guard.sock".parse::<MetricsAddress>().unwrap(),
            MetricsAddress::Unix("/run/guard.sock".into())
        );
        for bad in ["", "unix:", "localhost:9464", "9464", "127.0.0.1"] {
            let error = bad.parse::<MetricsAddress>().unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}

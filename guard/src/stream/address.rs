//! Where a stream goes: `unix:PATH` (host tests, and the host end of a VMM's vsock bridge) or
//! `vsock:PORT` / `vsock:CID:PORT` (a guest's AF_VSOCK socket; CID 2 is the host).
use std::{
    fmt,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use super::StreamError;

/// The host's context id, as a guest addresses it.
pub const HOST_CID: u32 = 2;

/// Where a sender connects. Parses from `unix:PATH`, `vsock:PORT` (CID [`HOST_CID`]) or
/// `vsock:CID:PORT`, and displays as `unix:PATH` or `vsock:CID:PORT`.
///
/// ```
/// use guard::stream::{Address, HOST_CID};
///
/// let host: Address = "vsock:7000".parse()?;
/// assert_eq!(host, Address::Vsock { cid: HOST_CID, port: 7000 });
/// assert_eq!(host.to_string(), "vsock:2:7000");
/// assert_eq!("vsock:3:9".parse::<Address>()?, Address::Vsock { cid: 3, port: 9 });
/// let relay: Address = "unix:/run/guard/vsock.sock_7000".parse()?;
/// assert_eq!(relay, Address::Unix("/run/guard/vsock.sock_7000".into()));
/// for bad in ["tcp:1", "unix:", "vsock:x"] {
///     assert!(bad.parse::<Address>().is_err());
/// }
/// # Ok::<(), guard::stream::StreamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket (host tests, and the host end of a VMM's vsock bridge).
    Unix(PathBuf),
    /// An AF_VSOCK socket.
    Vsock {
        /// The context id: [`HOST_CID`] for the host; ignored when listening (any CID).
        cid: u32,
        /// The port.
        port: u32,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

impl FromStr for Address {
    type Err = StreamError;

    fn from_str(text: &str) -> Result<Self, StreamError> {
        let bad = |why: &str| StreamError::Address {
            address: text.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = unix_socket_path(text) {
            return path.map(Address::Unix).map_err(bad);
        }
        let Some(rest) = text.strip_prefix("vsock:") else {
            return Err(bad("expected unix:PATH, vsock:PORT or vsock:CID:PORT"));
        };
        let number = |part: &str, what: &str| {
            part.parse::<u32>()
                .map_err(|_| bad(&format!("{what} {part:?} is not a number")))
        };
        match rest.split_once(':') {
            Some((cid, port)) => Ok(Address::Vsock {
                cid: number(cid, "the CID")?,
                port: number(port, "the port")?,
            }),
            None => Ok(Address::Vsock {
                cid: HOST_CID,
                port: number(rest, "the port")?,
            }),
        }
    }
}

/// The socket path of a `unix:PATH` address, the form every socket address of guard's takes
/// for a Unix socket (a stream's, the metrics server's): None when `text` is not one,
/// Err(why) when its path is empty.
pub fn unix_socket_path(text: &str) -> Option<Result<PathBuf, &'static str>> {
    let path = text.strip_prefix("unix:")?;
    Some(if path.is_empty() {
        Err("unix: needs a socket path")
    } else {
        Ok(PathBuf::from(path))
    })
}

/// One stream connection, either kind.
pub struct Connection {
    inner: Inner,
}

enum Inner {
    Unix(UnixStream),
    Vsock(File),
}

impl Connection {
    /// Connects to `address`.
    pub fn connect(address: &Address) -> io::Result<Self> {
        let inner = match address {
            Address::Unix(path) => Inner::Unix(UnixStream::connect(path)?),
            Address::Vsock { cid, port } => Inner::Vsock(vsock_connect(*cid, *port)?),
        };
        Ok(Self { inner })
    }

    /// A second handle on the same connection (one thread reads, another writes).
    pub fn try_clone(&self) -> io::Result<Self> {
        let inner = match &self.inner {
            Inner::Unix(stream) => Inner::Unix(stream.try_clone()?),
            Inner::Vsock(file) => Inner::Vsock(file.try_clone()?),
        };
        Ok(Self { inner })
    }

    /// Bounds every read (None: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        set_timeout(self.as_raw_fd(), libc::SO_RCVTIMEO, timeout)
    }

    /// Bounds every write: a stalled link then fails a write instead of holding it for ever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        set_timeout(self.as_raw_fd(), libc::SO_SNDTIMEO, timeout)
    }

    /// Ends both directions (the peer reads end of file).
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on a descriptor this connection owns.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix(stream) => stream.as_raw_fd(),
            Inner::Vsock(file) => file.as_raw_fd(),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Unix(stream) => stream.read(buf),
            Inner::Vsock(file) => file.read(buf),
        }
    }
}

/// The largest single send on a vsock connection. A guest kernel turns one send into one
/// virtio packet of up to 64 KiB, and newer kernels (Debian's 6.12.118 among them) make a
/// packet above 32 KiB a non-linear skb whose payload spans several descriptors. rust-vmm's
/// vhost-device-vsock 0.3 (virtio-vsock 0.10) reads a payload from one descriptor only and
/// drops such a packet ("error reading TX packet: DescriptorLengthTooSmall"): the connection
/// then stalls for good. Sends of at most 16 KiB are linear skbs on every kernel.
pub const MAX_VSOCK_SEND: usize = 16 << 10;

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = match self.inner {
            Inner::Unix(_) => buf.len(),
            Inner::Vsock(_) => buf.len().min(MAX_VSOCK_SEND),
        };
        // send(2) with MSG_NOSIGNAL: a peer gone mid-write is an error, not a SIGPIPE.
        // SAFETY: buf is valid for len bytes; the descriptor is this connection's.
        let sent = unsafe {
            libc::send(
                self.as_raw_fd(),
                buf.as_ptr().cast(),
                len,
                libc::MSG_NOSIGNAL,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn set_timeout(fd: RawFd, option: libc::c_int, timeout: Option<Duration>) -> io::Result<()> {
    let timeout = timeout.unwrap_or_default();
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval of the right size.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn vsock_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zero is a valid start.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_connect(cid: u32, port: u32) -> io::Result<File> {
    let socket = vsock_socket()?;
    let address = vsock_address(cid, port);
    // SAFETY: connect(2) with a sockaddr_vm of the right size.
    let result = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_say_why() {
        assert_eq!(
            "unix:/tmp/s".parse::<Address>().unwrap(),
            Address::Unix("/tmp/s".into())
        );
        assert_eq!(
            "vsock:1234".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: HOST_CID,
                port: 1234
            }
        );
        assert_eq!(
            "vsock:3:9".parse::<Address>().unwrap(),
            Address::Vsock { cid: 3, port: 9 }
        );
        for (bad, why) in [
            ("tcp:1", "expected unix:PATH"),
            ("unix:", "needs a socket path"),
            ("vsock:x", "the port \"x\" is not a number"),
        ] {
            let error = bad.parse::<Address>().unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains(why), "{error}");
        }
    }

    #[test]
    fn a_unix_socket_path_is_what_follows_unix() {
        assert_eq!(
            unix_socket_path("unix:/run/g.sock"),
            Some(Ok("/run/g.sock".into()))
        );
        assert!(unix_socket_path("unix:").unwrap().is_err());
        assert_eq!(unix_socket_path("vsock:7000"), None);
    }
}

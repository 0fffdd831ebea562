//! The accept loops: one task per listener, each connection a task of its own on the event
//! loop. An accept that fails (the open-file limit, a client gone) costs that one connection
//! and a short pause, never the collector; the open-file limit is raised at start and the
//! connection caps keep a reserve under it, so accept keeps working.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, net::UnixListener, sync::Notify};
use tracing::warn;

use super::{
    Shared,
    cid_table::CidTable,
    connection::{self, Identity},
    socket::Socket,
    status::Counters,
};
use crate::pipeline::lock;
use crate::stream::StreamError;

/// How long an accept loop pauses after accept(2) failed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Raises the soft open-file limit to the hard one; returns the files the connections may
/// take: the limit less those open now and the reserve.
pub(super) fn fd_budget(reserve: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            warn!(%error, "raising the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |dir| dir.count() as u64);
    soft.saturating_sub(open + reserve)
}

/// A listening socket's path for a guest, bound now (a socket file left there by an earlier
/// collector is replaced; anything else there is an error).
pub(super) fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, StreamError> {
    let failed = |source| StreamError::Listen {
        address: format!("unix:{}", path.display()),
        source,
    };
    if std::fs::symlink_metadata(path)
        .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
    {
        std::fs::remove_file(path).map_err(failed)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// A bound listener's accept loop, until `stop`; each connection is `identity`'s.
pub(super) async fn accept_unix(
    shared: Arc<Shared>,
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    identity: Arc<Mutex<Identity>>,
    stop: Arc<Notify>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot listen");
            return;
        }
    };
    loop {
        let room = tokio::select! {
            () = stop.notified() => break,
            room = shared.registry.room() => room,
        };
        tokio::select! {
            () = stop.notified() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let identity = lock(&identity).clone();
                    let admitted = room.admit(Some(&identity.name));
                    tokio::spawn(connection::serve(
                        shared.clone(),
                        Socket::Unix(stream),
                        Ok(identity),
                        admitted,
                    ));
                }
                Err(error) => accept_failed(&shared, &path.display().to_string(), error).await,
            },
        }
    }
    drop(listener);
    if std::fs::symlink_metadata(&path)
        .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
    {
        let _ = std::fs::remove_file(&path);
    }
}

async fn accept_failed(shared: &Shared, listener: &str, error: std::io::Error) {
    Counters::bump(&shared.counters.accept_errors);
    warn!(listener, %error, "accepting a stream connection (it is lost; the collector goes on)");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// An AF_VSOCK listening socket on `port` (any CID), non-blocking.
pub(super) fn bind_vsock(port: u32) -> Result<OwnedFd, StreamError> {
    let failed = |source| StreamError::Listen {
        address: format!("vsock:{port}"),
        source,
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = vsock_address(libc::VMADDR_CID_ANY, port);
    // SAFETY: bind(2) and listen(2) with a sockaddr_vm of the right size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) == 0
            && libc::listen(socket.as_raw_fd(), 1024) == 0
    };
    if !bound {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok(socket)
}

fn vsock_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zero is a valid start.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

/// The AF_VSOCK accept loop: each connection is the guest the table names for its peer CID
/// (a CID the table does not name is refused).
pub(super) async fn accept_vsock(
    shared: Arc<Shared>,
    socket: OwnedFd,
    table: Arc<CidTable>,
    stop: Arc<Notify>,
) {
    // SAFETY: the AsyncFd owns the descriptor for as long as it lives.
    let listener = match unsafe { AsyncFd::register(socket) }.map_err(std::io::Error::from) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "cannot poll the vsock listener");
            return;
        }
    };
    loop {
        let room = tokio::select! {
            () = stop.notified() => return,
            room = shared.registry.room() => room,
        };
        let mut ready = tokio::select! {
            () = stop.notified() => return,
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(error) => return warn!(%error, "polling the vsock listener"),
            },
        };
        let mut peer = vsock_address(0, 0);
        let mut length = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: accept4(2) into a sockaddr_vm of the length given.
        let client = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut peer as *mut libc::sockaddr_vm).cast(),
                &mut length,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if client < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                ready.clear_ready();
            } else {
                accept_failed(&shared, "vsock", error).await;
            }
            continue;
        }
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let client = unsafe { OwnedFd::from_raw_fd(client) };
        let identity = table.identity(peer.svm_cid);
        let admitted = room.admit(
            identity
                .as_ref()
                .ok()
                .map(|identity| identity.name.as_str()),
        );
        // SAFETY: the AsyncFd owns the descriptor for as long as it lives.
        match unsafe { AsyncFd::register(client) }.map_err(std::io::Error::from) {
            Ok(client) => {
                tokio::spawn(connection::serve(
                    shared.clone(),
                    Socket::Vsock(client),
                    identity,
                    admitted,
                ));
            }
            Err(error) => accept_failed(&shared, "vsock", error).await,
        }
    }
}

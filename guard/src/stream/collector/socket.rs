//! A guest's connection on the collector's event loop (a Unix socket, or an AF_VSOCK one
//! polled through the runtime), and the reading of its lines within the shared memory budget:
//! a connection holds a buffer only while it has bytes of an unfinished line, and every byte
//! of capacity it holds is counted.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, net::UnixStream};

use super::registry::Ticket;

/// A write that waits longer than this (a guest that does not read) ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection, either kind.
pub(super) enum Socket {
    Unix(UnixStream),
    Vsock(AsyncFd<OwnedFd>),
}

impl Socket {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Socket::Unix(stream) => stream.readable().await,
            Socket::Vsock(fd) => fd.readable().await.map(drop),
        }
    }

    /// Reads what is there (Ok(0): the end; WouldBlock: nothing yet).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(stream) => stream.try_read(buf),
            Socket::Vsock(fd) => {
                // SAFETY: read(2) into `buf`, on a descriptor this socket owns.
                let read =
                    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if read < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(read as usize)
                }
            }
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Socket::Unix(stream) => stream.writable().await,
            Socket::Vsock(fd) => fd.writable().await.map(drop),
        }
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(stream) => stream.try_write(bytes),
            Socket::Vsock(fd) => {
                // SAFETY: send(2) from `bytes`; MSG_NOSIGNAL: a peer gone is an error, not a
                // SIGPIPE.
                let sent = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    )
                };
                if sent < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(sent as usize)
                }
            }
        }
    }

    /// One write of `bytes` that never waits (a refusal: the connection closes next, whether
    /// the peer reads it or not).
    pub fn send_once(&self, bytes: &[u8]) {
        let _ = self.try_write(bytes);
    }

    /// Writes all of `bytes`, within the write timeout.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        let writing = async {
            while !bytes.is_empty() {
                self.writable().await?;
                match self.try_write(bytes) {
                    Ok(n) => bytes = &bytes[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Socket::Vsock(fd) = self {
                            let _ = fd.writable().await.map(|mut guard| guard.clear_ready());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, writing)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the guest reads nothing of what the host sends",
                ))
            })
    }
}

/// What one read gave.
pub(super) enum Read {
    /// Bytes arrived (there may be complete lines now).
    Data,
    /// The peer closed the connection.
    End,
    /// The line memory budget ran out and this connection holds the most.
    OverBudget,
}

/// A connection's unfinished bytes, counted against the line memory budget by capacity.
pub(super) struct LineReader {
    buf: Vec<u8>,
    held: usize,
}

impl LineReader {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            held: 0,
        }
    }

    /// Bytes buffered: complete lines not taken yet and the unfinished one.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Waits for bytes and reads up to `chunk` of them.
    pub async fn read(
        &mut self,
        socket: &Socket,
        ticket: &Ticket,
        chunk: usize,
    ) -> io::Result<Read> {
        loop {
            socket.readable().await?;
            let wanted = self.buf.len() + chunk;
            if wanted > self.held {
                if !ticket.reserve(wanted - self.held).await {
                    return Ok(Read::OverBudget);
                }
                self.held = wanted;
            }
            self.buf.reserve_exact(wanted - self.buf.len());
            let start = self.buf.len();
            self.buf.resize(wanted, 0);
            let result = socket.try_read(&mut self.buf[start..]);
            let got = *result.as_ref().unwrap_or(&0);
            self.buf.truncate(start + got);
            match result {
                Ok(0) => return Ok(Read::End),
                Ok(_) => return Ok(Read::Data),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Socket::Vsock(fd) = socket {
                        let _ = fd.readable().await.map(|mut guard| guard.clear_ready());
                    }
                    self.shrink(ticket);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The bytes up to and including the last newline (None: no complete line yet).
    pub fn complete(&self) -> Option<&[u8]> {
        let end = self.buf.iter().rposition(|&b| b == b'\n')?;
        Some(&self.buf[..=end])
    }

    /// The first complete line, without its newline, taken out.
    pub fn take_line(&mut self, ticket: &Ticket) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line = self.buf[..end].to_vec();
        self.consume(end + 1, ticket);
        Some(line)
    }

    /// Drops the first `bytes` (lines handled), freeing the buffer once it is empty.
    pub fn consume(&mut self, bytes: usize, ticket: &Ticket) {
        self.buf.drain(..bytes);
        self.shrink(ticket);
    }

    fn shrink(&mut self, ticket: &Ticket) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
            ticket.release(std::mem::take(&mut self.held));
        }
    }

    /// Gives the budget back (the connection ends).
    pub fn release(&mut self, ticket: &Ticket) {
        self.buf = Vec::new();
        ticket.release(std::mem::take(&mut self.held));
    }
}

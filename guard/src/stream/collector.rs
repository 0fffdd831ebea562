//! The host side: accepts guests' streams, stores each guest's log under `DIR/<guest>/` and
//! ends every stream with a verdict. A bad connection costs only itself: its error is its own
//! verdict, and no other guest's copy is touched.
use std::{
    collections::{BTreeMap, HashSet},
    io::{BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tracing::warn;

use crate::pipeline::lock;

use super::{
    Connection, Listener, StreamError, StreamVerdict,
    store::{GuestStore, Received},
    wire::{self, Ack, Control, ReadLine, Resume},
};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// One guest as the collector last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestStatus {
    /// The guest's name (None: the connection never said a valid hello).
    pub guest: Option<String>,
    /// The connection's number, from 1, in the order they were accepted.
    pub connection: u64,
    /// The boot id the guest's hello gave.
    pub boot_id: Option<String>,
    /// Records the host holds for this guest.
    pub records: u64,
    /// Records this connection added.
    pub received: u64,
    /// Records this connection resent that matched the copy held.
    pub matched: u64,
    /// None while the stream is open.
    pub verdict: Option<StreamVerdict>,
}

impl std::fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guest = self.guest.as_deref().unwrap_or("?");
        write!(
            f,
            "{guest} (connection {}): {} record(s) held, {} received",
            self.connection, self.records, self.received
        )?;
        if self.matched > 0 {
            write!(f, ", {} resent and matched", self.matched)?;
        }
        match &self.verdict {
            Some(verdict) => write!(f, ": {verdict}"),
            None => write!(f, ": streaming"),
        }
    }
}

type Observer = dyn Fn(&GuestStatus) + Send + Sync;

struct Shared {
    dir: PathBuf,
    streaming: Mutex<HashSet<String>>,
    latest: Mutex<BTreeMap<String, GuestStatus>>,
    connections: AtomicU64,
    observer: Box<Observer>,
}

/// A collector writing under one directory. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Collector {
    shared: Arc<Shared>,
    hello_timeout: Duration,
}

impl Collector {
    /// A collector storing under `dir` (created if missing); `observer` hears every status
    /// change (a stream opened, a stream ended with its verdict).
    pub fn new(
        dir: impl AsRef<Path>,
        observer: impl Fn(&GuestStatus) + Send + Sync + 'static,
    ) -> Result<Self, StreamError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StreamError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                streaming: Mutex::default(),
                latest: Mutex::default(),
                connections: AtomicU64::new(0),
                observer: Box::new(observer),
            }),
            hello_timeout: HELLO_TIMEOUT,
        })
    }

    /// How long a new connection may take to say hello ([`HELLO_TIMEOUT`] unless set).
    pub fn with_hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Accepts connections for ever, each in a thread of its own.
    pub fn serve(&self, listener: &Listener) -> Result<(), StreamError> {
        loop {
            match listener.accept() {
                Ok(connection) => {
                    let collector = self.clone();
                    std::thread::Builder::new()
                        .name("guard-collect".into())
                        .spawn(move || collector.handle(connection))
                        .map_err(StreamError::Thread)?;
                }
                // A client that vanished between connect and accept, or a transient limit.
                Err(error) => {
                    warn!(%error, "accepting a stream connection");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The latest status of every guest seen, by name.
    pub fn statuses(&self) -> Vec<GuestStatus> {
        lock(&self.shared.latest).values().cloned().collect()
    }

    /// Where guest `name`'s copy is stored.
    pub fn guest_dir(&self, name: &str) -> PathBuf {
        self.shared.dir.join(name)
    }

    /// Serves one connection to its end, in the calling thread; returns its final status.
    pub fn handle(&self, connection: Connection) -> GuestStatus {
        let mut status = GuestStatus {
            guest: None,
            connection: self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1,
            boot_id: None,
            records: 0,
            received: 0,
            matched: 0,
            verdict: None,
        };
        let verdict = self.stream(connection, &mut status);
        status.verdict = Some(verdict);
        self.publish(&status);
        status
    }

    fn publish(&self, status: &GuestStatus) {
        if let Some(guest) = &status.guest {
            lock(&self.shared.latest).insert(guest.clone(), status.clone());
        }
        (self.shared.observer)(status);
    }

    fn stream(&self, connection: Connection, status: &mut GuestStatus) -> StreamVerdict {
        let refused = |reason: String| StreamVerdict::Refused { reason };
        let Ok(reading) = connection.try_clone() else {
            return refused("cannot read the connection".into());
        };
        let mut writer = connection;
        let hello_timeout = self.hello_timeout;
        let _ = writer.set_read_timeout(Some(hello_timeout));
        let _ = writer.set_write_timeout(Some(hello_timeout));
        let mut reader = BufReader::with_capacity(64 << 10, reading);
        let mut refuse = |reason: String| {
            let _ = writer.write_all(
                &Control::Refused {
                    reason: reason.clone(),
                }
                .to_line(),
            );
            refused(reason)
        };
        let hello = match wire::read_line(&mut reader, wire::MAX_CONTROL_BYTES) {
            Ok(ReadLine::Line(line)) => match serde_json::from_slice::<Control>(&line) {
                Ok(Control::Hello(hello)) => hello,
                _ => return refuse(format!("the first line is not a hello: {}", preview(&line))),
            },
            Ok(ReadLine::TooLong) => return refuse("the hello is too long".into()),
            Ok(ReadLine::End | ReadLine::Torn(_)) => {
                return refused("the connection closed before its hello".into());
            }
            Err(error) => {
                return refused(format!("no hello within {:?}: {error}", hello_timeout));
            }
        };
        if hello.version != wire::VERSION {
            return refuse(format!(
                "protocol version {} (this collector speaks {})",
                hello.version,
                wire::VERSION
            ));
        }
        if !wire::valid_guest_name(&hello.guest) {
            return refuse(StreamError::GuestName { name: hello.guest }.to_string());
        }
        let guest = hello.guest.clone();
        if !lock(&self.shared.streaming).insert(guest.clone()) {
            return refuse(format!("guest {guest} is already streaming"));
        }
        let _streaming = Streaming {
            shared: &self.shared,
            guest: guest.clone(),
        };
        status.guest = Some(guest.clone());
        status.boot_id = Some(hello.boot_id);
        let mut store = match GuestStore::open(&self.guest_dir(&guest)) {
            Ok(store) => store,
            Err(verdict) => {
                let _ = writer.write_all(
                    &Control::Refused {
                        reason: verdict.to_string(),
                    }
                    .to_line(),
                );
                return verdict;
            }
        };
        status.records = store.next_seq();
        let resume = Control::Resume(Resume {
            next_seq: store.next_seq(),
            head: store.head(),
        });
        if let Err(error) = writer.write_all(&resume.to_line()) {
            warn!(%guest, %error, "sending the resume point");
            return StreamVerdict::GuestDied {
                after_seq: last_seq(&store),
            };
        }
        self.publish(status);
        // From here the guest may be idle for as long as it likes.
        let _ = writer.set_read_timeout(None);
        loop {
            let line = match wire::read_line(&mut reader, wire::MAX_RECORD_BYTES) {
                Ok(ReadLine::Line(line)) => line,
                Ok(ReadLine::End) | Ok(ReadLine::Torn(_)) | Err(_) => {
                    return if store.stopped() {
                        StreamVerdict::Complete {
                            last_seq: store.next_seq().saturating_sub(1),
                        }
                    } else {
                        StreamVerdict::GuestDied {
                            after_seq: last_seq(&store),
                        }
                    };
                }
                Ok(ReadLine::TooLong) => {
                    return StreamVerdict::Invalid {
                        seq: None,
                        defect: format!(
                            "a line longer than {} bytes after seq {:?}",
                            wire::MAX_RECORD_BYTES,
                            last_seq(&store)
                        ),
                    };
                }
            };
            match store.receive(&line) {
                Ok(Received::Stored { .. }) => status.received += 1,
                Ok(Received::Matched) => status.matched += 1,
                Err(verdict) => return verdict,
            }
            status.records = store.next_seq();
            // Acknowledge once the lines that arrived together are stored.
            if reader.buffer().is_empty() {
                let ack = Control::Ack(Ack {
                    next_seq: store.next_seq(),
                });
                let _ = writer.write_all(&ack.to_line());
            }
        }
    }
}

/// Holds a guest's name as streaming; released when the stream ends.
struct Streaming<'a> {
    shared: &'a Shared,
    guest: String,
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        lock(&self.shared.streaming).remove(&self.guest);
    }
}

fn last_seq(store: &GuestStore) -> Option<u64> {
    store.next_seq().checked_sub(1)
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("{text:?}")
}

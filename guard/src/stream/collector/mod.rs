//! The host side: accepts guests' streams and stores each guest's log under `DIR/<guest>/`,
//! ending every stream with a verdict.
//!
//! The guest's identity is the transport's: each listener has the name the host gave it (a
//! VM's Unix socket, a VM directory's subdirectory, an AF_VSOCK peer CID in the host's table),
//! a hello under another name is refused, and with a key the connection must prove it is the
//! agent (docs/STREAM.md). Everything anyone who reaches a listener can drive is bounded
//! (`registry`: connections, the handshake, idleness, line memory; `store`: bytes, files, free
//! space), on a fixed set of threads: an event loop for the connections, a few store threads,
//! one group-commit thread. A bad connection costs only itself.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use super::{StreamError, store::GuestStore, store::nofollow::DirFd, wire};
use crate::pipeline::lock;

mod cid_table;
mod commit;
mod connection;
mod listeners;
mod options;
mod pool;
mod registry;
mod socket;
mod status;
mod streaming;
mod vm_dir;

pub use cid_table::CidTable;
pub use options::{Acks, Auth, CollectorOptions, Endpoint, Limits, VmDir};
pub use status::{CollectorCounters, GuestStatus};

use connection::Identity;

type Observer = dyn Fn(&GuestStatus) + Send + Sync;

/// One listener the collector serves.
struct Listening {
    stop: Arc<Notify>,
}

/// What the connections' tasks share.
pub(super) struct Shared {
    root: DirFd,
    options: CollectorOptions,
    observer: Box<Observer>,
    guests: Mutex<HashMap<String, Arc<Mutex<GuestStore>>>>,
    latest: Mutex<BTreeMap<String, GuestStatus>>,
    listening: Mutex<HashMap<String, Listening>>,
    connections: AtomicU64,
    registry: Arc<registry::Registry>,
    pool: pool::StorePool,
    committer: Option<Arc<commit::Committer>>,
    counters: status::Counters,
    stopping: AtomicBool,
}

/// A collector writing under one directory, on its own threads (an event loop for the
/// connections, store threads, a group-commit thread). Cheap to clone: clones share it; the
/// last one dropped stops it.
#[derive(Clone)]
pub struct Collector {
    shared: Arc<Shared>,
    runtime: Arc<RuntimeOwner>,
}

/// Stops everything when the last [`Collector`] handle goes.
struct RuntimeOwner {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
}

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.registry.cut_all();
        for listening in lock(&self.shared.listening).values() {
            listening.stop.notify_one();
        }
        if let Some(runtime) = self.runtime.take() {
            // Inside another runtime a blocking wait is not allowed: let the tasks end there.
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            }
        }
        self.shared.pool.stop();
        if let Some(committer) = &self.shared.committer {
            committer.stop();
        }
    }
}

impl Collector {
    /// A collector with the default options storing under `dir` (created if missing);
    /// `observer` hears every status change (a stream opened, a connection ended with its
    /// verdict). It listens nowhere until told ([`Collector::listen`], …).
    pub fn new(
        dir: impl AsRef<Path>,
        observer: impl Fn(&GuestStatus) + Send + Sync + 'static,
    ) -> Result<Self, StreamError> {
        Self::start(CollectorOptions::new(dir.as_ref()), observer)
    }

    /// A collector with `options`: its directory opened, the open-file limit raised, its
    /// threads started.
    pub fn start(
        options: CollectorOptions,
        observer: impl Fn(&GuestStatus) + Send + Sync + 'static,
    ) -> Result<Self, StreamError> {
        let root = DirFd::root(&options.dir).map_err(|source| StreamError::Dir {
            path: options.dir.clone(),
            source,
        })?;
        let fd_budget = listeners::fd_budget(options.limits.fd_reserve);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.io_threads.max(1))
            .thread_name("guard-collect")
            .enable_all()
            .build()
            .map_err(StreamError::Thread)?;
        let committer = match options.acks {
            Acks::Durable { interval } => {
                Some(commit::Committer::start(interval).map_err(StreamError::Thread)?)
            }
            Acks::Written => None,
        };
        let shared = Arc::new(Shared {
            root,
            registry: registry::Registry::new(options.limits, fd_budget),
            pool: pool::StorePool::start(options.store_threads).map_err(StreamError::Thread)?,
            committer,
            options,
            observer: Box::new(observer),
            guests: Mutex::default(),
            latest: Mutex::default(),
            listening: Mutex::default(),
            connections: AtomicU64::new(0),
            counters: status::Counters::default(),
            stopping: AtomicBool::new(false),
        });
        Ok(Self {
            runtime: Arc::new(RuntimeOwner {
                runtime: Some(runtime),
                shared: shared.clone(),
            }),
            shared,
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .runtime
            .as_ref()
            .expect("running until dropped")
            .handle()
    }

    /// Listens for one guest at `endpoint.path`, under `endpoint.name` (a name already
    /// listened for, or not a guest name, is an error).
    pub fn listen(&self, endpoint: Endpoint) -> Result<(), StreamError> {
        let _entered = self.handle().enter();
        let identity = Identity {
            name: endpoint.name,
            auth: endpoint.auth,
        };
        self.shared.listen_as(identity, endpoint.path).map(drop)
    }

    /// Stops listening for `name` (its open streams go on); false if it was not listened for.
    pub fn unlisten(&self, name: &str) -> bool {
        self.shared.unlisten(name)
    }

    /// Follows a directory of VMs ([`VmDir`]): a listener per VM, as VMs come and go.
    pub fn watch_vm_dir(&self, vm_dir: VmDir) -> Result<(), StreamError> {
        if !vm_dir.dir.is_dir() {
            return Err(StreamError::Dir {
                path: vm_dir.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        self.handle()
            .spawn(vm_dir::follow(self.shared.clone(), vm_dir));
        Ok(())
    }

    /// Listens on AF_VSOCK `port` (any CID); each connection is the guest `table` names for
    /// its peer CID.
    pub fn listen_vsock(&self, port: u32, table: CidTable) -> Result<(), StreamError> {
        let socket = listeners::bind_vsock(port)?;
        let _entered = self.handle().enter();
        let stop = Arc::new(Notify::new());
        self.handle().spawn(listeners::accept_vsock(
            self.shared.clone(),
            socket,
            Arc::new(table),
            stop,
        ));
        Ok(())
    }

    /// The names listened for now.
    pub fn listening(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.shared.listening).keys().cloned().collect();
        names.sort();
        names
    }

    /// The latest status of every guest's stream, by name.
    pub fn statuses(&self) -> Vec<GuestStatus> {
        lock(&self.shared.latest).values().cloned().collect()
    }

    /// What the collector turned away, cut and loaded so far.
    pub fn counters(&self) -> CollectorCounters {
        self.shared.counters.snapshot()
    }

    /// The connections the collector takes at once (its cap, or fewer under the open-file
    /// limit).
    pub fn max_connections(&self) -> usize {
        self.shared.registry.max_connections()
    }

    /// Where guest `name`'s copy is stored.
    pub fn guest_dir(&self, name: &str) -> PathBuf {
        self.shared.options.dir.join(name)
    }
}

impl Shared {
    fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn publish(&self, status: &GuestStatus) {
        if let Some(guest) = &status.guest
            && status.is_stream()
        {
            lock(&self.latest).insert(guest.clone(), status.clone());
        }
        (self.observer)(status);
    }

    /// The guest's copy, as the collector keeps it between connections.
    fn guest_store(&self, name: &str) -> Arc<Mutex<GuestStore>> {
        lock(&self.guests)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Binds `path` for `identity` and accepts on it (within the runtime's context).
    fn listen_as(
        self: &Arc<Self>,
        identity: Identity,
        path: PathBuf,
    ) -> Result<Arc<Mutex<Identity>>, StreamError> {
        let name = identity.name.clone();
        let refused = |why: &str| StreamError::Endpoint {
            name: name.clone(),
            why: why.to_string(),
        };
        if !wire::valid_guest_name(&name) {
            return Err(refused("not a guest name (1 to 64 of A-Z a-z 0-9 . _ -)"));
        }
        let mut listening = lock(&self.listening);
        if listening.contains_key(&name) {
            return Err(refused("listened for already"));
        }
        let listener = listeners::bind_unix(&path)?;
        let identity = Arc::new(Mutex::new(identity));
        let stop = Arc::new(Notify::new());
        tokio::spawn(listeners::accept_unix(
            self.clone(),
            listener,
            path,
            identity.clone(),
            stop.clone(),
        ));
        listening.insert(name, Listening { stop });
        Ok(identity)
    }

    fn unlisten(&self, name: &str) -> bool {
        match lock(&self.listening).remove(name) {
            Some(listening) => {
                listening.stop.notify_one();
                true
            }
            None => false,
        }
    }
}

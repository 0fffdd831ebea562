//! `guard collect`'s options: where guests come from (each named by the host), their keys,
//! and the collector's bounds.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use guard::stream::{
    Acks, Auth, CollectorOptions, Endpoint, Limits, Quota, StreamKey, VmDir, wire,
};

use crate::args::UsageError;

/// `--listen`: one guest's Unix socket, or an AF_VSOCK port.
#[derive(Debug, Clone)]
pub enum ListenSpec {
    /// `NAME=unix:PATH`.
    Named { name: String, path: PathBuf },
    /// `vsock:PORT`, each peer CID named by `--cid-table`.
    Vsock { port: u32 },
}

fn parse_listen(text: &str) -> Result<ListenSpec, String> {
    if let Some(port) = text.strip_prefix("vsock:") {
        let port = port
            .parse()
            .map_err(|_| format!("the port {port:?} is not a number"))?;
        return Ok(ListenSpec::Vsock { port });
    }
    let Some((name, address)) = text.split_once('=') else {
        return Err(
            "expected NAME=unix:PATH (the name is the guest's identity: the host gives it, \
             the hello must say it) or vsock:PORT (with --cid-table)"
                .into(),
        );
    };
    if !wire::valid_guest_name(name) {
        return Err(format!(
            "{name:?} is not a guest name (1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot)"
        ));
    }
    match guard::stream::address::unix_socket_path(address) {
        Some(Ok(path)) => Ok(ListenSpec::Named {
            name: name.to_string(),
            path,
        }),
        _ => Err(format!("{address:?}: expected unix:PATH after {name}=")),
    }
}

fn parse_key(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if wire::valid_guest_name(name) && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err("expected NAME=FILE, the key of the guest --listen NAME=… names".into()),
    }
}

fn parse_duration_ms(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a number of milliseconds"))
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CollectArgs {
    #[command(subcommand)]
    pub command: Option<CollectCommand>,
    /// Where the copies go, one directory per guest (created if missing; every path under it
    /// is opened without following symbolic links). Each copy is a log `guard log verify`
    /// reads.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// One guest's socket, `NAME=unix:PATH` (repeatable): the path its VMM connects to for the
    /// stream's port (Firecracker, Cloud Hypervisor, vhost-device-vsock: `<uds_path>_<PORT>`;
    /// libkrun: krun_add_vsock_port2's path). The connection is guest NAME's whatever its
    /// hello says (a hello with another name is refused). Or `vsock:PORT` on a host with
    /// /dev/vhost-vsock, each peer CID named by --cid-table.
    #[arg(long, value_name = "NAME=unix:PATH", value_parser = parse_listen)]
    pub listen: Vec<ListenSpec>,
    /// The key of guest NAME (repeatable): a file of 64 hex digits, mode 0400 (`guard collect
    /// keygen FILE` makes one). The guest's agent gets the same key (--stream-key).
    #[arg(long = "key", value_name = "NAME=FILE", value_parser = parse_key)]
    pub keys: Vec<(String, PathBuf)>,
    /// A directory of keys for --listen's guests, one file per guest named after it.
    #[arg(long, value_name = "DIR")]
    pub key_dir: Option<PathBuf>,
    /// A directory of VMs coming and going: each subdirectory DIR/NAME/ holding the VM's key
    /// file `key` gets a listener at DIR/NAME/vsock_PORT (configure the VMM's vsock uds_path
    /// as DIR/NAME/vsock); it goes when the subdirectory does. Create a VM's directory under a
    /// name starting with a dot and rename it into place once its key is written.
    #[arg(long, value_name = "DIR", requires = "port")]
    pub vm_dir: Option<PathBuf>,
    /// The guests' stream port, for --vm-dir.
    #[arg(long, value_name = "PORT", requires = "vm_dir")]
    pub port: Option<u32>,
    /// With --listen vsock:PORT: the host's table of guests, `CID NAME KEYFILE` per line.
    #[arg(long, value_name = "FILE")]
    pub cid_table: Option<PathBuf>,
    /// Take streams without a proof from guests that have no key. Only where nothing but the
    /// guest's agent can reach its vsock port (a guest whose containers may open AF_VSOCK
    /// sockets can otherwise write its copy); their status says `unauthenticated`.
    #[arg(long)]
    pub no_auth: bool,
    /// Print each status as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many streams have ended (connections refused in their handshake do not
    /// count): status 0 if every one was `complete`, 1 otherwise. Default: run until
    /// interrupted.
    #[arg(long, value_name = "N")]
    pub streams: Option<u64>,
    /// Open connections at most, in all (lowered to what the open-file limit allows).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Connections of one guest in their handshake at most; the oldest is dropped for a new one.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_pending_per_guest)]
    pub max_pending: usize,
    /// Milliseconds from accept to a checked proof (hello, challenge, proof), at most.
    #[arg(long, value_name = "MS", value_parser = parse_duration_ms, default_value = "10000")]
    pub handshake_timeout: Duration,
    /// Milliseconds a stream may send nothing (the sender's heartbeat comes every 5 s).
    #[arg(long, value_name = "MS", value_parser = parse_duration_ms, default_value = "30000")]
    pub idle_timeout: Duration,
    /// Bytes of unfinished lines held across all connections.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().line_memory)]
    pub line_memory: usize,
    /// Bytes one guest's copy may hold.
    #[arg(long, value_name = "BYTES", default_value_t = Quota::default().guest_bytes)]
    pub guest_max_bytes: u64,
    /// Files one guest's copy may hold.
    #[arg(long, value_name = "N", default_value_t = Quota::default().guest_files)]
    pub guest_max_files: u64,
    /// Free bytes the store's filesystem keeps: a write that would go below fails its stream.
    #[arg(long, value_name = "BYTES", default_value_t = Quota::default().reserve_bytes)]
    pub reserve_bytes: u64,
    /// Free inodes the store's filesystem keeps.
    #[arg(long, value_name = "N", default_value_t = Quota::default().reserve_inodes)]
    pub reserve_inodes: u64,
    /// Milliseconds between two group commits at least: a record is acknowledged once a
    /// commit (fdatasync) has it on stable storage.
    #[arg(long, value_name = "MS", value_parser = parse_duration_ms, default_value = "5")]
    pub commit_interval: Duration,
    #[command(flatten)]
    pub metrics: crate::evidence::MetricsFlags,
}

#[derive(clap::Subcommand, Debug)]
pub enum CollectCommand {
    /// Write a new random stream key (64 hex digits, mode 0400) to FILE, which must not exist:
    /// give the same key to the collector (--key, --key-dir, a VM directory's `key`, the CID
    /// table) and to the guest's agent (--stream-key).
    Keygen {
        /// The new key file.
        file: PathBuf,
    },
}

impl CollectArgs {
    /// The collector's options.
    pub fn options(&self) -> anyhow::Result<CollectorOptions> {
        let dir = self
            .dir
            .clone()
            .ok_or_else(|| UsageError("give the store: --dir DIR".into()))?;
        let mut options = CollectorOptions::new(dir);
        options.limits = Limits {
            max_connections: self.max_connections,
            max_pending_per_guest: self.max_pending,
            handshake_deadline: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            line_memory: self.line_memory,
            ..Limits::default()
        };
        options.quota = Quota {
            guest_bytes: self.guest_max_bytes,
            guest_files: self.guest_max_files,
            reserve_bytes: self.reserve_bytes,
            reserve_inodes: self.reserve_inodes,
        };
        options.acks = Acks::Durable {
            interval: self.commit_interval,
        };
        Ok(options)
    }

    /// The named sockets, each with its key (or none, with --no-auth).
    pub fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        let keys: BTreeMap<&String, &PathBuf> = self.keys.iter().map(|(n, p)| (n, p)).collect();
        let mut endpoints = Vec::new();
        for spec in &self.listen {
            let ListenSpec::Named { name, path } = spec else {
                continue;
            };
            let key_file = keys
                .get(name)
                .map(|path| path.to_path_buf())
                .or_else(|| self.key_dir.as_ref().map(|dir| dir.join(name)));
            let auth = match key_file {
                Some(file) => Auth::Key(StreamKey::read(&file)?),
                None if self.no_auth => Auth::None,
                None => {
                    return Err(UsageError(format!(
                        "no key for guest {name}: give --key {name}=FILE or --key-dir DIR (or \
                         --no-auth, where only the agent can reach the guest's vsock)"
                    ))
                    .into());
                }
            };
            endpoints.push(Endpoint {
                name: name.clone(),
                path: path.clone(),
                auth,
            });
        }
        if let Some((name, _)) = self
            .keys
            .iter()
            .find(|(name, _)| !endpoints.iter().any(|endpoint| &endpoint.name == name))
        {
            return Err(UsageError(format!("--key {name}=…: no --listen {name}=unix:PATH")).into());
        }
        Ok(endpoints)
    }

    /// The VM directory, if given.
    pub fn vm_dir(&self) -> Option<VmDir> {
        let (dir, port) = (self.vm_dir.clone()?, self.port?);
        Some(VmDir {
            no_auth: self.no_auth,
            ..VmDir::new(dir, port)
        })
    }

    /// The AF_VSOCK port, if given (with its table: a usage error without one).
    pub fn vsock(&self) -> anyhow::Result<Option<(u32, PathBuf)>> {
        let ports: Vec<u32> = self
            .listen
            .iter()
            .filter_map(|spec| match spec {
                ListenSpec::Vsock { port } => Some(*port),
                ListenSpec::Named { .. } => None,
            })
            .collect();
        match (&ports[..], &self.cid_table) {
            ([], None) => Ok(None),
            ([port], Some(table)) => Ok(Some((*port, table.clone()))),
            ([], Some(_)) => Err(UsageError("--cid-table needs --listen vsock:PORT".into()).into()),
            ([_], None) => Err(UsageError(
                "--listen vsock:PORT needs --cid-table FILE: the host's table of which CID is \
                 which guest"
                    .into(),
            )
            .into()),
            _ => Err(UsageError("one --listen vsock:PORT at most".into()).into()),
        }
    }
}

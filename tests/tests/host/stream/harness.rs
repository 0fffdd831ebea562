//! The host end of the stream tests: a collector in this process with a listener per guest
//! (each with its own key, as a VMM's per-VM socket would be), the guests' logs, and hand-driven
//! hostile clients that speak the protocol (docs/STREAM.md) as an attacker would.
use std::{
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

pub(crate) use crate::forensic_log::TempDir;
use guard::forensic::{self, FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use guard::stream::{
    Auth, Collector, CollectorOptions, Connection, Endpoint, GuestStatus, Sender, SenderOptions,
    SenderStats, StreamKey, StreamVerdict,
    auth::Nonce,
    wire::{Control, Hello, Proof, VERSION},
};

/// A collector serving in `scratch`, its statuses on a channel.
pub(crate) struct Host {
    pub collector: Collector,
    pub statuses: mpsc::Receiver<GuestStatus>,
    sockets: PathBuf,
}

/// One guest as the host knows it: its socket and key.
#[derive(Clone)]
pub(crate) struct GuestEnd {
    pub name: String,
    pub socket: PathBuf,
    pub key: Option<StreamKey>,
}

impl GuestEnd {
    /// Sender options for this guest (its key included).
    pub fn options(&self) -> SenderOptions {
        let options = SenderOptions::new(
            guard::stream::Address::Unix(self.socket.clone()),
            &self.name,
        );
        match &self.key {
            Some(key) => options.with_key(key.clone()),
            None => options,
        }
    }
}

impl Host {
    /// A collector with the default options, storing under `scratch/collected`.
    pub fn start(scratch: &TempDir) -> Self {
        Self::with(scratch, CollectorOptions::new(scratch.0.join("collected")))
    }

    /// A collector with `options`.
    pub fn with(scratch: &TempDir, options: CollectorOptions) -> Self {
        let (sender, statuses) = mpsc::channel();
        let sender = std::sync::Mutex::new(sender);
        let collector = Collector::start(options, move |status| {
            let _ = sender.lock().unwrap().send(status.clone());
        })
        .unwrap();
        let sockets = scratch.0.join("sockets");
        std::fs::create_dir_all(&sockets).unwrap();
        Self {
            collector,
            statuses,
            sockets,
        }
    }

    /// Listens for guest `name` with a fresh key.
    pub fn guest(&self, name: &str) -> GuestEnd {
        self.listen(name, Some(StreamKey::generate().unwrap()))
    }

    /// Listens for guest `name` with `key` (None: `--no-auth`).
    pub fn listen(&self, name: &str, key: Option<StreamKey>) -> GuestEnd {
        let socket = self.sockets.join(format!("{name}.sock"));
        self.collector
            .listen(Endpoint {
                name: name.into(),
                path: socket.clone(),
                auth: key.clone().map_or(Auth::None, Auth::Key),
            })
            .unwrap();
        GuestEnd {
            name: name.into(),
            socket,
            key,
        }
    }

    /// The verdict of the next stream of `guest` to end (other statuses are skipped; None:
    /// a connection no transport named).
    pub fn verdict_of(&self, guest: Option<&str>) -> GuestStatus {
        self.next_where(&format!("a verdict for {guest:?}"), |status| {
            status.verdict.is_some() && status.guest.as_deref() == guest
        })
    }

    /// The next stream (not a refused connection) of `guest` to end.
    pub fn stream_of(&self, guest: &str) -> GuestStatus {
        self.next_where(&format!("a stream of {guest} to end"), |status| {
            status.verdict.is_some() && status.is_stream() && status.guest.as_deref() == Some(guest)
        })
    }

    /// Skips `guest`'s failed streams (a reconnecting sender's) until one is complete.
    pub fn first_complete(&self, guest: &str) -> GuestStatus {
        self.next_where(&format!("a complete stream of {guest}"), |status| {
            status.guest.as_deref() == Some(guest)
                && status
                    .verdict
                    .as_ref()
                    .is_some_and(StreamVerdict::is_complete)
        })
    }

    pub fn verdict_of_any(&self) -> GuestStatus {
        self.next_where("any verdict", |status| status.verdict.is_some())
    }

    fn next_where(&self, what: &str, wanted: impl Fn(&GuestStatus) -> bool) -> GuestStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = self
                .statuses
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} within 120 s"));
            if wanted(&status) {
                return status;
            }
        }
    }
}

pub(crate) fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("stream-test".into()),
        rotate_bytes: Some(2_000),
        ..LogOptions::default()
    }
}

/// A guest's log: a session of `events` records, closed with a stop unless `dies`.
pub(crate) fn write_session(dir: &Path, events: u64, dies: bool) {
    let mut writer = LogWriter::create(dir, options(), &StartInfo::new(1, json!(null))).unwrap();
    for i in 0..events {
        writer
            .append(
                "oom_kill",
                Some("tenant"),
                &json!({"i": i, "pad": "x".repeat(40)}),
            )
            .unwrap();
    }
    if dies {
        drop(writer);
    } else {
        writer.close().unwrap();
    }
}

pub(crate) fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    forensic::layout::list_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|file| (file.name(), std::fs::read(&file.path).unwrap()))
        .collect()
}

/// Ships the log in `log` as `guest` and finishes within `timeout`.
pub(crate) fn ship(guest: &GuestEnd, log: &Path, timeout: Duration) -> SenderStats {
    Sender::start(log, guest.options()).unwrap().finish(timeout)
}

/// The lines of a log's first file, with their newlines.
pub(crate) fn lines_of(log: &Path) -> Vec<Vec<u8>> {
    std::fs::read(forensic::layout::list_files(log).unwrap()[0].path.clone())
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// A hand-driven client on `socket`.
pub(crate) struct Raw {
    pub connection: Connection,
    pub reader: BufReader<Connection>,
}

impl Raw {
    pub fn connect(socket: &Path) -> Self {
        let connection = Connection::connect(&guard::stream::Address::Unix(socket.into())).unwrap();
        connection
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let reader = BufReader::new(connection.try_clone().unwrap());
        Self { connection, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.connection.write_all(bytes)
    }

    pub fn hello(&mut self, guest: &str) {
        let hello = Control::Hello(Hello {
            version: VERSION,
            guest: guest.into(),
            boot_id: "b".into(),
        });
        self.send(&hello.to_line()).unwrap();
    }

    /// The host's next control line (None: the connection ended).
    pub fn answer(&mut self) -> Option<Control> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(forensic::serde_json::from_str(&line).unwrap()),
            _ => None,
        }
    }

    /// Says hello as `guest` and answers the challenge with `key` (None: no proof, or no
    /// challenge on a listener without a key); the host's answer after it.
    pub fn handshake(socket: &Path, guest: &str, key: Option<&StreamKey>) -> (Self, Control) {
        let mut raw = Self::connect(socket);
        raw.hello(guest);
        let mut answer = raw.answer().expect("an answer to the hello");
        if let (Control::Challenge(challenge), Some(key)) = (&answer, key) {
            let nonce = Nonce::from_hex(&challenge.nonce).unwrap();
            let proof = Control::Proof(Proof {
                mac: key.proof(&nonce, guest, "b"),
            });
            raw.send(&proof.to_line()).unwrap();
            answer = raw.answer().expect("an answer to the proof");
        }
        (raw, answer)
    }
}

/// Waits (generously) for `done`, polling.
pub(crate) fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A record a hostile guest makes up: sealed and chained onto `prev` (lowercase hex) exactly
/// as the writer would, so that only its origin is wrong. Returns the line with its newline.
pub(crate) fn forge(seq: u64, kind: &str, payload: &str, prev: &str) -> Vec<u8> {
    use sha2::Digest as _;
    let body = format!(
        r#"{{"seq":{seq},"boot_id":"forged","wall":"2026-12-01T00:00:00.000000000Z","mono_ns":{},"kind":"{kind}","container":null,"payload":{payload},"prev":"{prev}""#,
        1_000 + seq
    );
    let seal = hex(&sha2::Sha256::digest(body.as_bytes()));
    format!("{body},\"hash\":\"{seal}\"}}\n").into_bytes()
}

/// The chain's value after `line` (with or without its newline): the next record's `prev`.
pub(crate) fn head_after(line: &[u8]) -> String {
    use sha2::Digest as _;
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    hex(&sha2::Sha256::digest(line))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A forged session of `records` made-up events after a start: what an impostor sends.
pub(crate) fn forged_session(records: u64) -> Vec<Vec<u8>> {
    let mut prev = guard::forensic::GENESIS.to_string();
    let mut lines = Vec::new();
    for seq in 0..=records {
        let (kind, payload) = if seq == 0 {
            ("start", r#"{"forged":true}"#.to_string())
        } else if seq == records {
            ("stop", format!(r#"{{"count":{seq},"head":"{prev}"}}"#))
        } else {
            ("oom_kill", format!(r#"{{"made_up":{seq}}}"#))
        };
        let line = forge(seq, kind, &payload, &prev);
        prev = head_after(&line);
        lines.push(line);
    }
    lines
}

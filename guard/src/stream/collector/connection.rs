//! One connection, from accept to its verdict: its place in the registry, the handshake under
//! one deadline (the hello's name must be the transport's; the proof must verify under the
//! guest's key), the guest's stream slot, its copy opened, then the stream (`streaming.rs`).
use std::sync::Arc;

use tracing::debug;

use super::{
    Shared,
    options::Auth,
    registry::{CutReason, Ticket},
    socket::{LineReader, Read, Socket},
    status::{Counters, GuestStatus},
};
use crate::stream::{
    StreamVerdict,
    auth::Nonce,
    wire::{self, Challenge, Control, RefusalCode, Resume},
};

/// Reads in the handshake are small: a hello or a proof is a few hundred bytes.
const HANDSHAKE_CHUNK: usize = 1 << 10;

/// Who the transport says is calling.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub name: String,
    pub auth: Auth,
}

/// A connection being served.
pub(super) struct Conn {
    pub shared: Arc<Shared>,
    pub socket: Socket,
    pub ticket: Ticket,
    pub reader: LineReader,
    pub status: GuestStatus,
    /// The last record held is a `stop`.
    pub stopped: bool,
}

/// Serves one accepted connection to its verdict. `identity` is Err (why) for a peer the
/// transport names no guest for; `admitted` is its place in the registry, taken at accept
/// (Err: why there was none).
pub(super) async fn serve(
    shared: Arc<Shared>,
    socket: Socket,
    identity: Result<Identity, String>,
    admitted: Result<(Ticket, u64), String>,
) {
    Counters::bump(&shared.counters.accepted);
    let mut status = GuestStatus {
        guest: identity.as_ref().ok().map(|identity| identity.name.clone()),
        connection: shared.next_connection(),
        boot_id: None,
        authenticated: false,
        records: 0,
        received: 0,
        matched: 0,
        verdict: None,
    };
    let ticket = match admitted {
        Ok((ticket, evicted)) => {
            shared
                .counters
                .evicted
                .fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
            ticket
        }
        Err(why) => {
            let verdict = refuse(&socket, RefusalCode::Busy, why);
            Counters::bump(&shared.counters.refused);
            status.verdict = Some(verdict);
            shared.publish(&status);
            return;
        }
    };
    let mut conn = Conn {
        shared: shared.clone(),
        socket,
        ticket,
        reader: LineReader::new(),
        status,
        stopped: false,
    };
    let verdict = conn.run(identity).await;
    let Conn {
        ticket,
        mut reader,
        mut status,
        ..
    } = conn;
    // The connection leaves the registry before its verdict is told: whoever hears it and
    // connects again must not find this one still streaming.
    reader.release(&ticket);
    drop(ticket);
    match &verdict {
        StreamVerdict::Refused { .. } => Counters::bump(&shared.counters.refused),
        StreamVerdict::Replaced { .. } | StreamVerdict::Cut { .. } => {
            Counters::bump(&shared.counters.cut)
        }
        _ => {}
    }
    status.verdict = Some(verdict);
    shared.publish(&status);
}

/// Sends a refusal (one write that never waits: a flood of refused connections must close at
/// once) and gives its verdict.
fn refuse(socket: &Socket, code: RefusalCode, reason: String) -> StreamVerdict {
    let line = Control::Refused {
        code,
        reason: reason.clone(),
    }
    .to_line();
    socket.send_once(&line);
    StreamVerdict::Refused { code, reason }
}

impl Conn {
    async fn run(&mut self, identity: Result<Identity, String>) -> StreamVerdict {
        let identity = match identity {
            Ok(identity) => identity,
            Err(why) => return refuse(&self.socket, RefusalCode::UnknownPeer, why),
        };
        let limits = self.shared.options.limits;
        let deadline = tokio::time::Instant::now() + limits.handshake_deadline;
        let cut = self.ticket.cut.clone();
        let handshake = tokio::select! {
            reason = cut.wait() => Err(match reason {
                CutReason::Evicted(why) => (RefusalCode::Busy, why),
                CutReason::LineMemory => (RefusalCode::Busy, "the collector's line memory ran out".into()),
                CutReason::Replaced | CutReason::Shutdown => {
                    (RefusalCode::Busy, "the collector is shutting down".into())
                }
            }),
            done = tokio::time::timeout_at(deadline, self.handshake(&identity)) => match done {
                Ok(result) => result,
                Err(_) => Err((
                    RefusalCode::Timeout,
                    format!("no hello and proof within {:?}", limits.handshake_deadline),
                )),
            },
        };
        if let Err((code, reason)) = handshake {
            return refuse(&self.socket, code, reason);
        }
        match self.ticket.become_stream(&identity.name) {
            Err(silent) => {
                return refuse(
                    &self.socket,
                    RefusalCode::AlreadyStreaming,
                    format!(
                        "guest {} is already streaming (its stream's last line came {:.1} s \
                         ago)",
                        identity.name,
                        silent.as_secs_f64()
                    ),
                );
            }
            Ok(Some(mut gone)) => {
                // The replaced stream lets go of the copy before this one opens it.
                let _ = tokio::time::timeout(limits.handshake_deadline, gone.changed()).await;
            }
            Ok(None) => {}
        }
        let store = self.shared.guest_store(&identity.name);
        let opened = {
            let (shared, store, name) = (self.shared.clone(), store.clone(), identity.name.clone());
            self.shared
                .pool
                .run(move || {
                    let mut store = crate::pipeline::lock(&store);
                    let loads = store.loads;
                    let result = store.begin(&shared.root, &name);
                    let loaded = store.loads - loads;
                    (
                        result,
                        store.next_seq(),
                        store.head(),
                        store.stopped(),
                        loaded,
                    )
                })
                .await
        };
        let Some((begun, next_seq, head, stopped, loaded)) = opened else {
            return StreamVerdict::Failed {
                error: "the collector's store threads stopped".into(),
            };
        };
        self.shared
            .counters
            .copies_loaded
            .fetch_add(loaded, std::sync::atomic::Ordering::Relaxed);
        if let Err(verdict) = begun {
            self.end_store(&store).await;
            // The guest hears a refusal; the stream's verdict says why.
            refuse(&self.socket, RefusalCode::CopyUnusable, verdict.to_string());
            return verdict;
        }
        self.status.records = next_seq;
        self.stopped = stopped;
        let resume = Control::Resume(Resume { next_seq, head });
        if let Err(error) = self.socket.write_all(&resume.to_line()).await {
            debug!(guest = %identity.name, %error, "sending the resume point");
            self.end_store(&store).await;
            return StreamVerdict::GuestDied {
                after_seq: next_seq.checked_sub(1),
            };
        }
        self.shared.publish(&self.status);
        let verdict = self.stream(&store).await;
        self.end_store(&store).await;
        verdict
    }

    /// Closes the copy's descriptors (its tail stays in memory for the next connection).
    async fn end_store(&self, store: &Arc<std::sync::Mutex<crate::stream::store::GuestStore>>) {
        let store = store.clone();
        self.shared
            .pool
            .run(move || crate::pipeline::lock(&store).end())
            .await;
    }

    /// The hello (its name must be the transport's) and, with a key, the proof.
    async fn handshake(&mut self, identity: &Identity) -> Result<(), (RefusalCode, String)> {
        let bad = |why: String| (RefusalCode::BadHello, why);
        let line = self.control_line().await?;
        let hello = match serde_json::from_slice::<Control>(&line) {
            Ok(Control::Hello(hello)) => hello,
            _ => {
                return Err(bad(format!(
                    "the first line is not a hello: {}",
                    preview(&line)
                )));
            }
        };
        if hello.version != wire::VERSION {
            return Err(bad(format!(
                "protocol version {} (this collector speaks {})",
                hello.version,
                wire::VERSION
            )));
        }
        self.status.boot_id = Some(hello.boot_id.chars().take(64).collect());
        if hello.guest != identity.name {
            return Err((
                RefusalCode::NameMismatch,
                format!(
                    "the hello says {}; this transport is guest {}'s",
                    preview(hello.guest.as_bytes()),
                    identity.name
                ),
            ));
        }
        let Auth::Key(key) = &identity.auth else {
            return Ok(());
        };
        let nonce = Nonce::fresh()
            .map_err(|error| (RefusalCode::Busy, format!("no challenge: {error}")))?;
        let challenge = Control::Challenge(Challenge {
            nonce: nonce.to_hex(),
        });
        self.socket
            .write_all(&challenge.to_line())
            .await
            .map_err(|error| {
                (
                    RefusalCode::AuthenticationFailed,
                    format!("sending the challenge: {error}"),
                )
            })?;
        let line = self.control_line().await?;
        let proven = match serde_json::from_slice::<Control>(&line) {
            Ok(Control::Proof(proof)) => {
                key.verify(&nonce, &hello.guest, &hello.boot_id, &proof.mac)
            }
            _ => false,
        };
        if !proven {
            return Err((
                RefusalCode::AuthenticationFailed,
                "authentication failed".into(),
            ));
        }
        self.status.authenticated = true;
        Ok(())
    }

    /// One handshake line, at most `MAX_CONTROL_BYTES`.
    async fn control_line(&mut self) -> Result<Vec<u8>, (RefusalCode, String)> {
        let bad = |why: &str| (RefusalCode::BadHello, why.to_string());
        loop {
            if let Some(line) = self.reader.take_line(&self.ticket) {
                return Ok(line);
            }
            if self.reader.len() > wire::MAX_CONTROL_BYTES {
                return Err(bad("a handshake line longer than 64 KiB"));
            }
            match self
                .reader
                .read(&self.socket, &self.ticket, HANDSHAKE_CHUNK)
                .await
            {
                Ok(Read::Data) => {}
                Ok(Read::End) => return Err(bad("the connection closed in its handshake")),
                Ok(Read::OverBudget) => {
                    return Err((
                        RefusalCode::Busy,
                        "the collector's line memory ran out".into(),
                    ));
                }
                Err(error) => return Err(bad(&format!("reading the handshake: {error}"))),
            }
        }
    }
}

pub(super) fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("{text:?}")
}

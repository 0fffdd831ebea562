//! One connection of the sender: the handshake (hello, the proof, the resume point), the
//! check of the host's head against this log, then the log's lines and heartbeats out and the
//! host's acknowledgements and verdict in.
use std::{
    io::{BufReader, Write as _},
    sync::{Arc, Mutex, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::forensic::{GENESIS, record};
use crate::pipeline::lock;

use super::{Ended, FailureKind, SenderStats, Worker};
use crate::stream::{
    Connection, StreamVerdict,
    auth::Nonce,
    tail::LogTail,
    wire::{self, Control, Hello, Proof, ReadLine, RefusalCode, Resume},
};

/// How long the sender waits for each of the host's handshake lines.
const HANDSHAKE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The failure a refusal stands for.
pub(super) fn refusal_kind(code: RefusalCode) -> FailureKind {
    match code {
        RefusalCode::AuthenticationFailed => FailureKind::AuthenticationFailed,
        RefusalCode::AlreadyStreaming => FailureKind::AlreadyStreaming,
        RefusalCode::Busy | RefusalCode::Timeout => FailureKind::Busy,
        RefusalCode::CopyUnusable => FailureKind::HostFailed,
        RefusalCode::BadHello | RefusalCode::NameMismatch | RefusalCode::UnknownPeer => {
            FailureKind::Refused
        }
    }
}

/// What the reader of the host's lines saw.
#[derive(Default)]
struct FromHost {
    /// The latest acknowledgement.
    acked: Option<u64>,
    /// The host's verdict on a stream it ended as a failure.
    ended: Option<StreamVerdict>,
}

impl Worker {
    fn failed(&self, kind: FailureKind, detail: String) -> Ended {
        lock(&self.stats).fail(kind, detail);
        Ended::Failed(kind)
    }

    /// Hello, the proof when the host asks for one, and the resume point.
    fn handshake(
        &self,
        writer: &mut Connection,
        reader: &mut BufReader<Connection>,
    ) -> Result<(Resume, bool), Ended> {
        let unreachable = |what: &str, error: &dyn std::fmt::Display| {
            self.failed(FailureKind::Unreachable, format!("{what}: {error}"))
        };
        let hello = Control::Hello(Hello {
            version: wire::VERSION,
            guest: self.options.guest.clone(),
            boot_id: self.boot_id.clone(),
        });
        if let Err(error) = writer.write_all(&hello.to_line()) {
            return Err(unreachable("sending the hello", &error));
        }
        let mut authenticated = false;
        loop {
            let line = match wire::read_line(reader, wire::MAX_CONTROL_BYTES) {
                Ok(ReadLine::Line(line)) => line,
                Ok(other) => {
                    return Err(unreachable(
                        "waiting for the host's answer",
                        &format!("{other:?}"),
                    ));
                }
                Err(error) => return Err(unreachable("waiting for the host's answer", &error)),
            };
            match serde_json::from_slice::<Control>(&line) {
                Ok(Control::Challenge(challenge)) if !authenticated => {
                    let Some(key) = &self.options.key else {
                        return Err(self.failed(
                            FailureKind::AuthenticationFailed,
                            "the host asks for a proof and this sender has no key (give it the \
                             guest's stream key: --stream-key)"
                                .into(),
                        ));
                    };
                    let Some(nonce) = Nonce::from_hex(&challenge.nonce) else {
                        return Err(self.failed(
                            FailureKind::Refused,
                            format!(
                                "the host's challenge is not 64 hex digits: {:?}",
                                challenge.nonce
                            ),
                        ));
                    };
                    let proof = Control::Proof(Proof {
                        mac: key.proof(&nonce, &self.options.guest, &self.boot_id),
                    });
                    if let Err(error) = writer.write_all(&proof.to_line()) {
                        return Err(unreachable("sending the proof", &error));
                    }
                    authenticated = true;
                }
                Ok(Control::Resume(resume)) => return Ok((resume, authenticated)),
                Ok(Control::Refused { code, reason }) => {
                    return Err(self.failed(
                        refusal_kind(code),
                        format!("the host refused the stream: {reason}"),
                    ));
                }
                _ => {
                    return Err(self.failed(
                        FailureKind::Refused,
                        format!(
                            "the host's answer is not a challenge or a resume point: {}",
                            String::from_utf8_lossy(&line[..line.len().min(200)])
                        ),
                    ));
                }
            }
        }
    }

    pub(super) fn stream(&self, connection: Connection) -> Ended {
        let _ = connection.set_write_timeout(Some(self.options.write_timeout));
        let _ = connection.set_read_timeout(Some(HANDSHAKE_READ_TIMEOUT));
        let Ok(reading) = connection.try_clone() else {
            return self.failed(
                FailureKind::Unreachable,
                "cannot read the connection".into(),
            );
        };
        let mut writer = connection;
        let mut reader = BufReader::new(reading);
        let (resume, authenticated) = match self.handshake(&mut writer, &mut reader) {
            Ok(resumed) => resumed,
            Err(ended) => return ended,
        };
        let matched = self.local_head_matches(resume.next_seq, &resume.head);
        let from = if matched {
            resume.next_seq
        } else {
            // The host holds a history this log does not have at that point: resend it all,
            // so the host finds where the two part. Nothing it acknowledges counts.
            warn!(
                host_next_seq = resume.next_seq,
                "the host's copy does not end where this log has it: resending from seq 0"
            );
            let mut stats = lock(&self.stats);
            stats.resends_from_start += 1;
            stats.fail(
                FailureKind::Forked,
                format!(
                    "the host holds {} record(s) whose last (head {}) is not this log's",
                    resume.next_seq, resume.head
                ),
            );
            0
        };
        {
            let mut stats = lock(&self.stats);
            stats.connections += 1;
            stats.authenticated = authenticated;
            if matched {
                stats.failure = None;
                stats.acked_next_seq = resume.next_seq;
                publish(&self.options.acked, resume.next_seq);
            }
        }
        let from_host = Arc::new(Mutex::new(FromHost::default()));
        let acks = match self.read_host_lines(reader, from_host.clone(), matched) {
            Ok(acks) => acks,
            Err(error) => return self.failed(FailureKind::Unreachable, error),
        };
        let ended = self.send(&mut writer, from, &acks, resume.next_seq, matched);
        if !matches!(ended, Ended::Finished) {
            writer.shutdown();
        }
        // The host's verdict, when it ended the stream as a failure, is the sender's failure.
        let verdict = lock(&from_host).ended.take();
        match (ended, verdict) {
            (Ended::Finished, _) => Ended::Finished,
            (ended, Some(verdict)) => match Worker::failure_of(&verdict) {
                Some(kind) => self.failed(kind, format!("the host ended the stream: {verdict}")),
                None => ended,
            },
            (ended, None) => ended,
        }
    }

    /// Sends the log from `from` on, and heartbeats, until the host closes, the write fails
    /// or the sender finishes.
    fn send(
        &self,
        writer: &mut Connection,
        from: u64,
        acks: &JoinHandle<()>,
        resumed_at: u64,
        matched: bool,
    ) -> Ended {
        let ended = |what: &str, error: &dyn std::fmt::Display| {
            let progressed = matched && lock(&self.stats).acked_next_seq > resumed_at;
            let detail = format!("{what}: {error}");
            if progressed {
                Ended::Progressed(detail)
            } else {
                self.failed(FailureKind::Unreachable, detail)
            }
        };
        let mut tail = LogTail::from_seq(&self.dir, from);
        let mut last_sent: Option<(u64, bool)> = None;
        let mut batch = Vec::new();
        let mut last_write = Instant::now();
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                writer.shutdown();
                return Ended::Finished;
            }
            batch.clear();
            let mut lines = 0;
            let polled = tail.poll(&mut |line| {
                batch.extend_from_slice(line.raw);
                batch.push(b'\n');
                last_sent = Some((line.seq, line.kind == record::kinds::STOP));
                lines += 1;
            });
            lock(&self.stats).lines_sent += lines;
            if let Err(error) = polled {
                let mut stats = lock(&self.stats);
                stats.unreadable_lines += 1;
                stats.last_error = Some(error.to_string());
            }
            if batch.is_empty() && last_write.elapsed() >= self.options.heartbeat_interval {
                batch.extend_from_slice(&Control::Heartbeat {}.to_line());
                lock(&self.stats).heartbeats_sent += 1;
            }
            if !batch.is_empty() {
                if let Err(error) = writer.write_all(&batch) {
                    return ended("sending records", &error);
                }
                last_write = Instant::now();
                continue;
            }
            let finishing = lock(&self.finishing).is_some();
            let delivered = matched
                && last_sent
                    .is_some_and(|(seq, stop)| stop && lock(&self.stats).acked_next_seq > seq);
            if finishing && (delivered || self.should_stop()) {
                writer.shutdown();
                let _ = acks.is_finished();
                lock(&self.stats).delivered = delivered;
                return Ended::Finished;
            }
            if acks.is_finished() {
                return ended("the host closed the stream", &"end of stream");
            }
            std::thread::sleep(self.options.poll_interval);
        }
    }

    /// Whether this log's record `next_seq - 1` hashes to `head` (0 records: the genesis).
    fn local_head_matches(&self, next_seq: u64, head: &str) -> bool {
        let Some(last) = next_seq.checked_sub(1) else {
            return head == GENESIS;
        };
        let mut tail = LogTail::from_seq(&self.dir, last);
        let mut found = None;
        let _ = tail.poll(&mut |line| {
            if found.is_none() && line.seq == last {
                found = Some(record::to_hex(&record::digest_line(line.raw).line));
            }
        });
        found.as_deref() == Some(head)
    }

    /// Reads the host's acknowledgements (counted only when `matched`) and its verdict until
    /// the connection ends.
    fn read_host_lines(
        &self,
        mut reader: BufReader<Connection>,
        from_host: Arc<Mutex<FromHost>>,
        matched: bool,
    ) -> Result<JoinHandle<()>, String> {
        let stats: Arc<Mutex<SenderStats>> = self.stats.clone();
        let published = self.options.acked.clone();
        let _ = reader.get_ref().set_read_timeout(None);
        std::thread::Builder::new()
            .name("guard-stream-acks".into())
            .spawn(move || {
                while let Ok(ReadLine::Line(line)) =
                    wire::read_line(&mut reader, wire::MAX_CONTROL_BYTES)
                {
                    match serde_json::from_slice::<Control>(&line) {
                        Ok(Control::Ack(ack)) => {
                            lock(&from_host).acked = Some(ack.next_seq);
                            if matched {
                                let mut stats = lock(&stats);
                                stats.acked_next_seq = stats.acked_next_seq.max(ack.next_seq);
                                publish(&published, stats.acked_next_seq);
                            }
                        }
                        Ok(Control::Ended(verdict)) => lock(&from_host).ended = Some(verdict),
                        _ => {}
                    }
                }
            })
            .map_err(|error| format!("starting the acknowledgement reader: {error}"))
    }
}

/// Publishes the host's acknowledgement for the log's byte budget.
fn publish(acked: &Option<Arc<std::sync::atomic::AtomicU64>>, next_seq: u64) {
    if let Some(acked) = acked {
        acked.fetch_max(next_seq, std::sync::atomic::Ordering::Relaxed);
    }
}

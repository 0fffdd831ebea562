//! A stream after its handshake: lines read in batches, each batch checked and written by a
//! store thread, acknowledged once the group commit has it on stable storage; cut when idle
//! past the timeout, replaced, or over the line memory budget.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::{sync::oneshot, time::Instant};

use super::{connection::Conn, options::Acks, registry::CutReason, socket::Read};
use crate::pipeline::lock;
use crate::stream::{
    StreamVerdict,
    store::{Durable, GuestStore, Received},
    wire::{self, Ack, Control, HEARTBEAT_PREFIX},
};

/// Reads while streaming take up to this much at once.
const STREAM_CHUNK: usize = 64 << 10;

/// What a store thread did with one batch.
struct Batch {
    received: u64,
    matched: u64,
    next_seq: u64,
    stopped: bool,
    durable: Option<Durable>,
    verdict: Option<StreamVerdict>,
}

type Commit = (oneshot::Receiver<Result<(), String>>, u64);

/// The oldest commit's answer, and the seq it acknowledges.
async fn next_commit(
    commits: &mut VecDeque<Commit>,
) -> (Result<Result<(), String>, oneshot::error::RecvError>, u64) {
    let answer = match commits.front_mut() {
        Some((answer, _)) => answer.await,
        None => std::future::pending().await,
    };
    let (_, next_seq) = commits.pop_front().expect("awaited its front");
    (answer, next_seq)
}

impl Conn {
    pub(super) async fn stream(&mut self, store: &Arc<Mutex<GuestStore>>) -> StreamVerdict {
        let limits = self.shared.options.limits;
        let cut = self.ticket.cut.clone();
        let mut commits: VecDeque<Commit> = VecDeque::new();
        let mut last_line = Instant::now();
        let after = |status: &super::GuestStatus| status.records.checked_sub(1);
        loop {
            tokio::select! {
                biased;
                reason = cut.wait() => {
                    let after_seq = after(&self.status);
                    return match reason {
                        CutReason::Replaced => StreamVerdict::Replaced { after_seq },
                        CutReason::LineMemory => self.line_memory_cut(after_seq),
                        CutReason::Evicted(reason) => StreamVerdict::Cut { after_seq, reason },
                        CutReason::Shutdown => StreamVerdict::Cut {
                            after_seq,
                            reason: "the collector is shutting down".into(),
                        },
                    };
                }
                (synced, next_seq) = next_commit(&mut commits), if !commits.is_empty() => {
                    match synced {
                        Ok(Ok(())) => {
                            if let Err(verdict) = self.ack(next_seq).await {
                                return verdict;
                            }
                        }
                        Ok(Err(error)) => return self.ended(StreamVerdict::Failed { error }).await,
                        Err(_) => return StreamVerdict::Failed { error: "the commit thread stopped".into() },
                    }
                }
                () = tokio::time::sleep_until(last_line + limits.idle_timeout) => {
                    return self.ended(StreamVerdict::Cut {
                        after_seq: after(&self.status),
                        reason: format!(
                            "silent for {:?} (a live sender sends a heartbeat every {:?})",
                            limits.idle_timeout,
                            crate::stream::sender::HEARTBEAT_INTERVAL
                        ),
                    }).await;
                }
                read = self.reader.read(&self.socket, &self.ticket, STREAM_CHUNK) => match read {
                    Ok(Read::Data) => {
                        let Some(complete) = self.reader.complete().map(<[u8]>::len) else {
                            if self.reader.len() > wire::MAX_RECORD_BYTES {
                                return self.ended(StreamVerdict::Invalid {
                                    seq: None,
                                    defect: format!(
                                        "a line longer than {} bytes after seq {:?}",
                                        wire::MAX_RECORD_BYTES,
                                        after(&self.status)
                                    ),
                                }).await;
                            }
                            continue;
                        };
                        last_line = Instant::now();
                        self.ticket.touch();
                        if let Some(verdict) = self.store_batch(store, complete, &mut commits).await {
                            return self.ended(verdict).await;
                        }
                    }
                    Ok(Read::OverBudget) => {
                        return self.ended(self.line_memory_cut(after(&self.status))).await;
                    }
                    Ok(Read::End) | Err(_) => return self.closed(commits).await,
                },
            }
        }
    }

    fn line_memory_cut(&self, after_seq: Option<u64>) -> StreamVerdict {
        StreamVerdict::Cut {
            after_seq,
            reason: format!(
                "its unfinished line was the largest when the collector's line memory ({} \
                 bytes) ran out",
                self.shared.options.limits.line_memory
            ),
        }
    }

    /// The guest closed: what it sent is synced, then the verdict.
    async fn closed(&mut self, commits: VecDeque<Commit>) -> StreamVerdict {
        for (answer, _) in commits {
            match answer.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return StreamVerdict::Failed { error },
                Err(_) => {
                    return StreamVerdict::Failed {
                        error: "the commit thread stopped".into(),
                    };
                }
            }
        }
        let last_seq = self.status.records.checked_sub(1);
        match (self.stopped, last_seq) {
            (true, Some(last_seq)) => StreamVerdict::Complete { last_seq },
            _ => StreamVerdict::GuestDied {
                after_seq: last_seq,
            },
        }
    }

    /// Tells the guest how its stream ended (best effort), and gives the verdict.
    async fn ended(&self, verdict: StreamVerdict) -> StreamVerdict {
        let _ = self
            .socket
            .write_all(&Control::Ended(verdict.clone()).to_line())
            .await;
        verdict
    }

    /// Acknowledges every record below `next_seq`; a guest that reads nothing is cut.
    async fn ack(&self, next_seq: u64) -> Result<(), StreamVerdict> {
        self.socket
            .write_all(&Control::Ack(Ack { next_seq }).to_line())
            .await
            .map_err(|error| StreamVerdict::Cut {
                after_seq: next_seq.checked_sub(1),
                reason: format!("acknowledging: {error}"),
            })
    }

    /// Hands the first `bytes` (whole lines) to a store thread; a verdict ends the stream.
    async fn store_batch(
        &mut self,
        store: &Arc<Mutex<GuestStore>>,
        bytes: usize,
        commits: &mut VecDeque<Commit>,
    ) -> Option<StreamVerdict> {
        let lines = self.reader.complete().expect("complete lines")[..bytes].to_vec();
        self.reader.consume(bytes, &self.ticket);
        let records = lines[..bytes - 1]
            .split(|&b| b == b'\n')
            .filter(|line| !line.starts_with(HEARTBEAT_PREFIX))
            .count();
        if records == 0 {
            return None;
        }
        if !self.ticket.reserve(lines.len()).await {
            return Some(self.line_memory_cut(self.status.records.checked_sub(1)));
        }
        let held = lines.len();
        let (store, quota) = (store.clone(), self.shared.options.quota);
        let batch = self
            .shared
            .pool
            .run(move || {
                let mut store = lock(&store);
                let mut batch = Batch {
                    received: 0,
                    matched: 0,
                    next_seq: 0,
                    stopped: false,
                    durable: None,
                    verdict: store.check_space(lines.len() as u64, &quota).err(),
                };
                let mut records = lines[..lines.len() - 1].split(|&b| b == b'\n');
                while batch.verdict.is_none() {
                    let Some(line) = records.next() else { break };
                    if line.starts_with(HEARTBEAT_PREFIX) {
                        continue;
                    }
                    match store.receive(line, &quota) {
                        Ok(Received::Stored) => batch.received += 1,
                        Ok(Received::Matched) => batch.matched += 1,
                        Err(verdict) => batch.verdict = Some(verdict),
                    }
                }
                match store.durable() {
                    Ok(durable) => batch.durable = durable,
                    Err(verdict) => batch.verdict = batch.verdict.take().or(Some(verdict)),
                }
                batch.next_seq = store.next_seq();
                batch.stopped = store.stopped();
                batch
            })
            .await;
        self.ticket.release(held);
        let Some(batch) = batch else {
            return Some(StreamVerdict::Failed {
                error: "the collector's store threads stopped".into(),
            });
        };
        self.status.received += batch.received;
        self.status.matched += batch.matched;
        self.status.records = batch.next_seq;
        self.stopped = batch.stopped;
        if let Some(durable) = batch.durable {
            match (self.shared.options.acks, &self.shared.committer) {
                (Acks::Durable { .. }, Some(committer)) => {
                    commits.push_back((committer.request(durable), batch.next_seq));
                }
                _ => {
                    if let Err(verdict) = self.ack(batch.next_seq).await {
                        return batch.verdict.or(Some(verdict));
                    }
                }
            }
        }
        batch.verdict
    }
}

//! Fork denials from the kernel's audit subsystem, for kernels without tracepoints
//! (AUDIT + AUDITSYSCALL: every default micro-VM guest kernel we know but libkrunfw's aarch64).
//!
//! [`AuditSource::open`] makes guard the audit daemon (the one receiver of audit records: the
//! kernel sends them to a single netlink port, `AUDIT_SET` pid), refuses if a live auditd
//! holds that place, turns auditing on, and installs one syscall-exit rule: clone, clone3,
//! fork and vfork of the native arch whose exit is `-EAGAIN`, keyed [`RULE_KEY`]. Each
//! matching syscall gives one `AUDIT_SYSCALL` record, read by [`AuditSource::read_batch`] into
//! a [`Denial`]. Drop removes the rule and gives back what it changed.
//!
//! Loss is counted in-band three ways: the kernel's own `lost` counter (`AUDIT_GET`, asked
//! for by [`AuditSource::request_status`], against its value at open), audit serials that
//! never came (every record carries one, from one counter, and the daemon receives them all),
//! and ENOBUFS on the socket.
//!
//! Two settings are changed while guard holds the place, because a tenant drives the record
//! rate: the backlog (records queued for the daemon) is bounded at [`BACKLOG_LIMIT`], and the
//! backlog wait time is 0, so that a tenant's syscall never sleeps on a full queue (the
//! kernel's default is to make it wait up to 60 s); past the bound records are dropped and
//! counted in `lost`.
//!
//! Auditing has a cost beyond the rule: while it is on, every task forked afterwards goes
//! through audit's syscall entry and exit path on every syscall (docs/KERNELS.md measures it).
//! Tasks forked before auditing was turned on are never audited: open the source before the
//! containers start.
use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use netlink_packet_audit::{AuditMessage, RuleMessage, StatusMessage};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_AUDIT};

mod record;
mod wire;

pub use record::{AuditTime, Denial, RecordError};
pub use wire::fork_syscalls;
use wire::{fork_denied_rule, messages, set_receive_timeout};

/// The rule's filter key: records of guard's rule carry it.
pub const RULE_KEY: &str = "guard_fork_denied";
/// Audit records queued in the kernel for the daemon at most (the kernel's default is 64).
pub const BACKLOG_LIMIT: u32 = 1024;
/// How long setup waits for the kernel's answer to a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The socket's receive buffer: records the kernel can hand over before the reader runs.
const RECEIVE_BUFFER: usize = 1 << 20;

const AUDIT_STATUS_ENABLED: u32 = 0x1;
const AUDIT_STATUS_PID: u32 = 0x4;
const AUDIT_STATUS_BACKLOG_LIMIT: u32 = 0x10;
const AUDIT_STATUS_BACKLOG_WAIT_TIME: u32 = 0x20;
const AUDIT_SYSCALL: u16 = 1300;

/// What failed, naming the step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// No audit netlink socket: the kernel lacks CONFIG_AUDIT.
    #[error("opening the audit netlink socket (is CONFIG_AUDIT on?)")]
    Socket(#[source] io::Error),
    /// A socket call failed.
    #[error("{step} on the audit socket")]
    Io {
        /// What guard was doing.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("the kernel refused {step}: {source}")]
    Refused {
        /// The request.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel did not answer a setup request in time.
    #[error("no answer from the kernel to {step} within {REPLY_TIMEOUT:?}")]
    NoReply {
        /// The request.
        step: &'static str,
    },
    /// Another process is the audit daemon.
    #[error(
        "an audit daemon (pid {pid}) receives the audit records: guard cannot take them while it \
         runs (stop it, or forward its records)"
    )]
    DaemonPresent {
        /// The daemon's pid, as the kernel names it.
        pid: u32,
    },
    /// Audit's configuration is locked until reboot.
    #[error("audit is locked (enabled=2, `auditctl -e 2`): no rule can be added until reboot")]
    Locked,
    /// A message of guard's rule's type did not decode.
    #[error("an audit record of type {kind} could not be decoded: {reason}")]
    Decode {
        /// The netlink message type.
        kind: u16,
        /// The decoder's reason.
        reason: String,
    },
    /// A record of guard's rule lacked a field or had a bad one.
    #[error("an AUDIT_SYSCALL record could not be read ({text:?})")]
    Record {
        /// The record as the kernel sent it.
        text: String,
        /// What was wrong.
        #[source]
        source: RecordError,
    },
}

/// What a batch lost, counted since the source opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditLoss {
    /// The kernel's `lost` counter (records dropped: backlog full, rate limit, memory) minus
    /// its value at open, as of the last status reply.
    pub kernel_lost: u64,
    /// Audit serials skipped for good (see the module's doc).
    pub serial_gaps: u64,
    /// Receive-buffer overruns the socket reported (each one loses at least one record).
    pub enobufs: u64,
}

/// One read: the denials that came, undecodable records, and the loss so far.
#[derive(Debug, Default)]
pub struct AuditBatch {
    /// Each denied attempt, in the order received.
    pub denials: Vec<Denial>,
    /// Records of guard's rule that could not be read (counted, never dropped silently).
    pub malformed: Vec<AuditError>,
    /// Loss since open.
    pub loss: AuditLoss,
}

/// What the source changed, to give back on drop.
struct Before {
    enabled: u32,
    backlog_limit: u32,
    backlog_wait_time: u32,
}

/// guard as the audit daemon, with its fork-denial rule installed.
pub struct AuditSource {
    socket: Socket,
    sequence: u32,
    before: Before,
    rule: RuleMessage,
    /// guard is the daemon: drop must give the place and the settings back.
    armed: bool,
    lost_at_open: u32,
    loss: AuditLoss,
    serials: record::Serials,
    buffer: Vec<u8>,
}

impl AuditSource {
    /// Becomes the audit daemon and installs the rule; the socket is non-blocking after.
    pub fn open() -> Result<Self, AuditError> {
        let mut socket = Socket::new(NETLINK_AUDIT).map_err(AuditError::Socket)?;
        socket
            .bind_auto()
            .map_err(|source| AuditError::Io { step: "binding", source })?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|source| AuditError::Io {
            step: "connecting to the kernel",
            source,
        })?;
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        set_receive_timeout(&socket, REPLY_TIMEOUT)?;
        let mut source = Self {
            socket,
            sequence: 0,
            before: Before {
                enabled: 0,
                backlog_limit: 0,
                backlog_wait_time: 0,
            },
            rule: fork_denied_rule(),
            armed: false,
            lost_at_open: 0,
            loss: AuditLoss::default(),
            serials: record::Serials::default(),
            buffer: vec![0; 1 << 16],
        };
        let status = source.status()?;
        if status.enabled == 2 {
            return Err(AuditError::Locked);
        }
        if status.pid != 0 && status.pid != std::process::id() && process_alive(status.pid) {
            return Err(AuditError::DaemonPresent { pid: status.pid });
        }
        source.before = Before {
            enabled: status.enabled,
            backlog_limit: status.backlog_limit,
            backlog_wait_time: status.backlog_wait_time,
        };
        source.lost_at_open = status.lost;
        let mut set = StatusMessage::new();
        set.mask = AUDIT_STATUS_ENABLED
            | AUDIT_STATUS_PID
            | AUDIT_STATUS_BACKLOG_LIMIT
            | AUDIT_STATUS_BACKLOG_WAIT_TIME;
        set.enabled = 1;
        set.pid = std::process::id();
        set.backlog_limit = BACKLOG_LIMIT;
        set.backlog_wait_time = 0;
        match source.request(AuditMessage::SetStatus(set), "AUDIT_SET (guard as the daemon)") {
            Err(AuditError::Refused { source: error, .. })
                if error.raw_os_error() == Some(libc::EEXIST) =>
            {
                return Err(AuditError::DaemonPresent { pid: status.pid });
            }
            other => other?,
        }
        // From here on, drop gives back the daemon's place and the settings.
        source.armed = true;
        let rule = AuditMessage::AddRule(source.rule.clone());
        match source.request(rule, "AUDIT_ADD_RULE (the fork-denial rule)") {
            // Left by a guard that died: the same rule, now ours to remove.
            Err(AuditError::Refused { source: error, .. })
                if error.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
        source
            .socket
            .set_non_blocking(true)
            .map_err(|source| AuditError::Io {
                step: "making the socket non-blocking",
                source,
            })?;
        Ok(source)
    }

    /// Asks the kernel for its status; the reply's `lost` counter comes with a later
    /// [`read_batch`](Self::read_batch).
    pub fn request_status(&mut self) -> Result<(), AuditError> {
        self.send(AuditMessage::GetStatus(None), 0, "AUDIT_GET")
    }

    /// Every record waiting on the socket, without blocking.
    pub fn read_batch(&mut self) -> Result<AuditBatch, AuditError> {
        let mut batch = AuditBatch::default();
        loop {
            let received = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.loss.enobufs += 1;
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(AuditError::Io {
                        step: "receiving",
                        source,
                    });
                }
            };
            let mut datagram = self.buffer[..received].to_vec();
            for message in messages(&mut datagram) {
                self.take(message, &mut batch);
            }
        }
        self.loss.serial_gaps = self.serials.lost;
        batch.loss = self.loss;
        Ok(batch)
    }

    /// One message of a datagram into the batch.
    fn take(&mut self, bytes: &[u8], batch: &mut AuditBatch) {
        let kind = NetlinkBuffer::new(bytes).message_type();
        match NetlinkMessage::<AuditMessage>::deserialize(bytes) {
            Ok(message) => match message.payload {
                NetlinkPayload::InnerMessage(AuditMessage::GetStatus(Some(status))) => {
                    self.loss.kernel_lost = status.lost.wrapping_sub(self.lost_at_open) as u64;
                }
                NetlinkPayload::InnerMessage(
                    AuditMessage::Event((kind, text)) | AuditMessage::Other((kind, text)),
                ) => {
                    if let Ok((_, serial)) = record::stamp(&text) {
                        self.serials.saw(serial);
                    }
                    if kind == AUDIT_SYSCALL && record::key(&text).as_deref() == Some(RULE_KEY) {
                        match record::denial(&text) {
                            Ok(denial) => batch.denials.push(denial),
                            Err(source) => batch.malformed.push(AuditError::Record { text, source }),
                        }
                    }
                }
                _ => {}
            },
            // Only records of guard's rule matter; any other undecodable one is still named.
            Err(error) if kind == AUDIT_SYSCALL => batch.malformed.push(AuditError::Decode {
                kind,
                reason: error.to_string(),
            }),
            Err(_) => {}
        }
    }

    /// The kernel's audit status, asked and awaited (setup only: the socket still blocks).
    fn status(&mut self) -> Result<StatusMessage, AuditError> {
        self.send(AuditMessage::GetStatus(None), 0, "AUDIT_GET")?;
        let sequence = self.sequence;
        loop {
            let mut datagram = self.receive("AUDIT_GET")?;
            for bytes in messages(&mut datagram) {
                let Ok(message) = NetlinkMessage::<AuditMessage>::deserialize(bytes) else {
                    continue;
                };
                match message.payload {
                    NetlinkPayload::InnerMessage(AuditMessage::GetStatus(Some(status)))
                        if message.header.sequence_number == sequence =>
                    {
                        return Ok(status);
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(AuditError::Refused {
                            step: "AUDIT_GET",
                            source: error.to_io(),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends `message` with an acknowledgement asked for and waits for it (setup and drop).
    fn request(&mut self, message: AuditMessage, step: &'static str) -> Result<(), AuditError> {
        self.send(message, NLM_F_ACK, step)?;
        let sequence = self.sequence;
        loop {
            let mut datagram = self.receive(step)?;
            for bytes in messages(&mut datagram) {
                let Ok(message) = NetlinkMessage::<AuditMessage>::deserialize(bytes) else {
                    continue;
                };
                if let NetlinkPayload::Error(error) = message.payload {
                    if message.header.sequence_number != sequence {
                        continue;
                    }
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(AuditError::Refused {
                            step,
                            source: error.to_io(),
                        }),
                    };
                }
            }
        }
    }

    fn send(&mut self, message: AuditMessage, flags: u16, step: &'static str) -> Result<(), AuditError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| AuditError::Io { step, source })?;
        Ok(())
    }

    /// One datagram, blocking up to the receive timeout (setup and drop only).
    fn receive(&mut self, step: &'static str) -> Result<Vec<u8>, AuditError> {
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => return Ok(self.buffer[..n].to_vec()),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(AuditError::NoReply { step });
                }
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.loss.enobufs += 1;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(AuditError::Io { step, source }),
            }
        }
    }

    /// The rule back out, the daemon's place and the settings as they were.
    fn restore(&mut self) -> Result<(), AuditError> {
        self.socket
            .set_non_blocking(false)
            .map_err(|source| AuditError::Io {
                step: "making the socket blocking",
                source,
            })?;
        let removed = self.request(
            AuditMessage::DelRule(self.rule.clone()),
            "AUDIT_DEL_RULE (the fork-denial rule)",
        );
        let mut set = StatusMessage::new();
        set.mask = AUDIT_STATUS_ENABLED
            | AUDIT_STATUS_PID
            | AUDIT_STATUS_BACKLOG_LIMIT
            | AUDIT_STATUS_BACKLOG_WAIT_TIME;
        set.enabled = self.before.enabled;
        set.pid = 0;
        set.backlog_limit = self.before.backlog_limit;
        set.backlog_wait_time = self.before.backlog_wait_time;
        let reset = self.request(AuditMessage::SetStatus(set), "AUDIT_SET (restoring)");
        removed.and(reset)
    }
}

impl AsRawFd for AuditSource {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for AuditSource {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(error) = self.restore() {
            tracing::warn!(%error, "audit: could not restore the kernel's audit settings");
        }
    }
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

//! Every task's exit statistics from the kernel's taskstats (generic netlink family
//! `TASKSTATS`; TASKSTATS + TASK_DELAY_ACCT: every default micro-VM guest kernel we know), for
//! kernels without tracepoints: per task, how long it waited in direct reclaim ("freepages")
//! and on thrashing, delivered once, when it exits.
//!
//! [`TaskstatsSource::open`] resolves the family through the generic netlink controller,
//! turns delay accounting on if it is off (`kernel.task_delayacct`; without it every delay
//! reads 0), and registers the socket for the exits of every possible CPU
//! (`TASKSTATS_CMD_ATTR_REGISTER_CPUMASK`). [`TaskstatsSource::read_batch`] reads a
//! [`TaskExit`] per exited task. Drop deregisters and puts delay accounting back as it was.
//!
//! Loss: the kernel sends each exit to the listener without waiting; a full receive buffer
//! drops it and marks the socket, whose next read fails with ENOBUFS. Records carry no
//! sequence number, so ENOBUFS (one per overrun, each losing at least one record) is the only
//! in-band count.
use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use netlink_packet_core::{
    DecodeError, Emitable, NLA_HEADER_SIZE, NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

mod record;

pub use record::{MIN_VERSION, StatsError, TaskExit};

/// Delay accounting's switch; absent where the kernel lacks TASK_DELAY_ACCT.
pub const DELAYACCT_SYSCTL: &str = "/proc/sys/kernel/task_delayacct";
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";
/// The receive buffer: exits the kernel can hand over before the reader runs (a record is
/// ~500 bytes with its headers, ~1 KiB of socket memory).
const RECEIVE_BUFFER: usize = 4 << 20;

const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_ATTR_REGISTER_CPUMASK: u16 = 3;
const TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK: u16 = 4;
const TASKSTATS_TYPE_PID: u16 = 1;
const TASKSTATS_TYPE_STATS: u16 = 3;
const TASKSTATS_TYPE_AGGR_PID: u16 = 4;

/// What failed, naming the step or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskstatsError {
    /// No generic netlink socket.
    #[error("opening a generic netlink socket")]
    Socket(#[source] io::Error),
    /// A socket call failed.
    #[error("{step} on the taskstats socket")]
    Io {
        /// What guard was doing.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The controller knows no TASKSTATS family.
    #[error("the kernel has no TASKSTATS generic netlink family (CONFIG_TASKSTATS off?)")]
    NoFamily,
    /// The kernel answered a request with an error.
    #[error("the kernel refused {step}: {source}")]
    Refused {
        /// The request.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel has no delay accounting.
    #[error(
        "{DELAYACCT_SYSCTL} is absent: the kernel has no delay accounting (CONFIG_TASK_DELAY_ACCT)"
    )]
    NoDelayAccounting,
    /// Delay accounting is off and writing the sysctl failed.
    #[error("delay accounting is off and could not be turned on ({DELAYACCT_SYSCTL})")]
    DelayAccountingOff(#[source] io::Error),
    /// A file could not be read.
    #[error("reading {path}")]
    File {
        /// The file.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A message did not decode.
    #[error("a taskstats message could not be decoded: {0}")]
    Decode(String),
    /// An exit's `struct taskstats` could not be read.
    #[error("the taskstats record of pid {pid:?}")]
    Record {
        /// The task, from the record's PID attribute.
        pid: Option<u32>,
        /// What was wrong.
        #[source]
        source: StatsError,
    },
}

/// One read: the exits that came, records that could not be read, and the overruns so far.
#[derive(Debug, Default)]
pub struct TaskstatsBatch {
    /// One per exited task, in the order received.
    pub exits: Vec<TaskExit>,
    /// Records that could not be read (counted, never dropped silently).
    pub malformed: Vec<TaskstatsError>,
    /// ENOBUFS since open: receive-buffer overruns, each losing at least one exit.
    pub enobufs: u64,
}

/// A taskstats request: its command and attributes.
#[derive(Debug, Clone)]
struct Taskstats {
    cmd: u8,
    /// (kind, value) attributes, or on a reply the raw attribute bytes.
    attributes: Vec<(u16, Vec<u8>)>,
    raw: Vec<u8>,
}

impl GenlFamily for Taskstats {
    fn family_name() -> &'static str {
        "TASKSTATS"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Taskstats {
    fn buffer_len(&self) -> usize {
        self.attributes
            .iter()
            .map(|(_, value)| NLA_HEADER_SIZE + value.len().next_multiple_of(4))
            .sum()
    }
    fn emit(&self, buffer: &mut [u8]) {
        let mut at = 0;
        for (kind, value) in &self.attributes {
            let length = NLA_HEADER_SIZE + value.len();
            buffer[at..at + 2].copy_from_slice(&(length as u16).to_ne_bytes());
            buffer[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            buffer[at + 4..at + length].copy_from_slice(value);
            at += length.next_multiple_of(4);
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Taskstats {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self {
            cmd: header.cmd,
            attributes: Vec::new(),
            raw: buf.to_vec(),
        })
    }
}

/// The exits of every task, registered on every possible CPU.
pub struct TaskstatsSource {
    socket: Socket,
    family: u16,
    cpumask: String,
    sequence: u32,
    /// Delay accounting as found, to put back on drop when guard turned it on.
    delayacct_was_off: bool,
    enobufs: u64,
    buffer: Vec<u8>,
}

/// Turns delay accounting on; true if it was off.
fn enable_delay_accounting() -> Result<bool, TaskstatsError> {
    if !Path::new(DELAYACCT_SYSCTL).exists() {
        return Err(TaskstatsError::NoDelayAccounting);
    }
    let now = std::fs::read_to_string(DELAYACCT_SYSCTL).map_err(|source| TaskstatsError::File {
        path: DELAYACCT_SYSCTL,
        source,
    })?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(DELAYACCT_SYSCTL, "1").map_err(TaskstatsError::DelayAccountingOff)?;
    Ok(true)
}

impl TaskstatsSource {
    /// Resolves the family, turns delay accounting on, registers for every CPU's exits; the
    /// socket is non-blocking after.
    pub fn open() -> Result<Self, TaskstatsError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(TaskstatsError::Socket)?;
        socket.bind_auto().map_err(|source| TaskstatsError::Io {
            step: "binding",
            source,
        })?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|source| TaskstatsError::Io {
                step: "connecting to the kernel",
                source,
            })?;
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        let cpumask = std::fs::read_to_string(POSSIBLE_CPUS)
            .map_err(|source| TaskstatsError::File {
                path: POSSIBLE_CPUS,
                source,
            })?
            .trim()
            .to_string();
        let mut source = Self {
            socket,
            family: 0,
            cpumask,
            sequence: 0,
            delayacct_was_off: false,
            enobufs: 0,
            buffer: vec![0; 1 << 16],
        };
        source.family = source.resolve_family()?;
        source.delayacct_was_off = enable_delay_accounting()?;
        let mask = source.cpumask_attribute();
        source.request(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask, "registering for exits")?;
        source
            .socket
            .set_non_blocking(true)
            .map_err(|source| TaskstatsError::Io {
                step: "making the socket non-blocking",
                source,
            })?;
        Ok(source)
    }

    fn cpumask_attribute(&self) -> Vec<u8> {
        let mut mask = self.cpumask.clone().into_bytes();
        mask.push(0);
        mask
    }

    /// The family's id from the generic netlink controller.
    fn resolve_family(&mut self) -> Result<u16, TaskstatsError> {
        let mut message = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("TASKSTATS".into())],
        });
        message.finalize();
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.send(&bytes, "asking for the TASKSTATS family")?;
        let received = self.receive("asking for the TASKSTATS family")?;
        let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&received)
            .map_err(|error| TaskstatsError::Decode(error.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(message) => message
                .payload
                .nlas
                .iter()
                .find_map(|attribute| match attribute {
                    GenlCtrlAttrs::FamilyId(id) => Some(*id),
                    _ => None,
                })
                .ok_or(TaskstatsError::NoFamily),
            // ENOENT: no such family.
            _ => Err(TaskstatsError::NoFamily),
        }
    }

    /// A TASKSTATS_CMD_GET with one attribute, acknowledged.
    fn request(&mut self, kind: u16, value: Vec<u8>, step: &'static str) -> Result<(), TaskstatsError> {
        let mut message = GenlMessage::from_payload(Taskstats {
            cmd: TASKSTATS_CMD_GET,
            attributes: vec![(kind, value)],
            raw: Vec::new(),
        });
        message.set_resolved_family_id(self.family);
        message.finalize();
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.send(&bytes, step)?;
        loop {
            let received = self.receive(step)?;
            let Ok(reply) = NetlinkMessage::<GenlMessage<Taskstats>>::deserialize(&received) else {
                continue;
            };
            if let NetlinkPayload::Error(error) = reply.payload {
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                return match error.code {
                    None => Ok(()),
                    Some(_) => Err(TaskstatsError::Refused {
                        step,
                        source: error.to_io(),
                    }),
                };
            }
        }
    }

    fn send(&self, bytes: &[u8], step: &'static str) -> Result<(), TaskstatsError> {
        self.socket
            .send(bytes, 0)
            .map(drop)
            .map_err(|source| TaskstatsError::Io { step, source })
    }

    /// One datagram, blocking (setup and drop only).
    fn receive(&mut self, step: &'static str) -> Result<Vec<u8>, TaskstatsError> {
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => return Ok(self.buffer[..n].to_vec()),
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => self.enobufs += 1,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(TaskstatsError::Io { step, source }),
            }
        }
    }

    /// Every exit waiting on the socket, without blocking.
    pub fn read_batch(&mut self) -> Result<TaskstatsBatch, TaskstatsError> {
        let mut batch = TaskstatsBatch::default();
        loop {
            let received = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.enobufs += 1;
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TaskstatsError::Io {
                        step: "receiving",
                        source,
                    });
                }
            };
            match NetlinkMessage::<GenlMessage<Taskstats>>::deserialize(&self.buffer[..received]) {
                Ok(message) => {
                    if let NetlinkPayload::InnerMessage(genl) = message.payload {
                        exits(&genl.payload.raw, &mut batch);
                    }
                }
                Err(error) => batch.malformed.push(TaskstatsError::Decode(error.to_string())),
            }
        }
        batch.enobufs = self.enobufs;
        Ok(batch)
    }
}

/// The `TASKSTATS_TYPE_AGGR_PID` attributes of a message's payload (one per exited task; the
/// `AGGR_TGID` one a thread group's last exit adds sums the group and is skipped).
fn exits(attributes: &[u8], batch: &mut TaskstatsBatch) {
    for attribute in NlasIterator::new(attributes).filter_map(Result::ok) {
        if attribute.kind() & netlink_packet_core::NLA_TYPE_MASK != TASKSTATS_TYPE_AGGR_PID {
            continue;
        }
        let mut pid = None;
        let mut stats = None;
        let value: &[u8] = attribute.value();
        for inner in NlasIterator::new(value).filter_map(Result::ok) {
            let inner: NlaBuffer<&[u8]> = inner;
            let kind = inner.kind();
            let bytes: &[u8] = inner.into_inner();
            // The value after the 4-byte header, as long as the attribute says.
            let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]])).min(bytes.len());
            let body = &bytes[NLA_HEADER_SIZE.min(length)..length];
            match kind {
                TASKSTATS_TYPE_PID if body.len() >= 4 => {
                    pid = body[..4].try_into().ok().map(u32::from_ne_bytes);
                }
                TASKSTATS_TYPE_STATS => stats = Some(body),
                _ => {}
            }
        }
        match stats.map(record::parse) {
            Some(Ok(exit)) => batch.exits.push(exit),
            Some(Err(source)) => batch.malformed.push(TaskstatsError::Record { pid, source }),
            None => batch.malformed.push(TaskstatsError::Decode(format!(
                "an AGGR_PID attribute without stats (pid {pid:?})"
            ))),
        }
    }
}

impl AsRawFd for TaskstatsSource {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for TaskstatsSource {
    fn drop(&mut self) {
        let _ = self.socket.set_non_blocking(false);
        let mask = self.cpumask_attribute();
        if let Err(error) = self.request(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, mask, "deregistering") {
            tracing::warn!(%error, "taskstats: could not deregister (closing the socket does)");
        }
        if self.delayacct_was_off {
            let _ = std::fs::write(DELAYACCT_SYSCTL, "0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One exit's payload as the kernel builds it: AGGR_PID { PID, STATS }.
    fn payload(pid: u32, stats: &[u8]) -> Vec<u8> {
        let nla = |kind: u16, value: &[u8]| {
            let mut out = Vec::new();
            out.extend(((4 + value.len()) as u16).to_ne_bytes());
            out.extend(kind.to_ne_bytes());
            out.extend(value);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        };
        let mut inner = nla(TASKSTATS_TYPE_PID, &pid.to_ne_bytes());
        inner.extend(nla(TASKSTATS_TYPE_STATS, stats));
        nla(TASKSTATS_TYPE_AGGR_PID | netlink_packet_core::NLA_F_NESTED, &inner)
    }

    #[test]
    fn reads_an_exit_and_names_a_bad_one() {
        let mut stats = vec![0u8; 432];
        stats[..2].copy_from_slice(&14u16.to_ne_bytes());
        stats[128..132].copy_from_slice(&77u32.to_ne_bytes());
        let mut batch = TaskstatsBatch::default();
        exits(&payload(77, &stats), &mut batch);
        assert_eq!(batch.exits.len(), 1);
        assert_eq!(batch.exits[0].pid, 77);
        exits(&payload(78, &stats[..100]), &mut batch);
        assert!(matches!(
            batch.malformed.as_slice(),
            [TaskstatsError::Record { pid: Some(78), .. }]
        ));
    }

    #[test]
    fn a_request_encodes_its_attribute() {
        let request = Taskstats {
            cmd: TASKSTATS_CMD_GET,
            attributes: vec![(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, b"0-1\0".to_vec())],
            raw: Vec::new(),
        };
        let mut bytes = vec![0; request.buffer_len()];
        request.emit(&mut bytes);
        assert_eq!(bytes, [8, 0, 3, 0, b'0', b'-', b'1', 0]);
    }
}

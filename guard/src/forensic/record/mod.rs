//! The record format: one JSON object per line with a fixed key order, chained by SHA-256 of
//! the previous line's raw bytes and sealed by a hash of its own bytes. docs/LOG-FORMAT.md is
//! the normative description; this file is its implementation.
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

mod gap;
pub use gap::Gap;
mod budget;
pub use budget::{BudgetExhausted, BudgetSummary, Dropped};

/// SHA-256 output.
pub type Digest = [u8; 32];

/// `prev` of the very first record of a log: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// [`GENESIS`] as bytes: the chain's head before the first record.
pub const GENESIS_DIGEST: Digest = [0; 32];

/// Every line ends with exactly `,"hash":"<64 lowercase hex>"}`; `hash` is the SHA-256 of the
/// bytes before this suffix. Fixed length, so a verifier can split without parsing.
pub const HASH_MARKER: &[u8] = b",\"hash\":\"";
/// The length of that suffix: 75 bytes.
pub const HASH_SUFFIX_LEN: usize = HASH_MARKER.len() + 64 + 2;

/// Upper bound for one line; longer lines are refused by the writer and reported by readers
/// (this keeps readers' memory bounded on garbage input).
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Record kinds the log itself writes. Event kinds from the pipeline are free-form
/// (`[a-z][a-z0-9_]*`), but these have rules the verifier checks, so `append` refuses them,
/// except `lost` and `throttle` which have no structural rules.
pub mod kinds {
    /// First record of the log and of every writer session ([`StartInfo`](super::StartInfo)).
    pub const START: &str = "start";
    /// First record of every file after the first ([`Rotate`](super::Rotate)).
    pub const ROTATE: &str = "rotate";
    /// Every `checkpoint_every` records, or on request ([`Checkpoint`](super::Checkpoint)).
    pub const CHECKPOINT: &str = "checkpoint";
    /// Last record of a cleanly closed session ([`Checkpoint`](super::Checkpoint)).
    pub const STOP: &str = "stop";
    /// After `start`, when the writer truncated a torn tail on reopening
    /// ([`Repair`](super::Repair)).
    pub const REPAIR: &str = "repair";
    /// Events that happened but were not recorded ([`Lost`](super::Lost)).
    pub const LOST: &str = "lost";
    /// Events sampled away under a storm ([`Throttle`](super::Throttle)).
    pub const THROTTLE: &str = "throttle";
    /// The first record after an outage: the seqs the writer could not write
    /// ([`Gap`](super::Gap)).
    pub const GAP: &str = "gap";
    /// A container's events of one kind folded into one record under a storm
    /// ([`SummaryRecord`](crate::forensic::SummaryRecord)).
    pub const SUMMARY: &str = "summary";

    /// Files removed to stay within the byte budget ([`Dropped`](super::Dropped)).
    pub const DROPPED: &str = "dropped";
    /// Individual events stop: the budget is exhausted
    /// ([`BudgetExhausted`](super::BudgetExhausted)).
    pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";
    /// What the budget cost, before `stop` ([`BudgetSummary`](super::BudgetSummary)).
    pub const LOG_BUDGET: &str = "log_budget";

    /// Kinds only the writer itself may emit.
    pub const RESERVED: &[&str] = &[
        START,
        ROTATE,
        CHECKPOINT,
        STOP,
        REPAIR,
        GAP,
        DROPPED,
        BUDGET_EXHAUSTED,
        LOG_BUDGET,
    ];
}

/// A record that cannot be written; nothing was written.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The payload (or the container id or kind) does not serialize to JSON, e.g. a map with
    /// non-string keys.
    #[error("cannot serialize the payload of a {kind:?} record: {source}")]
    Payload {
        /// The record's kind.
        kind: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A kind that is not `[a-z][a-z0-9_]*`.
    #[error("invalid kind {kind:?}: kinds are [a-z][a-z0-9_]*")]
    BadKind {
        /// The kind given.
        kind: String,
    },
    /// The encoded line is longer than [`MAX_LINE_BYTES`].
    #[error("a {kind:?} record is {bytes} bytes, more than the limit of {MAX_LINE_BYTES}")]
    TooLarge {
        /// The record's kind.
        kind: String,
        /// The encoded line's length, in bytes.
        bytes: usize,
    },
}

/// A record as read back from a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 0 for the log's first record, then +1 per record across files and sessions.
    pub seq: u64,
    /// The guest's boot id when the record was written.
    pub boot_id: String,
    /// RFC 3339 UTC, nanoseconds, `Z`: `2026-11-29T20:03:15.123456789Z`.
    pub wall: String,
    /// CLOCK_MONOTONIC nanoseconds (per boot, see `boot_id`).
    pub mono_ns: u64,
    /// `[a-z][a-z0-9_]*`: one of [`kinds`] or an event kind.
    pub kind: String,
    /// The container the record is about; None for log-level records.
    pub container: Option<String>,
    /// The kind's payload.
    pub payload: serde_json::Value,
    /// Lowercase hex SHA-256 of the previous line ([`GENESIS`] for the first).
    pub prev: String,
    /// Lowercase hex SHA-256 of this line's bytes before `,"hash":"` (its seal).
    pub hash: String,
}

/// First record of every writer session (and of the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartInfo {
    /// The guard crate's version.
    pub guard_version: String,
    /// `uname -r`.
    pub kernel: String,
    /// Capability tier found by the probe (0, 1 or 2; see docs/ARCHITECTURE.md).
    pub tier: u8,
    /// The limits in force, as the caller describes them.
    pub limits: serde_json::Value,
    /// Anything else the caller wants on record (agent version, config path…).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl StartInfo {
    /// Fills in this crate's version and the running kernel's release.
    pub fn new(tier: u8, limits: serde_json::Value) -> Self {
        Self {
            guard_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: kernel_release(),
            tier,
            limits,
            extra: serde_json::Map::new(),
        }
    }
}

/// First record of every file after the first: names the file it continues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// The file this one continues (`guard-000004.jsonl`).
    pub prev_file: String,
    /// Complete lines in `prev_file`.
    pub prev_records: u64,
    /// Size of `prev_file` in bytes.
    pub prev_bytes: u64,
}

/// Payload of `checkpoint` and `stop`: records before this one and the hash of the last of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Records before this one: its own `seq`.
    pub count: u64,
    /// Lowercase hex SHA-256 of the last of them: its own `prev`. A copy kept off the machine
    /// exposes a log cut short or rewritten later.
    pub head: String,
}

/// Written by a writer that truncated a torn tail when it reopened the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repair {
    /// The file truncated.
    pub file: String,
    /// The torn line's number (from 1).
    pub line: u64,
    /// Bytes removed.
    pub removed_bytes: u64,
}

/// Events that happened but were not recorded individually.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    /// Where they were dropped: `"bpf_ringbuf"` (reserve failed), `"user_queue"`, …
    pub source: String,
    /// The kind of the lost events, when known.
    pub event_kind: Option<String>,
    /// The CPU they were lost on, when known.
    pub cpu: Option<u32>,
    /// How many.
    pub count: u64,
}

/// Events deliberately sampled away under a storm (per-container counters stay exact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    /// The kind of the suppressed events.
    pub event_kind: String,
    /// How many were suppressed.
    pub suppressed: u64,
    /// Over how long a window, in milliseconds.
    pub window_ms: u64,
}

/// The running kernel's release (`uname -r`), or `unknown`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether `kind` may name a record: `[a-z][a-z0-9_]*`.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::forensic::record::is_valid_kind;
///
/// assert!(is_valid_kind("oom_kill") && is_valid_kind("fork2"));
/// assert!(!is_valid_kind("fork-denied") && !is_valid_kind("Fork") && !is_valid_kind(""));
/// # }
/// ```
pub fn is_valid_kind(kind: &str) -> bool {
    let mut bytes = kind.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex, two digits per byte.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    // Only ASCII digits and letters were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// [`to_hex`] appended to `out`: the writer's `prev` and seal, without a String each.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    // Two digits per byte from one table, into a stack buffer, then one copy: no capacity
    // check per digit.
    const PAIRS: [[u8; 2]; 256] = {
        let mut pairs = [[0; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [HEX_DIGITS[b >> 4], HEX_DIGITS[b & 15]];
            b += 1;
        }
        pairs
    };
    for chunk in bytes.chunks(32) {
        let mut digits = [[0u8; 2]; 32];
        for (pair, &b) in digits.iter_mut().zip(chunk) {
            *pair = PAIRS[usize::from(b)];
        }
        out.extend_from_slice(digits[..chunk.len()].as_flattened());
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// What a line's own bytes say about it, before any JSON parsing.
pub struct LineDigest {
    /// SHA-256 of the whole line: the next record's `prev`.
    pub line: Digest,
    /// Whether the line ends with a `hash` suffix matching the bytes before it.
    pub seal: Seal,
}

/// Whether a line's `hash` seals its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// The suffix matches the bytes before it.
    Valid,
    /// The suffix is there but the hash does not match: the line was altered.
    Mismatch,
    /// No `,"hash":"<64 lowercase hex>"}` suffix.
    Missing,
}

/// Hashes a line (without its newline) once for both the chain and its seal.
pub fn digest_line(line: &[u8]) -> LineDigest {
    let Some(split) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
        return LineDigest {
            line: sha256(line),
            seal: Seal::Missing,
        };
    };
    let (body, suffix) = line.split_at(split);
    let mut hasher = Sha256::new();
    hasher.update(body);
    let whole = hasher.clone().chain_update(suffix).finalize().into();
    let hex = &suffix[HASH_MARKER.len()..HASH_MARKER.len() + 64];
    let well_formed = suffix.starts_with(HASH_MARKER)
        && suffix.ends_with(b"\"}")
        && hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let seal = if !well_formed {
        Seal::Missing
    } else if to_hex(&hasher.finalize()).as_bytes() == hex {
        Seal::Valid
    } else {
        Seal::Mismatch
    };
    LineDigest { line: whole, seal }
}

/// A record's payload as the writer encodes it: every `Serialize` type, through serde_json. A
/// payload written once per event may write its JSON itself instead (the event sink's does),
/// to exactly the bytes serde_json would write, which its tests must show.
pub(crate) trait Payload {
    /// Appends the payload as one JSON value.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
}

impl<T: Serialize + ?Sized> Payload for T {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }
}

/// The fields of a record the writer fills in around the payload.
pub(crate) struct LineHead<'a> {
    pub seq: u64,
    /// The boot id as a JSON string ([`push_json_str`]): the same for every record of a
    /// writer, so it is encoded once.
    pub boot_id_json: &'a [u8],
    /// RFC 3339 ([`time::WallText`](super::time::WallText)).
    pub wall: &'a [u8],
    pub mono_ns: u64,
    pub kind: &'a str,
    pub container: Option<&'a str>,
    pub prev: &'a Digest,
}

/// Writes one complete line including its trailing newline into `out` (cleared first) in the
/// canonical layout and returns the SHA-256 of the line without the newline.
///
/// The fixed fields are appended as bytes rather than through serde_json (this runs once per
/// event); the result is byte for byte what serde_json wrote for them, which
/// `tests::encode_line_as_serde_json_did` holds it to. Only the payload goes through serde.
pub(crate) fn encode_line<P: Payload + ?Sized>(
    out: &mut Vec<u8>,
    head: &LineHead<'_>,
    payload: &P,
) -> Result<Digest, RecordError> {
    let mut numbers = itoa::Buffer::new();
    out.clear();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(numbers.format(head.seq).as_bytes());
    out.extend_from_slice(b",\"boot_id\":");
    out.extend_from_slice(head.boot_id_json);
    out.extend_from_slice(b",\"wall\":\"");
    out.extend_from_slice(head.wall);
    out.extend_from_slice(b"\",\"mono_ns\":");
    out.extend_from_slice(numbers.format(head.mono_ns).as_bytes());
    out.extend_from_slice(b",\"kind\":");
    push_json_str(out, head.kind);
    out.extend_from_slice(b",\"container\":");
    match head.container {
        Some(container) => push_json_str(out, container),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"payload\":");
    payload
        .write_json(out)
        .map_err(|source| RecordError::Payload {
            kind: head.kind.to_owned(),
            source,
        })?;
    out.extend_from_slice(b",\"prev\":\"");
    push_hex(out, head.prev);
    out.push(b'"');
    // The body is hashed once: its state seals the line, and the same state, continued over
    // the seal, is the whole line's digest (the next record's `prev`).
    let mut hasher = Sha256::new();
    hasher.update(&out[..]);
    let body_state = hasher.clone();
    let body_len = out.len();
    out.extend_from_slice(HASH_MARKER);
    push_hex(out, &hasher.finalize());
    out.extend_from_slice(b"\"}");
    if out.len() > MAX_LINE_BYTES {
        return Err(RecordError::TooLarge {
            kind: head.kind.to_owned(),
            bytes: out.len(),
        });
    }
    let digest = body_state.chain_update(&out[body_len..]).finalize().into();
    out.push(b'\n');
    Ok(digest)
}

/// `text` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\` with a
/// backslash, control characters as `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything
/// else (DEL, non-ASCII) as is. The common case, nothing to escape, is one copy.
pub(crate) fn push_json_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut plain_from = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..at]);
        plain_from = at + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            push_hex(out, &[b]);
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// The encoder as it was before `encode_line` wrote the fixed fields itself (every field
/// through serde_json, numbers through `write!`): tests hold the log's bytes to it.
#[cfg(test)]
pub(crate) fn encode_line_reference<P: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    head: &LineHead<'_>,
    payload: &P,
) -> Result<Digest, serde_json::Error> {
    use std::io::Write as _;
    let boot_id: String = serde_json::from_slice(head.boot_id_json)?;
    let wall = String::from_utf8_lossy(head.wall);
    out.clear();
    let _ = write!(out, "{{\"seq\":{},\"boot_id\":", head.seq);
    serde_json::to_writer(&mut *out, &boot_id)?;
    let _ = write!(
        out,
        ",\"wall\":\"{}\",\"mono_ns\":{},\"kind\":",
        wall, head.mono_ns
    );
    serde_json::to_writer(&mut *out, head.kind)?;
    out.extend_from_slice(b",\"container\":");
    serde_json::to_writer(&mut *out, &head.container)?;
    out.extend_from_slice(b",\"payload\":");
    serde_json::to_writer(&mut *out, payload)?;
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(to_hex(head.prev).as_bytes());
    out.push(b'"');
    let seal = to_hex(&sha256(out));
    out.extend_from_slice(HASH_MARKER);
    out.extend_from_slice(seal.as_bytes());
    out.extend_from_slice(b"\"}");
    let digest = sha256(out);
    out.push(b'\n');
    Ok(digest)
}

#[cfg(test)]
mod tests;

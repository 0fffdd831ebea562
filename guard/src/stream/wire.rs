//! The wire protocol (docs/STREAM.md): JSON control lines around the log's own lines, each
//! ending in `\n`.
//!
//! guest → host `{"hello":{…}}`; host → guest `{"challenge":{…}}`; guest → host
//! `{"proof":{…}}` (skipped on a listener without a key); host → guest `{"resume":{…}}` or
//! `{"refused":{…}}`; then the guest sends log lines byte for byte (and `{"heartbeat":{}}` when
//! it has nothing to send), the host answers `{"ack":{…}}` as its copy reaches stable storage,
//! and `{"ended":{…}}` with its verdict when it ends a stream that failed.
use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

use super::StreamVerdict;
use crate::forensic::record::MAX_LINE_BYTES;

/// The protocol's version; a host refuses any other.
pub const VERSION: u32 = 2;
/// The longest control line either side accepts.
pub const MAX_CONTROL_BYTES: usize = 64 << 10;
/// The longest record line: the log's own bound.
pub const MAX_RECORD_BYTES: usize = MAX_LINE_BYTES;

/// The guest's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol's version: [`VERSION`].
    pub version: u32,
    /// The guest's name; the host refuses it unless it is the name the host gave the
    /// transport the guest came on ([`valid_guest_name`]).
    pub guest: String,
    /// The guest's boot id, for the operator's status line (and inside the proof).
    pub boot_id: String,
}

/// The host's fresh random challenge, answered by a [`Proof`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// 32 random bytes, 64 lowercase hex digits, new for every connection.
    pub nonce: String,
}

/// The guest's answer to a [`Challenge`]: HMAC-SHA256 under the guest's key
/// ([`StreamKey::proof`](super::StreamKey::proof)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// 64 lowercase hex digits.
    pub mac: String,
}

/// Where the guest is to continue: the host holds `next_seq` records whose last line hashes
/// to `head` (the genesis value when it holds none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Records the host holds: the seq the guest sends next.
    pub next_seq: u64,
    /// Lowercase hex SHA-256 of the last line held (64 zeros when none).
    pub head: String,
}

/// The host holds every record below `next_seq` on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Every record below this seq is in the host's copy, synced. Never decreases.
    pub next_seq: u64,
}

/// Why the host refused a connection, for the sender's health (the `reason` says it in words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The first line is not a hello, or another protocol version.
    BadHello,
    /// The hello's name is not the name the host gave this transport.
    NameMismatch,
    /// The transport names no guest the host knows (an AF_VSOCK peer CID not in its table).
    UnknownPeer,
    /// The proof does not verify under the guest's key, or no proof came.
    AuthenticationFailed,
    /// Another authenticated connection of this guest is streaming (and not idle).
    AlreadyStreaming,
    /// The hello and proof did not arrive within the handshake deadline.
    Timeout,
    /// The collector is at a connection cap, or this connection was the oldest waiting one.
    Busy,
    /// The host cannot use this guest's copy (it does not verify, a path under the store is a
    /// symbolic link, the store is unwritable).
    CopyUnusable,
}

/// A control line: a JSON object with exactly one key, the variant's name in snake case.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::stream::wire::{Ack, Control};
///
/// let ack = Control::Ack(Ack { next_seq: 42 });
/// assert_eq!(ack.to_line(), b"{\"ack\":{\"next_seq\":42}}\n");
/// assert_eq!(Control::Heartbeat {}.to_line(), b"{\"heartbeat\":{}}\n");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// guest → host, first.
    Hello(Hello),
    /// host → guest, after the hello, on a listener with a key.
    Challenge(Challenge),
    /// guest → host: the answer to the challenge.
    Proof(Proof),
    /// host → guest: where to continue.
    Resume(Resume),
    /// host → guest, instead of a resume point; the host then closes.
    Refused {
        /// Why, for the sender's health.
        code: RefusalCode,
        /// Why, in words.
        reason: String,
    },
    /// host → guest: what is stored and synced.
    Ack(Ack),
    /// guest → host, when it has sent nothing for a while: the stream is alive
    /// (`HEARTBEAT_INTERVAL`, the sender's); the host cuts a stream
    /// silent for longer than its idle timeout.
    Heartbeat {},
    /// host → guest, last: the verdict of a stream the host ends as a failure (forked, gap,
    /// invalid, over quota, failed, replaced, silent).
    Ended(StreamVerdict),
}

/// The first bytes of a heartbeat line: what tells it from a record line (a record's first key
/// is `seq`).
pub const HEARTBEAT_PREFIX: &[u8] = b"{\"heartbeat\"";

impl Control {
    /// The line as sent, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a control line serializes");
        line.push(b'\n');
        line
    }
}

/// A guest name is a directory name on the host: 1–64 of `A–Z a–z 0–9 . _ -`, not starting
/// with a dot.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::stream::wire::valid_guest_name;
///
/// assert!(valid_guest_name("web-1") && valid_guest_name("guest_2.test"));
/// for bad in ["", "..", ".hidden", "a/b", "a b"] {
///     assert!(!valid_guest_name(bad));
/// }
/// # }
/// ```
pub fn valid_guest_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLine {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// The peer closed the connection at a line boundary.
    End,
    /// The peer closed the connection inside a line of this many bytes.
    Torn(usize),
    /// More than the limit without a newline.
    TooLong,
}

/// Reads one line of at most `max` bytes (without the newline), never buffering more.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use std::io::BufReader;
/// use guard::stream::wire::{ReadLine, read_line};
///
/// let mut reader = BufReader::new(&b"abc\ndefghij\nxy"[..]);
/// assert_eq!(read_line(&mut reader, 8)?, ReadLine::Line(b"abc".to_vec()));
/// assert_eq!(read_line(&mut reader, 5)?, ReadLine::TooLong);
/// let mut reader = BufReader::new(&b"xy"[..]);
/// assert_eq!(read_line(&mut reader, 8)?, ReadLine::Torn(2));
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<ReadLine> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(if line.is_empty() {
                ReadLine::End
            } else {
                ReadLine::Torn(line.len())
            });
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                if line.len() + end > max {
                    return Ok(ReadLine::TooLong);
                }
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(ReadLine::Line(line));
            }
            None => {
                let taken = available.len();
                if line.len() + taken > max {
                    return Ok(ReadLine::TooLong);
                }
                line.extend_from_slice(available);
                reader.consume(taken);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_round_trip() {
        let hello = Control::Hello(Hello {
            version: VERSION,
            guest: "vm-1".into(),
            boot_id: "b".into(),
        });
        let line = hello.to_line();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"hello\":{\"version\":2,\"guest\":\"vm-1\",\"boot_id\":\"b\"}}\n"
        );
        let refused = Control::Refused {
            code: RefusalCode::AuthenticationFailed,
            reason: "authentication failed".into(),
        };
        assert_eq!(
            std::str::from_utf8(&refused.to_line()).unwrap(),
            "{\"refused\":{\"code\":\"authentication_failed\",\"reason\":\"authentication \
             failed\"}}\n"
        );
        let ended = Control::Ended(StreamVerdict::Forked { at_seq: 5 });
        assert_eq!(
            std::str::from_utf8(&ended.to_line()).unwrap(),
            "{\"ended\":{\"verdict\":\"forked\",\"at_seq\":5}}\n"
        );
        for control in [hello, refused, ended, Control::Heartbeat {}] {
            let line = control.to_line();
            let parsed: Control = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
            assert_eq!(parsed, control);
        }
        assert!(
            Control::Heartbeat {}
                .to_line()
                .starts_with(HEARTBEAT_PREFIX)
        );
    }

    #[test]
    fn guest_names_are_safe_directory_names() {
        for good in ["vm-1", "a", "guest_2.test"] {
            assert!(valid_guest_name(good), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_guest_name(bad), "{bad}");
        }
    }

    #[test]
    fn lines_are_bounded_and_torn_ends_are_told() {
        let mut reader = io::BufReader::with_capacity(4, &b"abc\ndefghij\nxy"[..]);
        assert_eq!(
            read_line(&mut reader, 8).unwrap(),
            ReadLine::Line(b"abc".to_vec())
        );
        assert_eq!(read_line(&mut reader, 5).unwrap(), ReadLine::TooLong);
        let mut reader = io::BufReader::new(&b"xy"[..]);
        assert_eq!(read_line(&mut reader, 8).unwrap(), ReadLine::Torn(2));
        let mut reader = io::BufReader::new(&b""[..]);
        assert_eq!(read_line(&mut reader, 8).unwrap(), ReadLine::End);
    }
}

//! The wire protocol (docs/STREAM.md): JSON control lines around the log's own lines, each
//! ending in `\n`.
//!
//! guest → host `{"hello":{…}}`; host → guest `{"resume":{…}}` or `{"refused":{…}}`; then the
//! guest sends log lines byte for byte, and the host answers `{"ack":{…}}` as it stores them.
use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

use crate::forensic::record::MAX_LINE_BYTES;

/// The protocol's version; a host refuses any other.
pub const VERSION: u32 = 1;
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
    /// The name the host stores this guest's log under ([`valid_guest_name`]).
    pub guest: String,
    /// The guest's boot id, for the operator's status line.
    pub boot_id: String,
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

/// The host has stored (written to its file) every record below `next_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Every record below this seq is in the host's copy. Never decreases.
    pub next_seq: u64,
}

/// A control line: a JSON object with exactly one key, the variant's name in snake case.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::stream::wire::{Ack, Control};
///
/// let ack = Control::Ack(Ack { next_seq: 42 });
/// assert_eq!(ack.to_line(), b"{\"ack\":{\"next_seq\":42}}\n");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// guest → host, first.
    Hello(Hello),
    /// host → guest: where to continue.
    Resume(Resume),
    /// host → guest, instead of a resume point; the host then closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// host → guest: what is stored.
    Ack(Ack),
}

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
            "{\"hello\":{\"version\":1,\"guest\":\"vm-1\",\"boot_id\":\"b\"}}\n"
        );
        let parsed: Control = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
        assert_eq!(parsed, hello);
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

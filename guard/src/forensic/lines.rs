//! The one bounded line scan of a log file. The writer resuming a log, `verify` and the readers
//! must agree on what a line is (a log that verifies is one the writer can continue), so they
//! all read through this: a line is complete only with its newline and holds at most
//! `MAX_LINE_BYTES` bytes before it; bytes after the last newline are a torn tail.
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use super::record::MAX_LINE_BYTES;

/// Read-ahead for scanning a file: few syscalls on a 64 MiB file, bounded memory.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// What the input holds at the scanner's position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line<'a> {
    /// A line, without its newline.
    Complete(&'a [u8]),
    /// The input ends this many bytes (at most `MAX_LINE_BYTES`) after the last newline.
    Torn(u64),
    /// More than `MAX_LINE_BYTES` bytes without a newline: a prefix of the line was consumed,
    /// and `skip_rest` moves on to the next line.
    TooLong,
}

pub(super) struct LineScanner<R> {
    reader: R,
    buf: Vec<u8>,
    consumed: u64,
}

impl LineScanner<BufReader<File>> {
    pub(super) fn from_file(file: File) -> Self {
        Self::new(BufReader::with_capacity(READ_BUFFER_BYTES, file))
    }
}

impl<R: BufRead> LineScanner<R> {
    pub(super) fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(1024),
            consumed: 0,
        }
    }

    /// The next line, or None at the end of the input. Holds at most `MAX_LINE_BYTES` + 1
    /// bytes however long the line is.
    pub(super) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        // One byte past the limit tells a line that is too long from one that fits.
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        self.consumed += n as u64;
        Ok(match self.buf.last() {
            None => None,
            Some(b'\n') => {
                self.buf.pop();
                Some(Line::Complete(&self.buf))
            }
            Some(_) if n > MAX_LINE_BYTES => Some(Line::TooLong),
            Some(_) => Some(Line::Torn(n as u64)),
        })
    }

    /// After `TooLong`: consumes the rest of that line, without holding it, and its newline.
    /// False when the input ended first.
    pub(super) fn skip_rest(&mut self) -> io::Result<bool> {
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(false);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let used = newline.map_or(available.len(), |at| at + 1);
            self.reader.consume(used);
            self.consumed += used as u64;
            if newline.is_some() {
                return Ok(true);
            }
        }
    }

    /// Bytes consumed from the input: where the next line starts.
    pub(super) fn consumed(&self) -> u64 {
        self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `input` as (what, consumed after it), skipping the rest of long lines.
    fn scan(input: &[u8]) -> Vec<(String, u64)> {
        // A buffer smaller than a line, so lines and skips span refills.
        let mut lines = LineScanner::new(BufReader::with_capacity(7, input));
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            let what = match line {
                Line::Complete(bytes) if bytes.len() > 16 => format!("complete {}", bytes.len()),
                Line::Complete(bytes) => format!("complete {:?}", String::from_utf8_lossy(bytes)),
                Line::Torn(bytes) => format!("torn {bytes}"),
                Line::TooLong => format!("too long, newline after: {}", lines.skip_rest().unwrap()),
            };
            seen.push((what, lines.consumed()));
        }
        assert_eq!(lines.consumed(), input.len() as u64);
        seen
    }

    fn line_of(len: usize, newline: bool) -> Vec<u8> {
        let mut line = vec![b'x'; len];
        line.extend(newline.then_some(b'\n'));
        line
    }

    #[test]
    fn complete_lines_and_the_end() {
        assert_eq!(scan(b""), []);
        assert_eq!(
            scan(b"{}\n\nsecond line\n"),
            [
                ("complete \"{}\"".to_owned(), 3),
                ("complete \"\"".to_owned(), 4),
                ("complete \"second line\"".to_owned(), 16),
            ]
        );
    }

    #[test]
    fn bytes_after_the_last_newline_are_torn() {
        assert_eq!(
            scan(b"a\n{\"seq\":"),
            [("complete \"a\"".to_owned(), 2), ("torn 7".to_owned(), 9)]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_fits() {
        let max = MAX_LINE_BYTES as u64;
        let mut input = line_of(MAX_LINE_BYTES, true);
        input.extend(line_of(MAX_LINE_BYTES, false));
        assert_eq!(
            scan(&input),
            [
                (format!("complete {MAX_LINE_BYTES}"), max + 1),
                (format!("torn {MAX_LINE_BYTES}"), 2 * max + 1),
            ]
        );
    }

    #[test]
    fn a_line_of_one_byte_more_is_too_long() {
        let max = MAX_LINE_BYTES as u64;
        let mut input = line_of(MAX_LINE_BYTES + 1, true);
        input.extend(b"next\n");
        input.extend(line_of(MAX_LINE_BYTES + 1, false));
        assert_eq!(
            scan(&input),
            [
                ("too long, newline after: true".to_owned(), max + 2),
                ("complete \"next\"".to_owned(), max + 7),
                ("too long, newline after: false".to_owned(), 2 * max + 8),
            ]
        );
    }

    #[test]
    fn the_rest_of_a_long_line_is_skipped_without_holding_it() {
        let mut input = line_of(3 * MAX_LINE_BYTES, true);
        input.extend(b"next\n");
        let mut lines = LineScanner::new(&input[..]);
        assert_eq!(lines.next_line().unwrap(), Some(Line::TooLong));
        let held = lines.buf.capacity();
        assert!(lines.skip_rest().unwrap());
        assert_eq!(lines.buf.capacity(), held);
        assert_eq!(lines.consumed(), 3 * MAX_LINE_BYTES as u64 + 1);
        assert_eq!(lines.next_line().unwrap(), Some(Line::Complete(b"next")));
        assert_eq!(lines.next_line().unwrap(), None);
    }
}

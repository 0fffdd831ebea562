//! The `--events` JSON-lines file's byte budget: whole lines go in while they fit, then a
//! `budget_exhausted` line says events stop, and at the end an `events_not_written` line counts
//! them (both out of a small reserve). The file never grows past the budget.
use std::io::{self, Write};

/// Bytes kept for the two closing lines.
const RESERVE: u64 = 512;

/// A writer of whole lines within a byte budget (`-`, standard output, has none).
pub struct BudgetedLines<W: Write> {
    inner: W,
    budget: u64,
    written: u64,
    /// The part of a line not yet ended by its newline.
    pending: Vec<u8>,
    refused: u64,
}

impl<W: Write> BudgetedLines<W> {
    /// Lines to `inner`, at most `budget` bytes of them.
    pub fn new(inner: W, budget: u64) -> Self {
        Self {
            inner,
            budget,
            written: 0,
            pending: Vec::new(),
            refused: 0,
        }
    }

    /// Lines not written for want of room.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written + line.len() as u64 + RESERVE <= self.budget {
            self.inner.write_all(line)?;
            self.written += line.len() as u64;
            return Ok(());
        }
        if self.refused == 0 {
            tracing::warn!(
                budget = self.budget,
                "the events file reached its byte budget"
            );
            let note = format!(
                "{{\"kind\":\"budget_exhausted\",\"budget_bytes\":{},\"written_bytes\":{}}}\n",
                self.budget, self.written
            );
            self.note(note.as_bytes())?;
        }
        self.refused += 1;
        Ok(())
    }

    fn note(&mut self, note: &[u8]) -> io::Result<()> {
        if self.written + note.len() as u64 <= self.budget {
            self.inner.write_all(note)?;
            self.written += note.len() as u64;
        }
        Ok(())
    }
}

impl<W: Write> Write for BudgetedLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for BudgetedLines<W> {
    fn drop(&mut self) {
        if self.refused == 0 {
            return;
        }
        let note = format!(
            "{{\"kind\":\"events_not_written\",\"count\":{},\"budget_bytes\":{}}}\n",
            self.refused, self.budget
        );
        // Drop cannot return errors: never swallow one silently.
        if let Err(error) = self.note(note.as_bytes()).and_then(|()| self.inner.flush()) {
            tracing::error!(%error, "closing the events file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stop_whole_at_the_budget_and_say_so() {
        let mut out = Vec::new();
        {
            let mut lines = BudgetedLines::new(&mut out, 2048);
            for i in 0..200 {
                // Written in pieces, as a formatter may.
                write!(lines, "{{\"event\":{i},").unwrap();
                writeln!(lines, "\"pad\":\"xxxxxxxxxx\"}}").unwrap();
            }
            assert!(lines.refused() > 100);
        }
        assert!(out.len() <= 2048, "{}", out.len());
        let text = String::from_utf8(out).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(parsed[0]["event"], 0);
        let n = parsed.len();
        assert_eq!(parsed[n - 2]["kind"], "budget_exhausted");
        assert_eq!(parsed[n - 1]["kind"], "events_not_written");
        assert_eq!(parsed[n - 1]["count"], 200 - (n as u64 - 2));
    }
}

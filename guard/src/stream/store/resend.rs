//! Records a guest sends again (after its head did not match): each must be byte for byte the
//! one the host holds at that seq. The held lines are read alongside, from the file that holds
//! the seq (the spans in memory say which), and forward from there.
use std::io::{BufRead as _, BufReader};

use super::load::FileSpan;
use super::nofollow::{DirFd, error};
use crate::forensic::{layout, record::MAX_LINE_BYTES};

/// Where the reading of the held copy stands.
pub(super) struct ResendCursor {
    file_index: usize,
    next_seq: u64,
    reader: BufReader<std::fs::File>,
    line: Vec<u8>,
}

impl ResendCursor {
    /// Whether `line` is the held record `seq`; an error when the copy cannot be read.
    pub fn same(
        cursor: &mut Option<Self>,
        dir: &DirFd,
        files: &[FileSpan],
        seq: u64,
        line: &[u8],
    ) -> Result<bool, String> {
        let Some(file_index) = files
            .iter()
            .position(|span| seq >= span.first_seq && seq < span.end_seq)
        else {
            return Ok(false);
        };
        let reusable = cursor
            .as_ref()
            .is_some_and(|c| c.file_index == file_index && c.next_seq <= seq);
        if !reusable {
            let name = layout::file_name(file_index as u64);
            let file = dir
                .read(&name)
                .map_err(|e| error(&dir.path.join(&name), e))?;
            *cursor = Some(Self {
                file_index,
                next_seq: files[file_index].first_seq,
                reader: BufReader::with_capacity(64 << 10, file),
                line: Vec::new(),
            });
        }
        let cursor = cursor.as_mut().expect("set above");
        while cursor.next_seq <= seq {
            cursor.line.clear();
            let read = std::io::Read::take(&mut cursor.reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut cursor.line)
                .map_err(|e| error(&dir.path.join(layout::file_name(file_index as u64)), e))?;
            if read == 0 || cursor.line.last() != Some(&b'\n') {
                return Ok(false);
            }
            cursor.line.pop();
            // Seqs follow lines except across a `gap`, whose seq says where they go on; a seq
            // inside the gap is held by no line.
            cursor.next_seq = seq_of(&cursor.line).map_or(cursor.next_seq, |held| held) + 1;
        }
        Ok(cursor.next_seq == seq + 1 && cursor.line == line)
    }
}

/// A held line's seq (None: not a record, which the held copy's verification rules out).
fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq)
}

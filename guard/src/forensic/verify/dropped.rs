//! The one gap a log may have: files after the head removed to keep the log within its byte
//! budget, accepted only as a `dropped` record names them (docs/LOG-FORMAT.md, "The byte
//! budget"). A `dropped` record is checked against what the log holds wherever it can be: a
//! claim that disagrees with the files present, or a gap no claim covers, is a defect.
use super::{Defect, Problem};
use crate::forensic::layout;
use crate::forensic::record::{self, Digest, Dropped};

/// Where a file ended: its index, last seq and last line's hash.
#[derive(Debug, Clone)]
struct FileEnd {
    index: u64,
    last_seq: u64,
    head: Digest,
}

/// Files missing from the directory, once the file after them has been read.
#[derive(Debug, Clone)]
struct Gap {
    first_file: u64,
    last_file: u64,
    first_seq: u64,
    last_seq: u64,
    covered: bool,
}

/// What a log's `dropped` records removed, as the verifier found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSpan {
    /// The first file missing.
    pub first_file: String,
    /// The last file missing.
    pub last_file: String,
    /// The first record missing.
    pub first_seq: u64,
    /// The last record missing.
    pub last_seq: u64,
}

/// The chain's knowledge of file ends and of the gap.
#[derive(Debug, Clone, Default)]
pub(super) struct Drops {
    ends: Vec<FileEnd>,
    /// Files found missing, before the next file's `rotate` says where the chain goes on.
    pending: Option<(u64, u64)>,
    gap: Option<Gap>,
}

impl Drops {
    /// A file ended with record `last_seq`, whose line hashes to `head`.
    pub(super) fn end_file(&mut self, name: &str, last_seq: u64, head: Digest) {
        if let Some(index) = layout::parse_file_name(name) {
            self.ends.push(FileEnd {
                index,
                last_seq,
                head,
            });
        }
    }

    /// Files `first..=last` are missing. Only files after the head, and only once: anything
    /// else is a missing file.
    pub(super) fn skip(&mut self, first: u64, last: u64) -> Result<(), Defect> {
        if first == 0 || self.gap.is_some() || self.pending.is_some() {
            return Err(Defect::MissingFile {
                name: layout::file_name(first),
            });
        }
        self.pending = Some((first, last));
        Ok(())
    }

    /// Files were found missing and the next file's first line has not been read yet.
    pub(super) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The first line of the file after missing ones: a `rotate` naming the last missing file,
    /// whose seq and `prev` say where the chain goes on. Returns them (None: no gap pending).
    pub(super) fn bridge(
        &mut self,
        next_seq: u64,
        kind: &str,
        seq: u64,
        prev: &str,
        prev_file: Option<&str>,
    ) -> Result<Option<(u64, Digest)>, Defect> {
        let Some((first_file, last_file)) = self.pending.take() else {
            return Ok(None);
        };
        let expected = layout::file_name(last_file);
        if kind != record::kinds::ROTATE || prev_file != Some(expected.as_str()) {
            return Err(Defect::RotateMismatch {
                detail: format!(
                    "files {}..={} are missing; the next file must begin with a rotate \
                     continuing {expected}",
                    layout::file_name(first_file),
                    expected
                ),
            });
        }
        // Every file holds at least one record.
        let head = parse_hex(prev).ok_or_else(|| Defect::Schema {
            error: format!("prev {prev:?} is not 64 lowercase hex digits"),
        })?;
        if seq < next_seq + (last_file - first_file + 1) {
            return Err(Defect::SeqMismatch {
                found: seq,
                expected: next_seq,
            });
        }
        self.ends.push(FileEnd {
            index: last_file,
            last_seq: seq - 1,
            head,
        });
        self.gap = Some(Gap {
            first_file,
            last_file,
            first_seq: next_seq,
            last_seq: seq - 1,
            covered: false,
        });
        Ok(Some((seq, head)))
    }

    /// Checks a `dropped` record, written in file `current`, against the log.
    pub(super) fn claim(&mut self, claim: &Dropped, current: u64) -> Result<(), Defect> {
        let lie = |detail: String| Err(Defect::DroppedMismatch { detail });
        let (Some(first), Some(last)) = (
            layout::parse_file_name(&claim.first_file),
            layout::parse_file_name(&claim.last_file),
        ) else {
            return lie("it does not name log files".into());
        };
        if first == 0 || first > last || last >= current {
            return lie(format!(
                "files {}..={} are not files before this one after the head",
                claim.first_file, claim.last_file
            ));
        }
        if claim.last_seq < claim.first_seq || claim.records != claim.last_seq - claim.first_seq + 1
        {
            return lie(format!(
                "{} records do not make seq {}..={}",
                claim.records, claim.first_seq, claim.last_seq
            ));
        }
        let end = |index| self.ends.iter().find(|end| end.index == index);
        match end(first - 1) {
            Some(before) if before.last_seq + 1 == claim.first_seq => {}
            Some(before) => {
                return lie(format!(
                    "it starts at seq {}, but {} ends at seq {}",
                    claim.first_seq,
                    layout::file_name(first - 1),
                    before.last_seq
                ));
            }
            None => return lie(format!("the file before {} is unknown", claim.first_file)),
        }
        match (end(last), &self.gap) {
            (Some(end), _) => {
                if end.last_seq != claim.last_seq || record::to_hex(&end.head) != claim.head {
                    return lie(format!(
                        "{} ends at seq {} with head {}, the record says seq {} head {}",
                        claim.last_file,
                        end.last_seq,
                        record::to_hex(&end.head),
                        claim.last_seq,
                        claim.head
                    ));
                }
            }
            // An earlier record of a gap that grew since: its end was dropped later too.
            (None, Some(gap))
                if (gap.first_file..gap.last_file).contains(&last)
                    && claim.last_seq < gap.last_seq => {}
            (None, _) => return lie(format!("{} is not in the log", claim.last_file)),
        }
        if let Some(gap) = &mut self.gap
            && first <= gap.first_file
            && last >= gap.last_file
        {
            gap.covered = true;
        }
        Ok(())
    }

    /// At the end of the log: a gap no `dropped` record covers is a defect.
    pub(super) fn finish(&self, dir: &std::path::Path) -> Result<Option<DroppedSpan>, Problem> {
        let Some(gap) = &self.gap else {
            return Ok(None);
        };
        let span = DroppedSpan {
            first_file: layout::file_name(gap.first_file),
            last_file: layout::file_name(gap.last_file),
            first_seq: gap.first_seq,
            last_seq: gap.last_seq,
        };
        if gap.covered {
            return Ok(Some(span));
        }
        Err(Problem {
            path: dir.join(&span.first_file),
            line: 0,
            defect: Defect::UnrecordedGap {
                detail: format!(
                    "files {}..={} (records seq {}..={}) are missing and no dropped record \
                     names them",
                    span.first_file, span.last_file, span.first_seq, span.last_seq
                ),
            },
        })
    }
}

fn parse_hex(text: &str) -> Option<Digest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        digest[i] = hex(pair[0])? << 4 | hex(pair[1])?;
    }
    Some(digest)
}

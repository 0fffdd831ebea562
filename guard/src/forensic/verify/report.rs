//! What a verification finds: the report, its first problem and why, and a torn tail.
use std::fmt;
use std::path::PathBuf;

use crate::forensic::record::MAX_LINE_BYTES;

/// Why a line (or file) breaks the log's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// The directory holds no `guard-NNNNNN.jsonl` file.
    NoFiles,
    /// Files are numbered from 0 without gaps.
    MissingFile {
        /// The first name missing.
        name: String,
    },
    /// A line longer than 4 MiB.
    LineTooLong,
    /// A line with no bytes before its newline.
    EmptyLine,
    /// The line is not UTF-8, or not JSON.
    NotJson {
        /// The parser's error.
        error: String,
    },
    /// The line lacks the `,"hash":"<hex>"}` ending.
    Unsealed,
    /// The line's bytes do not match its own hash: it was edited or corrupted.
    SealMismatch,
    /// Valid JSON but not a record.
    Schema {
        /// What is missing, extra or of the wrong type.
        error: String,
    },
    /// `seq` is not the previous record's + 1 (0 first): records missing, reordered or
    /// duplicated.
    SeqMismatch {
        /// The line's seq.
        found: u64,
        /// The seq the chain expected.
        expected: u64,
    },
    /// `prev` is not the SHA-256 of the line before.
    PrevMismatch {
        /// The line before (file name, line number); None for the first record, whose `prev`
        /// must be the genesis value.
        previous: Option<(String, u64)>,
    },
    /// The log's first record is not a `start`.
    FirstNotStart {
        /// The kind found.
        kind: String,
    },
    /// A file after the first does not begin with a `rotate`.
    FileNotStartingWithRotate {
        /// The kind found.
        kind: String,
    },
    /// A `rotate` record that is not the first line of its file.
    RotateInsideFile,
    /// The rotate record disagrees with the file it continues.
    RotateMismatch {
        /// Which fields disagree, and how.
        detail: String,
    },
    /// A `checkpoint` or `stop` whose `count` is not its seq or whose `head` is not its `prev`.
    CheckpointMismatch {
        /// Both sides.
        detail: String,
    },
    /// `mono_ns` went backwards between records of the same boot.
    MonotonicBackwards {
        /// The previous record's `mono_ns`.
        previous: u64,
        /// This record's.
        found: u64,
    },
    /// `wall` is not an RFC 3339 timestamp.
    BadWallClock {
        /// The value found.
        wall: String,
    },
    /// A file other than the newest ends in a partial line.
    TornInnerFile {
        /// The partial line's length, in bytes.
        bytes: u64,
    },
    /// A file other than the newest holds no record: only a crash right after rotation leaves
    /// an empty file, and then it is the newest.
    EmptyInnerFile,
    /// A `gap` record that does not name exactly the seqs missing before it (or a gap where
    /// none is missing): a jump in seq is accepted only with an honest gap right after it.
    GapMismatch {
        /// What it names and what is missing.
        detail: String,
    },
    /// A `dropped` record that does not match the log: its files, seqs or head disagree with
    /// the files present (or with where the missing ones must have ended).
    DroppedMismatch {
        /// What disagrees.
        detail: String,
    },
    /// Files are missing after the head and no `dropped` record names them.
    UnrecordedGap {
        /// Which files and records.
        detail: String,
    },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFiles => write!(f, "no guard-NNNNNN.jsonl files"),
            Self::MissingFile { name } => write!(
                f,
                "{name} is missing (files must be numbered without gaps from 0)"
            ),
            Self::LineTooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
            Self::EmptyLine => write!(f, "empty line"),
            Self::NotJson { error } => write!(f, "not valid JSON: {error}"),
            Self::Unsealed => write!(
                f,
                "line does not end with ,\"hash\":\"<64 lowercase hex>\"}}"
            ),
            Self::SealMismatch => write!(
                f,
                "line bytes do not match its hash field: the line was altered"
            ),
            Self::Schema { error } => write!(f, "not a log record: {error}"),
            Self::SeqMismatch { found, expected } if found > expected => write!(
                f,
                "seq {found}, expected {expected}: {} record(s) missing, or records reordered, before this line",
                found - expected
            ),
            Self::SeqMismatch { found, expected } => write!(
                f,
                "seq {found}, expected {expected}: records reordered or duplicated"
            ),
            Self::PrevMismatch {
                previous: Some((file, line)),
            } => write!(
                f,
                "prev is not the SHA-256 of {file} line {line}: that line was altered, or lines were removed or reordered"
            ),
            Self::PrevMismatch { previous: None } => {
                write!(f, "first record's prev is not the genesis value (64 zeros)")
            }
            Self::FirstNotStart { kind } => {
                write!(f, "the log must begin with a start record, found {kind:?}")
            }
            Self::FileNotStartingWithRotate { kind } => write!(
                f,
                "a rotated-to file must begin with a rotate record, found {kind:?}"
            ),
            Self::RotateInsideFile => {
                write!(f, "rotate record that is not the first line of its file")
            }
            Self::RotateMismatch { detail } => write!(
                f,
                "rotate record disagrees with the previous file: {detail}"
            ),
            Self::CheckpointMismatch { detail } => {
                write!(f, "checkpoint disagrees with the log: {detail}")
            }
            Self::MonotonicBackwards { previous, found } => write!(
                f,
                "mono_ns {found} is before the previous record's {previous} within the same boot"
            ),
            Self::BadWallClock { wall } => write!(f, "wall {wall:?} is not an RFC 3339 timestamp"),
            Self::TornInnerFile { bytes } => write!(
                f,
                "file ends with a partial line ({bytes} bytes without a newline) but is not the newest file: truncated"
            ),
            Self::EmptyInnerFile => write!(
                f,
                "file holds no record but is not the newest file: it was emptied"
            ),
            Self::GapMismatch { detail } => {
                write!(f, "gap record does not name the missing seqs: {detail}")
            }
            Self::DroppedMismatch { detail } => {
                write!(f, "dropped record disagrees with the log: {detail}")
            }
            Self::UnrecordedGap { detail } => write!(f, "{detail}"),
        }
    }
}

/// The first defect found: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or the directory, for [`Defect::NoFiles`]).
    pub path: PathBuf,
    /// 1-based; 0 when the defect concerns the file as a whole.
    pub line: u64,
    /// What is wrong.
    pub defect: Defect,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.defect)
    }
}

/// A partial final line in the newest file: what a crash mid-append leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The newest file.
    pub path: PathBuf,
    /// The partial line's number (1-based).
    pub line: u64,
    /// Where the partial line starts (the size the file has after repair).
    pub offset: u64,
    /// Its length, in bytes.
    pub bytes: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: torn final line: {} bytes without a newline (an interrupted append); \
             `guard log verify --repair` removes it",
            self.path.display(),
            self.line,
            self.bytes
        )
    }
}

/// One writer session: from its `start` record to its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The seq of its `start` record.
    pub started_at: u64,
    /// The seq of its last complete record.
    pub last_seq: u64,
    /// Its last record is a `stop`: it was closed cleanly. Otherwise the guard died (or was
    /// killed) after `last_seq`, and records it had not written yet are missing.
    pub stopped: bool,
}

/// What [`verify`](super::verify()) found: counts as far as the log verified, the chain's head,
/// a torn tail, and the first problem. `guard log verify` concludes from it, most serious
/// first: exit 1 with a problem, 3 with a torn tail, 4 when the last session
/// [`ended_abruptly`], else 0 ([`is_clean`] and closed with a `stop`).
///
/// [`is_clean`]: VerifyReport::is_clean
/// [`ended_abruptly`]: VerifyReport::ended_abruptly
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files checked (up to the first problem).
    pub files: u64,
    /// Writer sessions (`start` records) checked.
    pub sessions: u64,
    /// Sessions before the last that ended without a `stop` (a later `start` followed them).
    pub abrupt_earlier_sessions: u64,
    /// The newest session as far as it verified.
    pub last_session: Option<Session>,
    /// Complete records checked (up to the first problem, if any).
    pub records: u64,
    /// Lowercase hex SHA-256 of the last good line.
    pub head: Option<String>,
    /// The seq of the last good record.
    pub last_seq: Option<u64>,
    /// `gap` records checked: outages of the writer, each naming the seqs it could not write.
    pub gaps: u64,
    /// Seqs the gaps name: records the writer counted but could not write.
    pub missing_records: u64,
    /// A partial final line in the newest file, if any (not a problem by itself).
    pub torn_tail: Option<TornTail>,
    /// The first defect; verification stops there.
    pub problem: Option<Problem>,
    /// Files removed under the byte budget, as the `dropped` records name them (a gap they do
    /// not account for is the [`problem`](Self::problem)).
    pub dropped: Option<super::DroppedSpan>,
}

impl VerifyReport {
    /// Every line is a sealed record and the chain holds, with no torn tail.
    pub fn is_clean(&self) -> bool {
        self.problem.is_none() && self.torn_tail.is_none()
    }

    /// The newest session verified but never wrote its `stop`: the guard died or was killed,
    /// and what it had not written yet is missing (the chain cannot show what never came).
    pub fn ended_abruptly(&self) -> Option<Session> {
        self.last_session.filter(|session| !session.stopped)
    }
}

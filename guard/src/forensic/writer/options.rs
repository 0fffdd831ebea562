//! How a writer is configured: the fsync policy and the log options.
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use super::WriterError;
use super::budget_setting::ByteBudget;

/// When appended records are forced to stable storage. Parses from `always`, `never` or
/// `interval=<ms>`, and displays the same way.
///
/// ```
/// use std::time::Duration;
/// use guard::forensic::FsyncPolicy;
///
/// let policy: FsyncPolicy = "interval=250".parse()?;
/// assert_eq!(policy, FsyncPolicy::Interval(Duration::from_millis(250)));
/// assert_eq!(policy.to_string(), "interval=250");
/// assert!("sometimes".parse::<FsyncPolicy>().is_err());
/// # Ok::<(), guard::forensic::WriterError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Write and fdatasync every record before `append` returns.
    Always,
    /// Write and fdatasync on the first append after the interval has passed, and on `flush`.
    Interval(Duration),
    /// Write when the buffer fills and on `flush`; leave syncing to the kernel.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = WriterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || WriterError::BadFsyncPolicy {
            input: input.to_owned(),
        };
        match input {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = input.strip_prefix("interval=").ok_or_else(bad)?;
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                Ok(Self::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// How a [`LogWriter`](super::LogWriter) writes. The defaults: `interval=100` (an fdatasync at
/// most every 100 ms), rotation at 64 MiB (within an eighth of the budget), a byte budget
/// derived from where the log lives, a checkpoint every 10 000 records, the kernel's boot id,
/// and refusal of a torn tail.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// When records reach stable storage (default: `interval=100`).
    pub fsync: FsyncPolicy,
    /// Start a new file before a record would take the current one past this size, in bytes
    /// (default 64 MiB; None: never rotate). A file always holds at least one record, and at
    /// least [`ROTATE_MIN_FILE_BYTES`](crate::forensic::layout::ROTATE_MIN_FILE_BYTES).
    pub rotate_bytes: Option<u64>,
    /// How large the log's files may grow together (default: [`ByteBudget::Auto`], derived
    /// from where the log lives; docs/LOG-FORMAT.md, "The byte budget").
    pub budget: ByteBudget,
    /// The stream's acknowledgement, if the log is shipped: the host holds a durable copy of
    /// every record below this seq. Files removed under the budget say whether the host holds
    /// them (`dropped`'s `acked`).
    pub acked: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Write a `checkpoint` after this many records (0: never).
    pub checkpoint_every: u64,
    /// None: read from /proc/sys/kernel/random/boot_id.
    pub boot_id: Option<String>,
    /// On reopen, truncate a torn final line (and record that in-band) instead of refusing.
    pub repair_torn_tail: bool,
    /// For crash tests only: split every write(2) into chunks of at most this many bytes, each
    /// fdatasync'ed, as a disk that persists part of a line before power loss would. A kill
    /// then often lands mid-line and leaves a torn tail. None in production.
    pub test_split_writes: Option<NonZeroUsize>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            rotate_bytes: Some(64 << 20),
            budget: ByteBudget::Auto,
            acked: None,
            checkpoint_every: 10_000,
            boot_id: None,
            repair_torn_tail: false,
            test_split_writes: None,
        }
    }
}

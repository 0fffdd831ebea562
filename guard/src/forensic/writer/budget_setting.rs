//! How large a log directory may grow: the setting ([`ByteBudget`]) and the default derived
//! from where the log lives (docs/LOG-FORMAT.md, "The byte budget").
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::WriterError;

/// Budgets below this are refused: the head file, the current file and the reserve for the
/// reports must fit (each at least a rotated file's minimum).
pub const MIN_BUDGET_BYTES: u64 = 64 << 10;
/// A RAM-backed log (tmpfs, ramfs) gets `MemTotal / RAM_SHARE`…
pub const RAM_SHARE: u64 = 32;
/// …but at least this…
pub const RAM_BUDGET_MIN: u64 = 1 << 20;
/// …and at most this.
pub const RAM_BUDGET_MAX: u64 = 64 << 20;
/// A disk-backed log gets `free space / DISK_SHARE` at start…
pub const DISK_SHARE: u64 = 4;
/// …at most this.
pub const DISK_BUDGET_MAX: u64 = 4 << 30;
/// And no log gets more than this share of the free space of its filesystem at start: the
/// log never fills it.
const FREE_SHARE: u64 = 4;

/// The byte budget of a log directory (every `guard-*.jsonl` file together). Parses from
/// `auto`, `none`, or bytes (`4194304`, `4096K`, `4M`, `1G`), and displays the same way.
///
/// ```
/// use guard::forensic::ByteBudget;
///
/// assert_eq!("4M".parse::<ByteBudget>()?, ByteBudget::Bytes(4 << 20));
/// assert_eq!("auto".parse::<ByteBudget>()?, ByteBudget::Auto);
/// assert!("12".parse::<ByteBudget>().is_err()); // below the minimum
/// # Ok::<(), guard::forensic::WriterError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteBudget {
    /// Derived from where the log lives ([`default_budget`]): the default.
    #[default]
    Auto,
    /// This many bytes (at least [`MIN_BUDGET_BYTES`]).
    Bytes(u64),
    /// No bound but the filesystem's (the log before budgets existed).
    Unbounded,
}

impl FromStr for ByteBudget {
    type Err = WriterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || WriterError::BadBudget {
            input: input.to_owned(),
        };
        match input {
            "auto" => return Ok(Self::Auto),
            "none" => return Ok(Self::Unbounded),
            _ => {}
        }
        let (digits, shift) = match input.as_bytes().last() {
            Some(b'K' | b'k') => (&input[..input.len() - 1], 10),
            Some(b'M' | b'm') => (&input[..input.len() - 1], 20),
            Some(b'G' | b'g') => (&input[..input.len() - 1], 30),
            _ => (input, 0),
        };
        let bytes = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .ok_or_else(bad)?;
        if bytes < MIN_BUDGET_BYTES {
            return Err(bad());
        }
        Ok(Self::Bytes(bytes))
    }
}

impl fmt::Display for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Unbounded => f.write_str("none"),
            Self::Bytes(bytes) => write!(f, "{bytes}"),
        }
    }
}

/// What backs a log's filesystem, as far as its budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// tmpfs or ramfs: every byte of the log is guest memory.
    Ram,
    /// Anything else.
    Disk,
}

/// The default budget (pure): for a RAM-backed log `MemTotal / 32` within 1..=64 MiB, for a
/// disk-backed one a quarter of the free space, at most 4 GiB; never more than a quarter of
/// the filesystem's free space (`free`: None when the filesystem does not say, as ramfs), nor
/// less than [`MIN_BUDGET_BYTES`].
///
/// ```
/// use guard::forensic::{Backing, default_budget};
///
/// // The 128 MiB guest booted from an initramfs: MemTotal 88,952 kB, 40 MB free.
/// assert_eq!(default_budget(Backing::Ram, 88_952 << 10, Some(40_000_000)), 2_846_464);
/// assert_eq!(default_budget(Backing::Disk, 0, Some(100 << 30)), 4 << 30);
/// ```
pub fn default_budget(backing: Backing, mem_total: u64, free: Option<u64>) -> u64 {
    let derived = match backing {
        Backing::Ram => (mem_total / RAM_SHARE).clamp(RAM_BUDGET_MIN, RAM_BUDGET_MAX),
        Backing::Disk => free.map_or(DISK_BUDGET_MAX, |free| free / DISK_SHARE),
    };
    let derived = derived.min(DISK_BUDGET_MAX);
    free.map_or(derived, |free| derived.min(free / FREE_SHARE))
        .max(MIN_BUDGET_BYTES)
}

/// The budget `setting` resolves to for a log in `dir` (which exists): None for no bound.
pub fn resolve(setting: ByteBudget, dir: &Path) -> Result<Option<u64>, WriterError> {
    match setting {
        ByteBudget::Bytes(bytes) => Ok(Some(bytes.max(MIN_BUDGET_BYTES))),
        ByteBudget::Unbounded => Ok(None),
        ByteBudget::Auto => {
            let (backing, free) = backing_of(dir)?;
            let mem_total = match backing {
                Backing::Ram => mem_total()?,
                Backing::Disk => 0,
            };
            Ok(Some(default_budget(backing, mem_total, free)))
        }
    }
}

/// What a log in `dir` (or, while it does not exist yet, its nearest existing ancestor) takes
/// of the guest's memory at most under `setting`: its budget where the filesystem is RAM-backed,
/// 0 on a disk (and 0 for an unbounded log in RAM, which no reserve can cover:
/// docs/LIMITS.md). The guest budget subtracts it (`limits::BudgetRequest::log_reserve`).
pub fn ram_reserve(setting: ByteBudget, dir: &Path) -> Result<u64, WriterError> {
    let existing = dir
        .ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"));
    match backing_of(existing)? {
        (Backing::Ram, _) => Ok(resolve(setting, existing)?.unwrap_or(0)),
        (Backing::Disk, _) => Ok(0),
    }
}

/// statfs(2) of `dir`: what backs it and its free bytes (None when it reports no size).
pub fn backing_of(dir: &Path) -> Result<(Backing, Option<u64>), WriterError> {
    use std::os::unix::ffi::OsStrExt as _;
    let err = |source| WriterError::Statfs {
        path: dir.to_owned(),
        source,
    };
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: a NUL-terminated path and a zeroed struct the kernel fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let backing = match stat.f_type as i64 {
        TMPFS_MAGIC | RAMFS_MAGIC => Backing::Ram,
        _ => Backing::Disk,
    };
    #[allow(clippy::unnecessary_cast)]
    let free = (stat.f_blocks > 0).then(|| stat.f_bavail as u64 * stat.f_bsize as u64);
    Ok((backing, free))
}

fn mem_total() -> Result<u64, WriterError> {
    const PATH: &str = "/proc/meminfo";
    let err = |source| WriterError::MemTotal {
        path: PATH.into(),
        source,
    };
    let text = std::fs::read_to_string(PATH).map_err(err)?;
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .ok_or_else(|| err(std::io::ErrorKind::InvalidData.into()))
}

//! `/proc/meminfo`: the guest's memory, read strictly for limits and leniently by the pure
//! default-limit function.
use std::{fs, num::IntErrorKind, path::Path};

use serde::Serialize;

use super::LimitsError;

/// 90% of `MemAvailable` in bytes, strictly below the raw value. Reads `MemAvailable` only
/// (`MemTotal` and `MemFree` come first in the file and are the wrong measure). None when the
/// field is missing, unparseable or zero. Arithmetic saturates: a nonsense value cannot wrap.
///
/// ```
/// use guard::limits::memory_limit_from_meminfo;
///
/// let meminfo = "MemTotal: 131072 kB\nMemFree: 120000 kB\nMemAvailable: 100000 kB\n";
/// assert_eq!(memory_limit_from_meminfo(meminfo), Some(92_160_000));
/// assert_eq!(memory_limit_from_meminfo("MemAvailable: lots kB\n"), None);
/// ```
pub fn memory_limit_from_meminfo(meminfo: &str) -> Option<u64> {
    let available = meminfo_field(meminfo, "MemAvailable")?;
    if available == 0 {
        return None;
    }
    // Subtract a tenth rather than multiply by 9: no overflow, and since available is at least
    // 1024 bytes the tenth is never 0, so the result is strictly below the raw value.
    Some(available - available / 10)
}

/// A `/proc/meminfo` field in bytes (the file says kB, meaning KiB).
fn meminfo_field(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key.trim() != name {
            return None;
        }
        let mut fields = rest.split_whitespace();
        let value: u64 = fields.next()?.parse().ok()?;
        match fields.next() {
            Some("kB") | None => Some(value.saturating_mul(1024)),
            Some(_) => None,
        }
    })
}

/// Where the kernel reports the guest's memory.
pub const MEMINFO_PATH: &str = "/proc/meminfo";

/// A meminfo field in bytes: None when there is no such line, an error when its value is not
/// `<number> kB` (or a bare number) or does not fit in 64 bits as bytes.
fn meminfo_value(
    path: &Path,
    meminfo: &str,
    field: &'static str,
) -> Result<Option<u64>, LimitsError> {
    for (index, line) in meminfo.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != field {
            continue;
        }
        let bad = || LimitsError::MeminfoValue {
            path: path.to_path_buf(),
            line: index + 1,
            field,
            text: rest.trim().to_string(),
        };
        let mut words = rest.split_whitespace();
        let (Some(number), Some("kB") | None, None) = (words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let too_large = || LimitsError::MeminfoTooLarge {
            path: path.to_path_buf(),
            line: index + 1,
            field,
            kib: number.to_string(),
        };
        let kib: u64 =
            number
                .parse()
                .map_err(|error: std::num::ParseIntError| match error.kind() {
                    IntErrorKind::PosOverflow => too_large(),
                    _ => bad(),
                })?;
        return kib.checked_mul(1024).map(Some).ok_or_else(too_large);
    }
    Ok(None)
}

/// The guest's memory as `/proc/meminfo` reports it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what can be allocated without swapping, by the kernel's estimate.
    pub available: u64,
    /// `SwapTotal` (0 when the line is missing).
    pub swap_total: u64,
}

impl MemInfo {
    /// Parses the text of `/proc/meminfo`; None where [`MemInfo::parse_file`] gives an error.
    pub fn parse(meminfo: &str) -> Option<Self> {
        Self::parse_file(Path::new(MEMINFO_PATH), meminfo).ok()
    }

    /// Parses the text of a meminfo file; errors name `path`, the line and the field.
    /// Strict, unlike [`memory_limit_from_meminfo`]: a value that is garbage, does not fit in
    /// 64 bits as bytes, or a MemTotal of 0 would resolve to a meaningless limit.
    ///
    /// ```
    /// use std::path::Path;
    /// use guard::limits::{LimitsError, MemInfo};
    ///
    /// let path = Path::new("captured/meminfo");
    /// let text = "MemTotal: 131072 kB\nMemAvailable: 100000 kB\n";
    /// let meminfo = MemInfo::parse_file(path, text)?;
    /// assert_eq!((meminfo.total, meminfo.available), (131_072 * 1024, 100_000 * 1024));
    /// assert_eq!(meminfo.swap_total, 0);
    /// assert!(matches!(
    ///     MemInfo::parse_file(path, "MemTotal: 131072 kB\n"),
    ///     Err(LimitsError::MeminfoMissing { field: "MemAvailable", .. })
    /// ));
    /// assert!(MemInfo::parse_file(path, "MemTotal: lots\nMemAvailable: 1 kB\n").is_err());
    /// # Ok::<(), LimitsError>(())
    /// ```
    pub fn parse_file(path: &Path, meminfo: &str) -> Result<Self, LimitsError> {
        let required = |field| {
            meminfo_value(path, meminfo, field)?.ok_or_else(|| LimitsError::MeminfoMissing {
                path: path.to_path_buf(),
                field,
            })
        };
        let total = required("MemTotal")?;
        if total == 0 {
            return Err(LimitsError::MeminfoZeroTotal {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            total,
            available: required("MemAvailable")?,
            swap_total: meminfo_value(path, meminfo, "SwapTotal")?.unwrap_or(0),
        })
    }

    /// Reads `/proc/meminfo`.
    pub fn read() -> Result<Self, LimitsError> {
        Self::read_from(Path::new(MEMINFO_PATH))
    }

    /// Reads a meminfo file (`/proc/meminfo`, or a captured copy).
    pub fn read_from(path: &Path) -> Result<Self, LimitsError> {
        let text = fs::read_to_string(path).map_err(|error| LimitsError::Read {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        Self::parse_file(path, &text)
    }

    /// The default memory limit: 90% of available (see [`memory_limit_from_meminfo`]).
    pub(super) fn default_limit(&self) -> u64 {
        self.available - self.available / 10
    }
}

/// A 128 MiB guest's meminfo, for the limits' unit tests.
#[cfg(test)]
pub(super) const MEMINFO: &str = "\
MemTotal:         131072 kB
MemFree:          120000 kB
MemAvailable:     100000 kB
Buffers:               0 kB
SwapTotal:             0 kB
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_percent_of_available_with_headroom() {
        let raw = 100_000 * 1024;
        let limit = memory_limit_from_meminfo(MEMINFO).unwrap();
        assert_eq!(limit, raw - raw / 10);
        assert_eq!(limit, 92_160_000);
        assert!(limit < raw);
        // The smallest non-zero value still leaves headroom.
        let tiny = memory_limit_from_meminfo("MemAvailable: 1 kB\n").unwrap();
        assert!(tiny < 1024, "{tiny}");
    }

    #[test]
    fn reads_mem_available_not_the_fields_before_it() {
        // MemTotal and MemFree come first and are larger: a parser that takes the first number
        // or a prefix match would pick them.
        let limit = memory_limit_from_meminfo(MEMINFO).unwrap();
        assert_ne!(limit, 131_072 * 1024 - 131_072 * 1024 / 10);
        assert_ne!(limit, 120_000 * 1024 - 120_000 * 1024 / 10);
        // A field whose name merely starts the same is not it.
        assert_eq!(
            memory_limit_from_meminfo("MemAvailableX: 5 kB\nMemAvailable: 10 kB\n"),
            Some(10 * 1024 - 1024)
        );
    }

    #[test]
    fn none_when_missing_unparseable_or_zero() {
        assert_eq!(memory_limit_from_meminfo(""), None);
        assert_eq!(
            memory_limit_from_meminfo("MemTotal: 1 kB\nMemFree: 1 kB\n"),
            None
        );
        assert_eq!(memory_limit_from_meminfo("MemAvailable: lots kB\n"), None);
        assert_eq!(memory_limit_from_meminfo("MemAvailable: -5 kB\n"), None);
        assert_eq!(memory_limit_from_meminfo("MemAvailable: 5 MB\n"), None);
        assert_eq!(memory_limit_from_meminfo("MemAvailable:\n"), None);
        assert_eq!(memory_limit_from_meminfo("MemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let huge = format!("MemAvailable: {} kB\n", u64::MAX);
        let limit = memory_limit_from_meminfo(&huge).unwrap();
        assert_eq!(limit, u64::MAX - u64::MAX / 10);
        let big = format!("MemAvailable: {} kB\n", u64::MAX / 1024 + 1);
        assert!(memory_limit_from_meminfo(&big).unwrap() > u64::MAX / 2);
    }
}

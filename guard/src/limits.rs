//! Container limits: defaults derived from the guest's memory, overrides, validation.
//!
//! The default memory limit is 90% of `MemAvailable` at the time of the request: a container
//! can never take the whole guest, so the agent and the kernel keep room to act. `pids.max`
//! defaults to 512, `memory.swap.max` to 0 (a guest with swap must not let a container dodge
//! its memory limit by swapping).
use std::{
    fmt, fs,
    num::IntErrorKind,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Serialize;

/// Default `pids.max`.
pub const DEFAULT_PIDS_MAX: u64 = 512;
/// The kernel's own ceiling for pid numbers (`PID_MAX_LIMIT` on 64-bit): a pids limit above it
/// cannot mean anything and is rejected as absurd.
pub const PIDS_CEILING: u64 = 4 * 1024 * 1024;
/// Below this a container cannot even exec a static shell; a limit that low is a typo.
pub const MEMORY_FLOOR: u64 = 4 * 1024 * 1024;
/// The kernel keeps memory limits in pages: a value that is not a page multiple reads back
/// rounded down, which would look like a mismatch.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} has no {field} line")]
    MeminfoMissing { path: PathBuf, field: &'static str },
    #[error("{path}, line {line}: {field} is not a number of kB: {text:?}")]
    MeminfoValue {
        path: PathBuf,
        line: usize,
        field: &'static str,
        text: String,
    },
    #[error("{path}, line {line}: {field} of {kib} kB does not fit in 64 bits as bytes")]
    MeminfoTooLarge {
        path: PathBuf,
        line: usize,
        field: &'static str,
        kib: String,
    },
    #[error("{path}: MemTotal is 0 kB")]
    MeminfoZeroTotal { path: PathBuf },
    #[error(
        "memory limit {value:?} is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a \
         percentage of available memory (e.g. 50%) or \"max\""
    )]
    MemorySyntax { value: String },
    #[error("memory limit {value:?} is negative")]
    MemoryNegative { value: String },
    #[error("memory limit {value:?} is 0: a container cannot run without memory")]
    MemoryZero { value: String },
    #[error("memory limit {value:?} ({bytes} bytes) is below the floor of {MEMORY_FLOOR} bytes")]
    MemoryTooLow { value: String, bytes: u64 },
    #[error(
        "memory limit {value:?} ({bytes} bytes) is above the VM's memory ({total} bytes of \
         MemTotal)"
    )]
    MemoryAboveVm {
        value: String,
        bytes: u64,
        total: u64,
    },
    #[error("memory limit {value:?}: a percentage must be above 0% and at most 100%")]
    MemoryPercent { value: String },
    #[error(
        "pids limit {value:?} is not understood: give a whole number between 1 and \
         {PIDS_CEILING}, or \"max\""
    )]
    PidsSyntax { value: String },
    #[error("pids limit {value:?} is negative")]
    PidsNegative { value: String },
    #[error("pids limit {value:?} is 0: the container's init could not even exist")]
    PidsZero { value: String },
    #[error("pids limit {value:?} is absurd: above the kernel's pid ceiling {PIDS_CEILING}")]
    PidsAbsurd { value: String },
    #[error("swap limit {value:?} is not understood: give bytes (0 for none) or \"max\"")]
    SwapSyntax { value: String },
    #[error("swap limit {value:?} is negative")]
    SwapNegative { value: String },
}

/// 90% of `MemAvailable` in bytes, strictly below the raw value. Reads `MemAvailable` only
/// (`MemTotal` and `MemFree` come first in the file and are the wrong measure). None when the
/// field is missing, unparseable or zero. Arithmetic saturates: a nonsense value cannot wrap.
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
    pub total: u64,
    pub available: u64,
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
    fn default_limit(&self) -> u64 {
        self.available - self.available / 10
    }
}

/// A memory limit as asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySetting {
    /// 90% of available memory.
    Default,
    Bytes(u64),
    /// Percent of available memory, in (0, 100].
    PercentOfAvailable(f64),
    /// No memory limit, explicitly asked for.
    Max,
}

/// A pids limit as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PidsSetting {
    /// [`DEFAULT_PIDS_MAX`].
    Default,
    Count(u64),
    Max,
}

/// A swap limit (`memory.swap.max`) as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapSetting {
    /// 0: no swap for the container.
    Default,
    Bytes(u64),
    Max,
}

/// Parses a byte size: a whole number, optionally with K/M/G/T (binary multiples, optional
/// `i`/`iB`/`B` suffix). Fractions are allowed with a unit ("1.5G").
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" | "kb" => 1 << 10,
        "m" | "mi" | "mib" | "mb" => 1 << 20,
        "g" | "gi" | "gib" | "gb" => 1 << 30,
        "t" | "ti" | "tib" | "tb" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier);
    }
    if multiplier == 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let bytes = value * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

impl FromStr for MemorySetting {
    type Err = LimitsError;
    fn from_str(text: &str) -> Result<Self, LimitsError> {
        let value = text.to_string();
        let trimmed = text.trim();
        if trimmed == "max" {
            return Ok(Self::Max);
        }
        if let Some(percent) = trimmed.strip_suffix('%') {
            let percent: f64 = percent
                .trim()
                .parse()
                .map_err(|_| LimitsError::MemorySyntax {
                    value: value.clone(),
                })?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(LimitsError::MemoryPercent { value });
            }
            return Ok(Self::PercentOfAvailable(percent));
        }
        if let Some(rest) = trimmed.strip_prefix('-') {
            return Err(match parse_bytes(rest) {
                Some(_) => LimitsError::MemoryNegative { value },
                None => LimitsError::MemorySyntax { value },
            });
        }
        match parse_bytes(trimmed) {
            Some(0) => Err(LimitsError::MemoryZero { value }),
            Some(bytes) => Ok(Self::Bytes(bytes)),
            None => Err(LimitsError::MemorySyntax { value }),
        }
    }
}

impl FromStr for PidsSetting {
    type Err = LimitsError;
    fn from_str(text: &str) -> Result<Self, LimitsError> {
        let value = text.to_string();
        let trimmed = text.trim();
        if trimmed == "max" {
            return Ok(Self::Max);
        }
        if let Some(rest) = trimmed.strip_prefix('-')
            && rest.parse::<u128>().is_ok()
        {
            return Err(LimitsError::PidsNegative { value });
        }
        match trimmed.parse::<u128>() {
            Ok(0) => Err(LimitsError::PidsZero { value }),
            Ok(count) if count > u128::from(PIDS_CEILING) => Err(LimitsError::PidsAbsurd { value }),
            Ok(count) => Ok(Self::Count(count as u64)),
            Err(_) => Err(LimitsError::PidsSyntax { value }),
        }
    }
}

impl FromStr for SwapSetting {
    type Err = LimitsError;
    fn from_str(text: &str) -> Result<Self, LimitsError> {
        match text.trim() {
            "max" => Ok(Self::Max),
            trimmed if trimmed.starts_with('-') => {
                let value = text.to_string();
                Err(match trimmed.strip_prefix('-').and_then(parse_bytes) {
                    Some(_) => LimitsError::SwapNegative { value },
                    None => LimitsError::SwapSyntax { value },
                })
            }
            trimmed => parse_bytes(trimmed)
                .map(Self::Bytes)
                .ok_or(LimitsError::SwapSyntax {
                    value: text.to_string(),
                }),
        }
    }
}

/// What an agent asks for; [`LimitRequest::resolve`] turns it into byte and count values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitRequest {
    pub memory: MemorySetting,
    pub pids: PidsSetting,
    pub swap: SwapSetting,
}

impl Default for LimitRequest {
    fn default() -> Self {
        Self {
            memory: MemorySetting::Default,
            pids: PidsSetting::Default,
            swap: SwapSetting::Default,
        }
    }
}

/// Resolved limits, as they are written to the cgroup. None = `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `memory.max` in bytes, a multiple of [`PAGE_SIZE`].
    pub memory_max: Option<u64>,
    /// `memory.swap.max` in bytes.
    pub swap_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

impl Limits {
    /// The defaults for this guest: 90% of available memory, no swap, 512 pids.
    pub fn defaults() -> Result<Self, LimitsError> {
        LimitRequest::default().resolve(&MemInfo::read()?)
    }
}

impl LimitRequest {
    /// Resolves against the guest's memory and validates: a memory limit must lie between
    /// [`MEMORY_FLOOR`] and the VM's `MemTotal`.
    pub fn resolve(&self, meminfo: &MemInfo) -> Result<Limits, LimitsError> {
        let (described, bytes) = match &self.memory {
            MemorySetting::Max => (String::new(), None),
            MemorySetting::Default => (
                "90% of MemAvailable".to_string(),
                Some(meminfo.default_limit()),
            ),
            MemorySetting::Bytes(bytes) => (bytes.to_string(), Some(*bytes)),
            MemorySetting::PercentOfAvailable(percent) => (
                format!("{percent}%"),
                Some((meminfo.available as f64 * percent / 100.0) as u64),
            ),
        };
        let memory_max = match bytes {
            None => None,
            Some(bytes) => {
                // Round down to whole pages: that is what the kernel keeps and reads back.
                let bytes = bytes - bytes % PAGE_SIZE;
                if bytes == 0 {
                    return Err(LimitsError::MemoryZero { value: described });
                }
                if bytes < MEMORY_FLOOR {
                    return Err(LimitsError::MemoryTooLow {
                        value: described,
                        bytes,
                    });
                }
                if bytes > meminfo.total {
                    return Err(LimitsError::MemoryAboveVm {
                        value: described,
                        bytes,
                        total: meminfo.total,
                    });
                }
                Some(bytes)
            }
        };
        let pids_max = match self.pids {
            PidsSetting::Default => Some(DEFAULT_PIDS_MAX),
            PidsSetting::Max => None,
            PidsSetting::Count(0) => {
                return Err(LimitsError::PidsZero {
                    value: "0".to_string(),
                });
            }
            PidsSetting::Count(count) if count > PIDS_CEILING => {
                return Err(LimitsError::PidsAbsurd {
                    value: count.to_string(),
                });
            }
            PidsSetting::Count(count) => Some(count),
        };
        let swap_max = match self.swap {
            SwapSetting::Default => Some(0),
            SwapSetting::Bytes(bytes) => Some(bytes - bytes % PAGE_SIZE),
            SwapSetting::Max => None,
        };
        Ok(Limits {
            memory_max,
            swap_max,
            pids_max,
        })
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: Option<u64>| value.map_or("max".to_string(), |v| v.to_string());
        write!(
            f,
            "memory.max {} memory.swap.max {} pids.max {}",
            show(self.memory_max),
            show(self.swap_max),
            show(self.pids_max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:         131072 kB
MemFree:          120000 kB
MemAvailable:     100000 kB
Buffers:               0 kB
SwapTotal:             0 kB
";

    fn guest() -> MemInfo {
        MemInfo::parse(MEMINFO).unwrap()
    }

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

    #[test]
    fn defaults_are_ninety_percent_no_swap_and_512_pids() {
        let limits = LimitRequest::default().resolve(&guest()).unwrap();
        assert_eq!(limits.memory_max, Some(92_160_000));
        assert_eq!(limits.memory_max.unwrap() % PAGE_SIZE, 0);
        assert_eq!(limits.swap_max, Some(0));
        assert_eq!(limits.pids_max, Some(512));
    }

    #[test]
    fn overrides_parse() {
        let request = |memory: &str, pids: &str, swap: &str| LimitRequest {
            memory: memory.parse().unwrap(),
            pids: pids.parse().unwrap(),
            swap: swap.parse().unwrap(),
        };
        let limits = request("32M", "64", "max").resolve(&guest()).unwrap();
        assert_eq!(
            limits,
            Limits {
                memory_max: Some(32 << 20),
                swap_max: None,
                pids_max: Some(64)
            }
        );
        let limits = request("50%", "max", "1M").resolve(&guest()).unwrap();
        assert_eq!(limits.memory_max, Some(51_200_000 / 4096 * 4096));
        assert_eq!((limits.pids_max, limits.swap_max), (None, Some(1 << 20)));
        let limits = request("max", "512", "0").resolve(&guest()).unwrap();
        assert_eq!(limits.memory_max, None);
        assert_eq!(
            "67108864".parse::<MemorySetting>().unwrap(),
            MemorySetting::Bytes(64 << 20)
        );
        assert_eq!(
            "1.5G".parse::<MemorySetting>().unwrap(),
            MemorySetting::Bytes(3 << 29)
        );
        // Not page-aligned: rounded down to what the kernel will hold.
        let limits = request("40000001", "1", "0").resolve(&guest()).unwrap();
        assert_eq!(limits.memory_max, Some(40_000_001 / 4096 * 4096));
    }

    /// Every rejection names the bad value.
    #[test]
    fn rejections_name_the_bad_value() {
        let memory = [
            ("0", "is 0"),
            ("0M", "is 0"),
            ("-64M", "negative"),
            ("lots", "not understood"),
            ("64X", "not understood"),
            ("", "not understood"),
            ("0%", "percentage"),
            ("150%", "percentage"),
            ("-5%", "percentage"),
            ("x%", "not understood"),
        ];
        for (value, expected) in memory {
            let error = value.parse::<MemorySetting>().unwrap_err().to_string();
            assert!(error.contains(expected), "{value:?}: {error}");
            assert!(error.contains(&format!("{value:?}")), "{value:?}: {error}");
        }
        let resolve = |memory: &str| {
            LimitRequest {
                memory: memory.parse().unwrap(),
                ..Default::default()
            }
            .resolve(&guest())
            .unwrap_err()
            .to_string()
        };
        let error = resolve("1M");
        assert!(
            error.contains("\"1048576\"") && error.contains("below the floor"),
            "{error}"
        );
        let error = resolve("200M");
        assert!(
            error.contains(&format!("\"{}\"", 200u64 << 20)) && error.contains("above the VM"),
            "{error}"
        );
        let error = resolve("100");
        assert!(
            error.contains("\"100\"") && error.contains("is 0"),
            "{error}"
        );
        let error = resolve("1%");
        assert!(
            error.contains("\"1%\"") && error.contains("below the floor"),
            "{error}"
        );

        let pids = [
            ("0", "is 0"),
            ("-1", "negative"),
            ("-512", "negative"),
            ("4194305", "absurd"),
            ("99999999999999999999999", "absurd"),
            ("1e3", "not understood"),
            ("many", "not understood"),
            ("", "not understood"),
        ];
        for (value, expected) in pids {
            let error = value.parse::<PidsSetting>().unwrap_err().to_string();
            assert!(error.contains(expected), "{value:?}: {error}");
            assert!(error.contains(&format!("{value:?}")), "{value:?}: {error}");
        }
        // The same checks hold for values built in code rather than parsed.
        for (pids, expected) in [(0, "\"0\""), (PIDS_CEILING + 1, "\"4194305\"")] {
            let error = LimitRequest {
                pids: PidsSetting::Count(pids),
                ..Default::default()
            }
            .resolve(&guest())
            .unwrap_err()
            .to_string();
            assert!(error.contains(expected), "{error}");
        }

        for value in ["-1", "some", "1Q"] {
            let error = value.parse::<SwapSetting>().unwrap_err().to_string();
            assert!(error.contains(&format!("{value:?}")), "{value:?}: {error}");
        }
    }
}

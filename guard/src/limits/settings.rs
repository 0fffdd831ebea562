//! Limits as an agent or an operator writes them: bytes with units, a percentage of available
//! memory, a count, or `max`. Every refusal names the value.
use std::str::FromStr;

use serde::Serialize;

use super::{LimitsError, PIDS_CEILING};

/// A memory limit as asked for. Parses from a byte size (a whole number, or K/M/G/T binary
/// multiples with an optional `i`/`iB`/`B`, fractions allowed with a unit: `64M`, `1.5G`), a
/// percentage of available memory (`50%`) or `max`.
///
/// ```
/// use guard::limits::{MemorySetting, PidsSetting, SwapSetting};
///
/// assert_eq!("64M".parse(), Ok(MemorySetting::Bytes(64 << 20)));
/// assert_eq!("1.5G".parse(), Ok(MemorySetting::Bytes(3 << 29)));
/// assert_eq!("50%".parse(), Ok(MemorySetting::PercentOfAvailable(50.0)));
/// assert_eq!("max".parse(), Ok(MemorySetting::Max));
/// assert!("-64M".parse::<MemorySetting>().is_err());
/// assert!("150%".parse::<MemorySetting>().is_err());
/// assert_eq!("100".parse(), Ok(PidsSetting::Count(100)));
/// assert!("0".parse::<PidsSetting>().is_err());
/// assert_eq!("0".parse(), Ok(SwapSetting::Bytes(0)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySetting {
    /// 90% of available memory.
    Default,
    /// This many bytes (rounded down to whole pages when resolved).
    Bytes(u64),
    /// Percent of available memory, in (0, 100].
    PercentOfAvailable(f64),
    /// No memory limit, explicitly asked for.
    Max,
}

/// A pids limit as asked for. Parses from a whole number from 1 to [`PIDS_CEILING`] or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PidsSetting {
    /// [`DEFAULT_PIDS_MAX`](super::DEFAULT_PIDS_MAX).
    Default,
    /// At most this many tasks (1 to [`PIDS_CEILING`]).
    Count(u64),
    /// No pids limit, explicitly asked for.
    Max,
}

/// A swap limit (`memory.swap.max`) as asked for. Parses from a byte size (as
/// [`MemorySetting`], 0 allowed) or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapSetting {
    /// 0: no swap for the container.
    Default,
    /// At most this many bytes of swap (rounded down to whole pages when resolved).
    Bytes(u64),
    /// No swap limit: the container may swap as much as the guest has.
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

//! Limits as the kernel holds them (`memory.max`, `memory.swap.max`, `pids.max`, the peaks),
//! read back after they were written.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{CgroupError, memory, pids, read_limit};

/// A cgroup limit as the kernel writes it: a number or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitValue {
    /// `max`: no limit.
    Max,
    /// A limit: bytes for `memory.*`, tasks for `pids.max`.
    Value(u64),
}

impl LimitValue {
    /// Parses a limit file's text (surrounding whitespace ignored); `path` names the file in
    /// the error.
    ///
    /// ```
    /// use std::path::Path;
    /// use guard::cgroup::LimitValue;
    ///
    /// let path = Path::new("/sys/fs/cgroup/web/pids.max");
    /// assert_eq!(LimitValue::parse(path, "max\n")?, LimitValue::Max);
    /// assert_eq!(LimitValue::parse(path, "64\n")?.value(), Some(64));
    /// assert!(LimitValue::parse(path, "lots").is_err());
    /// # Ok::<(), guard::cgroup::CgroupError>(())
    /// ```
    pub fn parse(path: &Path, text: &str) -> Result<Self, CgroupError> {
        match text.trim() {
            "max" => Ok(LimitValue::Max),
            number => number
                .parse()
                .map(LimitValue::Value)
                .map_err(|_| CgroupError::Malformed {
                    path: path.to_path_buf(),
                    line: 1,
                    text: text.trim().to_string(),
                }),
        }
    }

    /// The number; None for `max`.
    pub fn value(self) -> Option<u64> {
        match self {
            LimitValue::Max => None,
            LimitValue::Value(value) => Some(value),
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Max => f.write_str("max"),
            LimitValue::Value(value) => write!(f, "{value}"),
        }
    }
}

/// Limits and peaks as the kernel holds them for one cgroup (None: no such file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeldLimits {
    /// The cgroup read.
    pub cgroup: PathBuf,
    /// `memory.max`, in bytes.
    pub memory_max: Option<LimitValue>,
    /// `memory.swap.max`, in bytes (absent without CONFIG_SWAP).
    pub memory_swap_max: Option<LimitValue>,
    /// `pids.max`, in tasks.
    pub pids_max: Option<LimitValue>,
    /// High-water marks (kernels 5.19+ for memory.peak; pids.peak is newer): `memory.peak`, in
    /// bytes.
    pub memory_peak: Option<u64>,
    /// `pids.peak`, in tasks.
    pub pids_peak: Option<u64>,
}

impl HeldLimits {
    /// Reads what `cgroup` holds now.
    pub fn read(cgroup: &Path) -> Result<Self, CgroupError> {
        let peak = |name: &str| -> Result<Option<u64>, CgroupError> {
            Ok(read_limit(cgroup, name)?.and_then(LimitValue::value))
        };
        Ok(HeldLimits {
            cgroup: cgroup.to_path_buf(),
            memory_max: read_limit(cgroup, memory::MAX)?,
            memory_swap_max: read_limit(cgroup, memory::SWAP_MAX)?,
            pids_max: read_limit(cgroup, pids::MAX)?,
            memory_peak: peak(memory::PEAK)?,
            pids_peak: peak(pids::PEAK)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::EventFiles;

    #[test]
    fn limits_parse_max_and_numbers() {
        assert_eq!(
            LimitValue::parse(Path::new("f"), "max\n").unwrap(),
            LimitValue::Max
        );
        assert_eq!(
            LimitValue::parse(Path::new("f"), "512\n").unwrap(),
            LimitValue::Value(512)
        );
        let error = LimitValue::parse(Path::new("/cg/pids.max"), "lots").unwrap_err();
        assert!(error.to_string().contains("/cg/pids.max"));
    }

    #[test]
    fn missing_files_read_as_absent() {
        let dir = std::env::temp_dir().join(format!("guard-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("pids.events"), "max 3\n").unwrap();
        fs::write(dir.join("pids.max"), "64\n").unwrap();
        let files = EventFiles::read(&dir).unwrap();
        assert_eq!(files.pids_events.unwrap().get("max"), 3);
        assert!(files.memory_events.is_none());
        let limits = HeldLimits::read(&dir).unwrap();
        assert_eq!(limits.pids_max, Some(LimitValue::Value(64)));
        assert_eq!(limits.memory_max, None);
        fs::remove_dir_all(&dir).unwrap();
    }
}

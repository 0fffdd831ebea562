//! The agent's configuration file: the settings an agent fixes once (limits, cgroup root, the
//! forensic log, the highest tier). TOML; every key is optional; an unknown key is an error
//! (a misspelt key silently ignored would be a limit silently not applied). Command-line flags
//! override the file. The format is in docs/ERRORS.md.
//!
//! ```toml
//! memory = "64M"          # memory.max: bytes, a percentage of MemAvailable, or "max"
//! pids = 512              # pids.max: a count or "max"
//! swap = 0                # memory.swap.max: bytes or "max"
//! cgroup_root = "/guard"  # parent of the container cgroups, below the cgroup2 mount
//! log_dir = "/var/lib/guard/log"
//! fsync = "interval=100"  # always, never or interval=<ms>
//! max_tier = 3            # 0, 1, 2 or 3
//! ```
use std::{
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, de};

use crate::{
    Tier,
    forensic::FsyncPolicy,
    limits::{MemorySetting, PidsSetting, SwapSetting},
    spec::SpecOptions,
};

/// A config file larger than this is not a config file (and `/dev/zero` must not hang us).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file that cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML, an unknown or duplicate key, or a value its setting refuses (with the same
    /// message as the command line's).
    #[error("config file {path}{at}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `, line L, column C` where the parser knows the place, else empty.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// The settings; None = not in the file.
///
/// ```
/// use std::path::Path;
/// use guard::config::Config;
/// use guard::limits::{MemorySetting, PidsSetting};
///
/// let config = Config::parse(Path::new("agent.toml"), "memory = \"64M\"\npids = 512\n")?;
/// assert_eq!(config.memory, Some(MemorySetting::Bytes(64 << 20)));
/// assert_eq!(config.pids, Some(PidsSetting::Count(512)));
/// assert_eq!(config.log_dir, None);
/// // A misspelt key is an error, never a limit silently not applied.
/// let error = Config::parse(Path::new("agent.toml"), "memroy = \"64M\"\n").unwrap_err();
/// assert!(error.to_string().contains("agent.toml, line 1"));
/// # Ok::<(), guard::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `memory`: memory.max (bytes, a percentage of MemAvailable, or `max`).
    #[serde(default, deserialize_with = "parsed")]
    pub memory: Option<MemorySetting>,
    /// `pids`: pids.max (a count or `max`).
    #[serde(default, deserialize_with = "parsed")]
    pub pids: Option<PidsSetting>,
    /// `swap`: memory.swap.max (bytes or `max`).
    #[serde(default, deserialize_with = "parsed")]
    pub swap: Option<SwapSetting>,
    /// `cgroup_root`: the parent of the container cgroups, below the cgroup2 mount
    /// (validated as [`SpecOptions::cgroup_root`]).
    #[serde(default, deserialize_with = "cgroup_root")]
    pub cgroup_root: Option<String>,
    /// `log_dir`: the forensic log's directory.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// `fsync`: the log's fsync policy (`always`, `never` or `interval=<ms>`).
    #[serde(default, deserialize_with = "parsed")]
    pub fsync: Option<FsyncPolicy>,
    /// `max_tier`: the highest tier to run at (0 to 3).
    #[serde(default, deserialize_with = "tier")]
    pub max_tier: Option<Tier>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| {
            let span = error.span();
            let mut message = error.message().trim_end().to_string();
            // toml does not say which key; the span does.
            if message == "duplicate key"
                && let Some(key) = span.clone().and_then(|span| text.get(span))
            {
                message = format!("duplicate key `{}`", key.trim());
            }
            ConfigError::Invalid {
                path: path.to_path_buf(),
                at: span
                    .map(|span| {
                        let (line, column) = line_column(text, span.start);
                        format!(", line {line}, column {column}")
                    })
                    .unwrap_or_default(),
                message,
            }
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// A setting given as a string, or as an integer for the numeric ones (`pids = 512`).
struct Text;

impl de::Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an integer")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }
}

/// Parses with the same `FromStr` as the command line, so both give the same errors.
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = deserializer.deserialize_any(Text)?;
    text.parse().map(Some).map_err(de::Error::custom)
}

fn cgroup_root<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let root = String::deserialize(deserializer)?;
    SpecOptions {
        cgroup_root: root.clone(),
        ..SpecOptions::default()
    }
    .validate()
    .map_err(de::Error::custom)?;
    Ok(Some(root))
}

fn tier<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Tier>, D::Error> {
    Tier::try_from(i64::deserialize(deserializer)?)
        .map(Some)
        .map_err(|error| de::Error::custom(format!("max_tier {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_and_all_are_optional() {
        let text = "memory = \"64M\"\npids = 512\nswap = \"max\"\ncgroup_root = \"/agent\"\n\
                    log_dir = \"/var/log/g\"\nfsync = \"always\"\nmax_tier = 1\n";
        let config = Config::parse(Path::new("a.toml"), text).unwrap();
        assert_eq!(
            config,
            Config {
                memory: Some(MemorySetting::Bytes(64 << 20)),
                pids: Some(PidsSetting::Count(512)),
                swap: Some(SwapSetting::Max),
                cgroup_root: Some("/agent".to_string()),
                log_dir: Some(PathBuf::from("/var/log/g")),
                fsync: Some(FsyncPolicy::Always),
                max_tier: Some(Tier::KernelSources),
            }
        );
        let empty = Config::parse(Path::new("a.toml"), "# nothing\n").unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncdé\nf", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nf", 3), (2, 1));
        assert_eq!(line_column("ab\ncdé\nf", 8), (3, 1));
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
    }
}

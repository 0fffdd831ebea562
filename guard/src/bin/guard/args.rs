//! Value parsers shared by the commands: every bad value is refused by clap (exit status 2)
//! with a message naming it, before guard loads anything. docs/ERRORS.md lists the messages.
use std::{ffi::OsStr, path::PathBuf, time::Duration};

use clap::builder::{OsStringValueParser, TypedValueParser};
use guard::{
    ContainerId,
    limits::{LimitsError, MemorySetting, PidsSetting, SwapSetting},
    spec::SpecOptions,
};

/// An error in the command line or the config file found before anything ran: exit status 2,
/// like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Wraps any error as a [`UsageError`].
pub fn usage(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(error.to_string()))
}

/// `--id`: taken as an OS string, so a non-UTF-8 id is named (lossily) rather than refused
/// with clap's generic "invalid UTF-8" message.
pub fn container_id() -> impl TypedValueParser<Value = ContainerId> {
    OsStringValueParser::new().try_map(|id| ContainerId::from_os_str(&id))
}

/// `[ID=]PATH` of `guard watch --cgroup`: the id is the directory name unless given.
pub fn watch_target() -> impl TypedValueParser<Value = (ContainerId, PathBuf)> {
    OsStringValueParser::new().try_map(|text| parse_watch_target(&text))
}

fn parse_watch_target(text: &OsStr) -> Result<(ContainerId, PathBuf), String> {
    let bytes = text.as_encoded_bytes();
    if let Some(equals) = bytes.iter().position(|&b| b == b'=') {
        let id = ContainerId::from_bytes(&bytes[..equals]).map_err(|e| e.to_string())?;
        // SAFETY: split right after an ASCII '=' of a string from `as_encoded_bytes`.
        let path = unsafe { OsStr::from_encoded_bytes_unchecked(&bytes[equals + 1..]) };
        return Ok((id, PathBuf::from(path)));
    }
    let path = PathBuf::from(text);
    let Some(name) = path.file_name() else {
        return Err(format!(
            "{}: no directory name to use as the id; give ID=PATH",
            path.display()
        ));
    };
    let id = ContainerId::from_os_str(name).map_err(|e| e.to_string())?;
    Ok((id, path))
}

pub fn memory(text: &str) -> Result<MemorySetting, LimitsError> {
    text.parse()
}

pub fn pids(text: &str) -> Result<PidsSetting, LimitsError> {
    text.parse()
}

pub fn swap(text: &str) -> Result<SwapSetting, LimitsError> {
    text.parse()
}

/// `guard exec --memory`: bytes, with the same syntax and checks as `guard run --memory`.
pub fn memory_bytes(text: &str) -> Result<u64, String> {
    match memory(text).map_err(|e| e.to_string())? {
        MemorySetting::Bytes(bytes) => Ok(bytes),
        _ => Err(format!(
            "memory limit {text:?}: guard exec takes bytes (e.g. 33554432 or 32M); a \
             percentage or \"max\" are for guard run"
        )),
    }
}

/// `guard exec --pids`: a count, with the same checks as `guard run --pids`.
pub fn pids_count(text: &str) -> Result<u64, String> {
    match pids(text).map_err(|e| e.to_string())? {
        PidsSetting::Count(count) => Ok(count),
        _ => Err(format!(
            "pids limit {text:?}: guard exec takes a count; leave --pids out for no limit"
        )),
    }
}

/// `guard run --oom-score-adj`: the spec's rule (-999..=1000), checked before anything runs.
pub fn container_oom_score_adj(text: &str) -> Result<i32, String> {
    let value: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("oomScoreAdj {text:?} is not an integer"))?;
    SpecOptions {
        oom_score_adj: value,
        ..SpecOptions::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok(value)
}

/// `--cgroup-root`: an absolute path of plain components.
pub fn cgroup_root(text: &str) -> Result<String, String> {
    SpecOptions {
        cgroup_root: text.to_string(),
        ..SpecOptions::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

/// `--duration`: a positive number of seconds that fits a `Duration`.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("{text:?} is not a positive number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} seconds is too long"))
}

//! `/proc/meminfo` parsing and limit settings. The input is `<meminfo text>` optionally
//! followed by a NUL byte and up to three lines: the memory, pids and swap settings as an agent
//! would pass them.
use guard::limits::{
    LimitRequest, LimitsError, MEMORY_FLOOR, MemInfo, MemorySetting, PAGE_SIZE, PIDS_CEILING,
    PidsSetting, SwapSetting, memory_limit_from_meminfo,
};

/// Every value a `name:` line may give in bytes, by an independent reading of the format
/// (`Name: <u64> [kB]`, kB meaning KiB, saturating).
fn values_of(meminfo: &str, name: &str) -> Vec<u64> {
    meminfo
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            if key.trim() != name {
                return None;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (number, unit) = match words.as_slice() {
                [number] => (*number, 1024),
                [number, "kB", ..] => (*number, 1024),
                _ => return None,
            };
            number.parse::<u64>().ok().map(|n| n.saturating_mul(unit))
        })
        .collect()
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (meminfo, settings) = text.split_once('\0').unwrap_or((&text, ""));

    let available = values_of(meminfo, "MemAvailable");
    match memory_limit_from_meminfo(meminfo) {
        Some(limit) => {
            // The first parseable MemAvailable line is the one that counts.
            let raw = *available
                .first()
                .expect("a limit without a MemAvailable value");
            assert!(limit > 0, "limit 0 from MemAvailable {raw}");
            assert!(limit < raw, "limit {limit} leaves no headroom below {raw}");
            assert_eq!(limit, raw - raw / 10);
        }
        None => assert!(
            available.first().is_none_or(|&raw| raw == 0),
            "no limit from MemAvailable {available:?}"
        ),
    }
    let info = MemInfo::parse(meminfo);
    if let Some(info) = &info {
        assert_eq!(Some(&info.available), available.first());
        assert_eq!(Some(&info.total), values_of(meminfo, "MemTotal").first());
    }

    let mut lines = settings.lines();
    let memory = lines.next().map_or(Some(MemorySetting::Default), setting);
    let pids = lines.next().map_or(Some(PidsSetting::Default), setting);
    let swap = lines.next().map_or(Some(SwapSetting::Default), setting);
    let (Some(memory), Some(pids), Some(swap), Some(info)) = (memory, pids, swap, info) else {
        return;
    };
    let request = LimitRequest { memory, pids, swap };
    match request.resolve(&info) {
        Ok(limits) => {
            if let Some(bytes) = limits.memory_max {
                assert_eq!(bytes % PAGE_SIZE, 0, "{limits}");
                assert!((MEMORY_FLOOR..=info.total).contains(&bytes), "{limits}");
            }
            if let Some(pids) = limits.pids_max {
                assert!((1..=PIDS_CEILING).contains(&pids), "{limits}");
            }
            if let Some(swap) = limits.swap_max {
                assert_eq!(swap % PAGE_SIZE, 0, "{limits}");
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// Parses one setting; a rejection must quote the input. None when it was rejected.
fn setting<T: std::str::FromStr<Err = LimitsError>>(line: &str) -> Option<T> {
    match line.parse::<T>() {
        Ok(value) => Some(value),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains(&format!("{line:?}")),
                "error for {line:?} does not name it: {message}"
            );
            None
        }
    }
}

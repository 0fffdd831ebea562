//! The limits' unit tests: defaults, overrides, rejections, the budget's clamps.
use super::{meminfo::MEMINFO, *};

fn guest() -> MemInfo {
    MemInfo::parse(MEMINFO).unwrap()
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

fn budget(memory_max: u64, pids_max: u64) -> GuestBudget {
    GuestBudget {
        memory_max,
        pids_max,
        threads_max: pids_max + TASKS_OUTSIDE,
        available: 100_000 * 1024,
        kernel_reserve: KERNEL_RESERVE_FLOOR,
        agent_reserve: 0,
        log_reserve: 0,
    }
}

#[test]
fn defaults_are_clamped_to_the_budget_and_say_so() {
    let resolved = LimitRequest::default()
        .resolve_within(&guest(), &budget(40 << 20, 300))
        .unwrap();
    assert_eq!(resolved.limits.memory_max, Some(40 << 20));
    assert_eq!(resolved.limits.pids_max, Some(300));
    assert_eq!(
        resolved.clamped,
        vec![
            Clamp {
                file: "memory.max",
                default: 92_160_000,
                clamped_to: 40 << 20
            },
            Clamp {
                file: "pids.max",
                default: DEFAULT_PIDS_MAX,
                clamped_to: 300
            }
        ]
    );
    // Within the budget nothing changes.
    let roomy = LimitRequest::default()
        .resolve_within(&guest(), &budget(100 << 20, 4096))
        .unwrap();
    assert!(roomy.clamped.is_empty());
    assert_eq!(
        roomy.limits,
        LimitRequest::default().resolve(&guest()).unwrap()
    );
}

#[test]
fn explicit_limits_above_the_budget_are_errors_naming_both() {
    let request = LimitRequest {
        memory: "64M".parse().unwrap(),
        ..Default::default()
    };
    let error = request
        .resolve_within(&guest(), &budget(40 << 20, 4096))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&(64u64 << 20).to_string()) && error.contains(&(40u64 << 20).to_string()),
        "{error}"
    );
    let request = LimitRequest {
        memory: "90%".parse().unwrap(),
        ..Default::default()
    };
    let error = request
        .resolve_within(&guest(), &budget(40 << 20, 4096))
        .unwrap_err()
        .to_string();
    assert!(error.contains("90% of MemAvailable"), "{error}");
    let request = LimitRequest {
        pids: PidsSetting::Count(5000),
        ..Default::default()
    };
    let error = request
        .resolve_within(&guest(), &budget(40 << 20, 4096))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("pids limit 5000 ") && error.contains("4096"),
        "{error}"
    );
    // `max` is the budget's to hold.
    let request = LimitRequest {
        memory: MemorySetting::Max,
        pids: PidsSetting::Max,
        ..Default::default()
    };
    let resolved = request
        .resolve_within(&guest(), &budget(40 << 20, 4096))
        .unwrap();
    assert_eq!(
        (resolved.limits.memory_max, resolved.limits.pids_max),
        (None, None)
    );
}

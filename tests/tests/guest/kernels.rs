//! The lean guest kernels are what the field ships: `lean` must hold every option guard
//! depends on exactly as libkrunfw's config does (`kernels/libkrunfw-x86_64.config`), and
//! `lean-guard` must differ from it only by `kernels/guard.config`. Read off the configs that
//! `cargo xtask setup` built; under CI a missing build fails, as every guest test does.
use std::collections::BTreeMap;

use xtask::{paths, vm};

/// The options guard's tiers, its enforcement and its evidence depend on.
const GUARD_OPTIONS: &[&str] = &[
    // Tracing: tier 1 and its cost.
    "CONFIG_FTRACE",
    "CONFIG_TRACING",
    "CONFIG_TRACEPOINTS",
    "CONFIG_FTRACE_SYSCALLS",
    "CONFIG_BPF_EVENTS",
    "CONFIG_UPROBE_EVENTS",
    "CONFIG_PERF_EVENTS",
    // Kprobes: tier 2.
    "CONFIG_KPROBES",
    "CONFIG_KPROBE_EVENTS",
    "CONFIG_KALLSYMS",
    "CONFIG_KALLSYMS_ALL",
    // BTF, the JIT, PSI, modules: what probe reports.
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_DEBUG_INFO_NONE",
    "CONFIG_BPF_JIT",
    "CONFIG_PSI",
    "CONFIG_MODULES",
    // Enforcement and the evidence without BPF.
    "CONFIG_CGROUPS",
    "CONFIG_MEMCG",
    "CONFIG_CGROUP_PIDS",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_CGROUP_BPF",
    "CONFIG_INOTIFY_USER",
    // The channel the evidence leaves the guest by.
    "CONFIG_VSOCKETS",
    "CONFIG_VIRTIO_VSOCKETS",
];

/// `CONFIG_X` → its value, `n` for "is not set".
fn config_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("# ")
                .and_then(|rest| rest.strip_suffix(" is not set"))
            {
                return Some((name.to_string(), "n".to_string()));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

fn value<'a>(config: &'a BTreeMap<String, String>, option: &str) -> &'a str {
    config.get(option).map_or("n", String::as_str)
}

fn repository_config(name: &str) -> BTreeMap<String, String> {
    let path = paths::workspace_root().join("kernels").join(name);
    config_values(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// The config `cargo xtask setup` built `kernel` with; None (skip) outside CI when absent.
fn built_config(kernel: &str) -> Option<BTreeMap<String, String>> {
    let image = vm::kernel_or_skip(kernel).map(|k| vm::resolve(&k).unwrap().image)?;
    let path = image.with_file_name("config");
    Some(config_values(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ))
}

#[test]
fn lean_holds_the_reference_options_exactly() {
    let Some(lean) = built_config("lean") else {
        return;
    };
    let reference = repository_config("libkrunfw-x86_64.config");
    let differ: Vec<String> = GUARD_OPTIONS
        .iter()
        .filter(|option| value(&lean, option) != value(&reference, option))
        .map(|option| {
            format!(
                "{option}: libkrunfw {}, lean {}",
                value(&reference, option),
                value(&lean, option)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "lean deviates from libkrunfw: {differ:?}"
    );
    // The point of the lean kernel: no tracing at all.
    assert_eq!(value(&lean, "CONFIG_FTRACE"), "n");
    assert_eq!(value(&lean, "CONFIG_BPF_EVENTS"), "n");
}

#[test]
fn lean_guard_differs_from_lean_only_by_the_fragment() {
    let (Some(lean), Some(lean_guard)) = (built_config("lean"), built_config("lean-guard")) else {
        return;
    };
    let fragment = repository_config("guard.config");
    assert!(!fragment.is_empty(), "kernels/guard.config sets nothing");
    let mut wrong = Vec::new();
    for (option, want) in &fragment {
        if value(&lean_guard, option) != want {
            wrong.push(format!(
                "{option}: the fragment says {want}, lean-guard has {}",
                value(&lean_guard, option)
            ));
        }
    }
    // Among guard's options, only what the fragment turns on (and what Kconfig selects with
    // it: tracing's own symbols) may differ from lean.
    let selected_with_tracing = [
        "CONFIG_TRACING",
        "CONFIG_TRACEPOINTS",
        "CONFIG_BPF_EVENTS",
        "CONFIG_UPROBE_EVENTS",
        "CONFIG_KALLSYMS",
    ];
    for option in GUARD_OPTIONS {
        if fragment.contains_key(*option) || selected_with_tracing.contains(option) {
            continue;
        }
        if value(&lean_guard, option) != value(&lean, option) {
            wrong.push(format!(
                "{option}: lean {}, lean-guard {}",
                value(&lean, option),
                value(&lean_guard, option)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(value(&lean_guard, "CONFIG_BPF_EVENTS"), "y");
}

#[test]
fn config_values_reads_both_forms() {
    let config = config_values("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n# comment\n");
    assert_eq!(value(&config, "CONFIG_A"), "y");
    assert_eq!(value(&config, "CONFIG_B"), "n");
    assert_eq!(value(&config, "CONFIG_C"), "\"x\"");
    assert_eq!(value(&config, "CONFIG_D"), "n");
}

//! A start without the privilege to use BPF: diagnosed as such, with what to grant, and never
//! as a kernel that lacks BPF. `guard-start` runs as uid 65534 under `setpriv` with chosen
//! capabilities; with the set the diagnosis names, the same start reaches tier 2 (the set is
//! enough, and the diagnosis is not a stub).
use std::process::{Command, Output};

use guard::CapabilityReport;
use guard_tests::host::root_or_skip;

const START: &str = env!("CARGO_BIN_EXE_guard-start");

/// `guard-start MIN_TIER` as uid 65534 with `caps` (setpriv's form: `+bpf,+perfmon`), or
/// none.
fn start_as_nobody(caps: &str, min_tier: u8) -> Output {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if !caps.is_empty() {
        command
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    command
        .arg(START)
        .arg(min_tier.to_string())
        .output()
        .expect("setpriv (util-linux) runs")
}

/// The host's tracefs mounted (the probe mounts it as root), so that the unprivileged starts
/// find it mounted and unreadable, as on a machine whose agent ran once.
fn tracefs_mounted(test: &str) -> bool {
    let report = CapabilityReport::probe();
    let usable = report.tracefs.is_some() && report.tier >= guard::Tier::Tracepoints;
    if !usable {
        eprintln!("SKIP {test}: the host kernel offers no BPF tracepoints even to root");
    }
    usable
}

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

const NOTHING_GRANTED: &str = "not permitted to use BPF: this process (euid 65534) lacks \
                               CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH; run the agent as \
                               root, or grant it CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH";

#[test]
fn a_required_tier_without_privilege_names_what_to_grant() {
    let test = "a_required_tier_without_privilege_names_what_to_grant";
    if !root_or_skip(test) || !tracefs_mounted(test) {
        return;
    }
    let refused = start_as_nobody("", 2);
    assert!(!refused.status.success());
    assert_eq!(
        text(&refused.stdout).trim(),
        format!(
            "error: guard would run at tier 0 (cgroup event files only) (this process may not \
             use BPF), below the required tier 2 (tracepoints): {NOTHING_GRANTED}"
        )
    );
    // Granted the BPF capabilities, tracefs is what it still lacks, and only that is named.
    let half = start_as_nobody("+bpf,+perfmon", 2);
    assert_eq!(
        text(&half.stdout).trim(),
        "error: guard would run at tier 0 (cgroup event files only) (this process may not use \
         BPF), below the required tier 2 (tracepoints): not permitted to use BPF: this process \
         (euid 65534) lacks CAP_DAC_READ_SEARCH; run the agent as root, or grant it CAP_BPF + \
         CAP_PERFMON + CAP_DAC_READ_SEARCH"
    );
    // Granted what it names, the same start loads the programs.
    let granted = start_as_nobody("+bpf,+perfmon,+dac_read_search", 2);
    let stdout = text(&granted.stdout);
    assert!(
        granted.status.success(),
        "{stdout}\n{}",
        text(&granted.stderr)
    );
    assert!(
        stdout.starts_with("tier 2") || stdout.starts_with("tier 3"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""missing":[]"#), "{stdout}");
}

#[test]
fn tier_0_for_want_of_privilege_is_a_warning_that_blames_no_kernel_option() {
    let test = "tier_0_for_want_of_privilege_is_a_warning_that_blames_no_kernel_option";
    if !root_or_skip(test) || !tracefs_mounted(test) {
        return;
    }
    let started = start_as_nobody("", 0);
    let (stdout, stderr) = (text(&started.stdout), text(&started.stderr));
    assert!(started.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("tier 0"), "{stdout}");
    let warning = stderr
        .lines()
        .find(|line| line.contains("guard runs at tier"))
        .unwrap_or_else(|| panic!("no word of the tier: {stderr}"));
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.ends_with(&format!(
            "guard runs at tier 0 (cgroup event files only): {NOTHING_GRANTED}"
        )),
        "{warning}"
    );
    // What the issue saw: a refusal read as a kernel without BPF. The notes start with the
    // privilege and blame no kernel option (the host's remarks, on cgroup controllers or PSI,
    // may follow).
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().nth(1).unwrap_or_default()).expect("the JSON line");
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|note| note.as_str())
        .collect();
    assert_eq!(notes.first(), Some(&NOTHING_GRANTED), "{notes:?}");
    for misread in [
        "CONFIG_",
        "ring buffers",
        "tracefs could not be mounted",
        "tracepoints",
    ] {
        assert!(
            !notes.iter().any(|note| note.contains(misread)),
            "{notes:?}"
        );
        assert!(!stderr.contains(misread), "{stderr}");
    }
}

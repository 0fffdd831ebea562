use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;

use super::*;
use crate::{
    limits::Limits,
    spec::{SpecError, SpecOptions, apply, for_rootfs},
};

const NO_LIMITS: Limits = Limits {
    memory_max: None,
    swap_max: None,
    pids_max: None,
};

/// A profile from its OCI JSON, as a bundle's `linux.seccomp` would be.
fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

/// An allowlist as Docker writes its default profile: refuse by default, allow named calls.
const ALLOWLIST: &str = r#"{
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "syscalls": [
        {"names": ["read", "write", "socket", "socketpair", "io_uring_setup", "socketcall",
                   "exit_group", "no_such_call_yet"],
         "action": "SCMP_ACT_ALLOW"}
    ]}"#;

fn rules_for<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
    profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|rule| rule.names().iter().any(|n| n == name))
        .collect()
}

#[test]
fn the_default_spec_gets_the_rule_and_the_test_option_leaves_it_out() {
    let limits = NO_LIMITS;
    let mut spec = for_rootfs(Path::new("/tmp/rootfs"), &["sh".into()], &[]).unwrap();
    apply(&mut spec, "web", &limits, &SpecOptions::default()).unwrap();
    let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
    assert_eq!(seccomp, default_profile().unwrap());
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    // The compat ABIs too: a filter of the native ABI alone kills every 32-bit call, and
    // i386's socketcall is refused its SYS_SOCKET through the same rule (libseccomp).
    assert_eq!(
        seccomp.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
    );
    let socket = rules_for(&seccomp, "socket");
    assert_eq!(socket.len(), 1);
    assert_eq!(socket[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(socket[0].errno_ret(), Some(libc::EPERM as u32));
    let args = socket[0].args().clone().unwrap();
    assert_eq!(
        (args[0].index(), args[0].op(), args[0].value()),
        (0, LinuxSeccompOperator::ScmpCmpEq, 40)
    );
    for call in [
        "socketpair",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        assert_eq!(rules_for(&seccomp, call).len(), 1, "{call}");
    }
    // The spec's other defaults stay (no_new_privileges above all: the filter needs it).
    assert_eq!(
        spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );

    let mut spec = for_rootfs(Path::new("/tmp/rootfs"), &["sh".into()], &[]).unwrap();
    let options = SpecOptions {
        omit_seccomp_rule: true,
        ..SpecOptions::default()
    };
    apply(&mut spec, "web", &limits, &options).unwrap();
    assert_eq!(spec.linux().as_ref().unwrap().seccomp(), &None);
}

#[test]
fn an_allowlist_loses_io_uring_and_its_socket_calls_exclude_vsock() {
    let merged = merged(&profile(ALLOWLIST)).unwrap();
    // The default refuses with EPERM already: the guard's rules would be redundant.
    for call in IO_URING_CALLS {
        assert!(rules_for(&merged, call).is_empty(), "{call}: {merged:#?}");
    }
    for (call, excluded) in [("socket", 40), ("socketpair", 40), ("socketcall", 1)] {
        let rules = rules_for(&merged, call);
        assert_eq!(rules.len(), 1, "{call}: {merged:#?}");
        assert_eq!(rules[0].names(), &vec![call.to_string()]);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
        let args = rules[0].args().clone().unwrap();
        assert_eq!(
            (args[0].index(), args[0].op(), args[0].value()),
            (0, LinuxSeccompOperator::ScmpCmpNe, excluded),
            "{call}"
        );
    }
    // The rest of the rule stays as written; an allowed call libseccomp does not know is left
    // to the default (refused), which is what the kernel would do without it.
    let rest = rules_for(&merged, "read");
    assert_eq!(
        rest[0].names(),
        &["read", "write", "exit_group"].map(String::from).to_vec()
    );
    assert!(rules_for(&merged, "no_such_call_yet").is_empty());
}

#[test]
fn a_denylist_gets_the_guard_rules_added() {
    let merged = merged(&profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
    ))
    .unwrap();
    let rules = merged.syscalls().clone().unwrap();
    assert_eq!(rules[0].names(), &vec!["ptrace".to_string()]);
    assert_eq!(&rules[1..], guard_rules().unwrap().as_slice());
}

#[test]
fn a_socket_rule_that_excludes_vsock_already_is_kept() {
    for condition in [
        r#"[{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]"#,
        r#"[{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]"#,
        r#"[{"index": 0, "value": 40, "op": "SCMP_CMP_LT"}]"#,
        // (domain & 0xff) == 2: 40 & 0xff is 40.
        r#"[{"index": 0, "value": 2, "valueTwo": 255, "op": "SCMP_CMP_MASKED_EQ"}]"#,
    ] {
        let bundle = profile(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": {condition}}}]}}"#
        ));
        let merged = merged(&bundle).unwrap();
        assert_eq!(
            rules_for(&merged, "socket"),
            rules_for(&bundle, "socket"),
            "{condition}"
        );
    }
}

#[test]
fn a_socket_rule_that_admits_vsock_is_refused_by_name() {
    for condition in [
        r#"[{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]"#,
        r#"[{"index": 0, "value": 2, "op": "SCMP_CMP_GE"}]"#,
        // Two conditions on one argument are OR'd by libcontainer: 40 != 2 holds.
        r#"[{"index": 0, "value": 2, "op": "SCMP_CMP_NE"}, {"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]"#,
    ] {
        let bundle = profile(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{{"names": ["read"], "action": "SCMP_ACT_ALLOW"}},
                             {{"names": ["socket"], "action": "SCMP_ACT_LOG", "args": {condition}}}]}}"#
        ));
        let error = merged(&bundle).unwrap_err();
        assert!(
            matches!(&error, SeccompProfileError::AdmitsVsock { rule: 1, name, .. } if name == "socket"),
            "{condition}: {error:?}"
        );
        assert!(error.to_string().contains("rule 1"), "{error}");
        // Without the guard's rule (the tests' option) the profile is taken as written.
        assert_eq!(checked(&bundle).unwrap(), bundle);
    }
    // A condition on another argument alone leaves the family open: narrowed, not refused.
    let bundle = profile(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    let args = rules_for(&merged(&bundle).unwrap(), "socket")[0]
        .args()
        .clone()
        .unwrap();
    assert_eq!(args.len(), 2);
    assert_eq!(
        (args[1].index(), args[1].op(), args[1].value()),
        (0, LinuxSeccompOperator::ScmpCmpNe, 40)
    );
}

#[test]
fn profiles_libcontainer_cannot_enforce_are_refused_by_name() {
    let unknown = profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["ptrace", "no_such_call_yet"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    let error = merged(&unknown).unwrap_err();
    assert!(
        error.to_string().contains("\"no_such_call_yet\""),
        "{error}"
    );
    // Refused with the rule left out too: libcontainer would skip the name with a warning.
    assert!(checked(&unknown).is_err());
    for (json, says) in [
        (
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
            "SCMP_ACT_NOTIFY as the default action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l",
                "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "for write",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "without a listenerPath",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
            "argument 6",
        ),
    ] {
        let error = merged(&profile(json)).unwrap_err();
        assert!(error.to_string().contains(says), "{json}: {error}");
    }
    // Through the spec: the container is refused with the error, not started without it.
    let mut spec = for_rootfs(Path::new("/tmp/rootfs"), &["sh".into()], &[]).unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(unknown));
    let error = apply(&mut spec, "web", &NO_LIMITS, &SpecOptions::default()).unwrap_err();
    assert!(matches!(error, SpecError::Seccomp(_)), "{error:?}");
}

/// What a process under `profile` gets from each attempt: 0 or the errno.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    vsock: i32,
    vsock_pair: i32,
    io_uring: i32,
    unix: i32,
}

/// Loads `profile` with libcontainer's own seccomp code in a fresh process (this test binary,
/// running only [`seccomp_probe_child`]) and returns what its attempts got.
fn probe(profile: &LinuxSeccomp) -> Probe {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "spec::seccomp::tests::seccomp_probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, serde_json::to_string(profile).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        // The harness prints the test's name on the same line first.
        .find_map(|line| line.split_once("probe ").map(|(_, numbers)| numbers))
        .unwrap_or_else(|| {
            panic!(
                "the probe printed nothing: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let numbers: Vec<i32> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    Probe {
        vsock: numbers[0],
        vsock_pair: numbers[1],
        io_uring: numbers[2],
        unix: numbers[3],
    }
}

const PROBE_ENV: &str = "GUARD_SECCOMP_PROBE_PROFILE";

fn outcome(result: libc::c_long) -> i32 {
    if result < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        // SAFETY: a descriptor the kernel just returned.
        unsafe { libc::close(result as i32) };
        0
    }
}

#[test]
#[ignore = "the child process of the enforcement tests (probe())"]
fn seccomp_probe_child() {
    let profile: LinuxSeccomp =
        serde_json::from_str(&std::env::var(PROBE_ENV).expect("run by probe()")).unwrap();
    // SAFETY: plain prctl and syscalls with valid arguments; descriptors are closed.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        libcontainer::seccomp::initialize_seccomp(&profile).unwrap();
        let vsock = outcome(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0).into());
        let mut pair = [0; 2];
        let vsock_pair =
            if libc::socketpair(libc::AF_VSOCK, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) < 0 {
                outcome(-1)
            } else {
                for fd in pair {
                    libc::close(fd);
                }
                0
            };
        let mut params = [0u8; 120];
        let io_uring = outcome(libc::syscall(
            libc::SYS_io_uring_setup,
            1,
            params.as_mut_ptr(),
        ));
        let unix = outcome(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).into());
        println!("probe {vsock} {vsock_pair} {io_uring} {unix}");
        // Out at once: an allowlist refuses what the test harness would do next.
        libc::_exit(0);
    }
}

#[test]
fn libcontainer_enforces_the_merged_rule() {
    let eperm = libc::EPERM;
    let denied = |probe: &Probe| {
        probe.vsock == eperm && probe.vsock_pair == eperm && probe.io_uring == eperm
    };
    let allowlist = profile(ALLOWLIST);
    let denylist = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    for (name, bundle) in [
        ("default", None),
        ("allowlist", Some(&allowlist)),
        ("denylist", Some(&denylist)),
    ] {
        let enforced = match bundle {
            None => default_profile().unwrap(),
            Some(bundle) => merged(bundle).unwrap(),
        };
        let got = probe(&enforced);
        assert!(denied(&got), "{name}: {got:?}");
        assert_eq!(got.unix, 0, "{name}: other sockets still work: {got:?}");
    }
    // Two-sided: the bundles alone let the attempts through (io_uring created, the vsock
    // socket made or refused by the kernel, never by policy); and the guard's rules merely
    // appended to the allowlist are overridden by its unconditional `socket` allow.
    for bundle in [&allowlist, &denylist] {
        let got = probe(&checked(bundle).unwrap());
        assert_ne!(got.vsock, eperm, "{got:?}");
        assert_ne!(got.io_uring, eperm, "{got:?}");
    }
    let mut appended = checked(&allowlist).unwrap();
    let mut rules = appended.syscalls().clone().unwrap();
    rules.extend(guard_rules().unwrap().into_iter().map(|mut rule| {
        // A different errno than the default's, so libcontainer does not skip them.
        rule.set_errno_ret(Some(libc::EACCES as u32));
        rule
    }));
    appended.set_syscalls(Some(rules));
    let got = probe(&appended);
    assert_ne!(
        got.vsock,
        libc::EACCES,
        "appended, the rule is overridden: {got:?}"
    );
    assert_ne!(got.vsock, eperm, "{got:?}");
}

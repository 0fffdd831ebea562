//! The bad-input matrix, command-line level: the built `guard` binary with bad arguments, a bad
//! config file, a path that is not a cgroup, a damaged log. Each case asserts the exit status,
//! the exact message naming the input, and that nothing panicked. Every case fails before guard
//! loads anything or creates a cgroup, so they are safe (and quick) even as root.
use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
};

use guard::{
    cgroup::Hierarchy,
    forensic::{FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json},
    limits::MemInfo,
};

const GUARD: &str = env!("CARGO_BIN_EXE_guard");

/// How clap ends a usage error.
const CLAP_TAIL: &str = "\n\nFor more information, try '--help'.\n";

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn guard(args: &[OsString]) -> Outcome {
    let output = Command::new(GUARD)
        .args(args)
        .env_remove("GUARD_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// (arguments, exit status, exact stderr)
type Case = (Vec<OsString>, i32, String);

fn clap_error(message: &str) -> String {
    format!("error: {message}{CLAP_TAIL}")
}

fn guard_error(message: &str) -> String {
    format!("guard: error: {message}\n")
}

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (arguments, code, stderr) in cases {
        let outcome = guard(&arguments);
        let shown: Vec<_> = arguments.iter().map(|a| a.to_string_lossy()).collect();
        if outcome.stderr.contains("panicked") {
            failures.push(format!("guard {shown:?} panicked: {}", outcome.stderr));
        } else if (outcome.code, outcome.stderr.as_str()) != (code, stderr.as_str()) {
            failures.push(format!(
                "guard {shown:?}:\n    got  {} {:?}\n    want {code} {stderr:?}",
                outcome.code, outcome.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `guard run` arguments that would otherwise be valid: every case fails before they matter.
fn run_with(extra: &[OsString]) -> Vec<OsString> {
    let mut all = args(&["run"]);
    all.extend_from_slice(extra);
    all.extend(args(&["--rootfs", "/nonexistent-rootfs", "--", "true"]));
    all
}

#[test]
fn container_ids() {
    let long = "x".repeat(300);
    let not_utf8 = OsStr::from_bytes(b"web\xff1").to_os_string();
    let id = |value: OsString| run_with(&[OsString::from("--id"), value]);
    check(vec![
        (
            id("".into()),
            2,
            clap_error("invalid value '' for '--id <ID>': container id is empty"),
        ),
        (
            id("..".into()),
            2,
            clap_error(
                r#"invalid value '..' for '--id <ID>': container id ".." contains only dots, which could escape its cgroup path"#,
            ),
        ),
        (
            id("/x".into()),
            2,
            clap_error(
                r#"invalid value '/x' for '--id <ID>': container id "/x" contains a '/', which could escape its cgroup path"#,
            ),
        ),
        (
            id(long.clone().into()),
            2,
            clap_error(&format!(
                "invalid value '{long}' for '--id <ID>': container id \"{}…\" is 300 bytes long; at most 128 are allowed",
                "x".repeat(128)
            )),
        ),
        (
            id(not_utf8),
            2,
            clap_error(
                "invalid value 'web\u{FFFD}1' for '--id <ID>': container id \"web\u{FFFD}1\" is not valid UTF-8",
            ),
        ),
        (
            args(&["exec", "--id", "a b", "--cgroup", "/x", "--", "true"]),
            2,
            clap_error(
                r#"invalid value 'a b' for '--id <ID>': container id "a b" contains whitespace, which could escape its cgroup path"#,
            ),
        ),
        (
            args(&["watch", "--cgroup", "../x=/tmp"]),
            2,
            clap_error(
                r#"invalid value '../x=/tmp' for '--cgroup <[ID=]PATH>': container id "../x" contains a '/', which could escape its cgroup path"#,
            ),
        ),
        (
            vec![
                "watch".into(),
                "--cgroup".into(),
                OsStr::from_bytes(b"/sys/fs/cgroup/w\xffb").to_os_string(),
            ],
            2,
            clap_error(
                "invalid value '/sys/fs/cgroup/w\u{FFFD}b' for '--cgroup <[ID=]PATH>': container id \"w\u{FFFD}b\" is not valid UTF-8",
            ),
        ),
    ]);
}

#[test]
fn limits() {
    let total = MemInfo::read().unwrap().total;
    let opt = |name: &str, value: &str| run_with(&args(&[name, value]));
    let memory_syntax = r#"is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a percentage of available memory (e.g. 50%) or "max""#;
    check(vec![
        (
            opt("--memory", "0"),
            2,
            clap_error(
                r#"invalid value '0' for '--memory <MEMORY>': memory limit "0" is 0: a container cannot run without memory"#,
            ),
        ),
        (
            opt("--memory", "-64M"),
            2,
            clap_error(
                r#"invalid value '-64M' for '--memory <MEMORY>': memory limit "-64M" is negative"#,
            ),
        ),
        (
            opt("--memory", "64X"),
            2,
            clap_error(&format!(
                r#"invalid value '64X' for '--memory <MEMORY>': memory limit "64X" {memory_syntax}"#
            )),
        ),
        (
            opt("--memory", "1T"),
            2,
            guard_error(&format!(
                r#"memory limit "1099511627776" (1099511627776 bytes) is above the VM's memory ({total} bytes of MemTotal)"#
            )),
        ),
        (
            opt("--pids", "-1"),
            2,
            clap_error(r#"invalid value '-1' for '--pids <PIDS>': pids limit "-1" is negative"#),
        ),
        (
            opt("--pids", "0"),
            2,
            clap_error(
                r#"invalid value '0' for '--pids <PIDS>': pids limit "0" is 0: the container's init could not even exist"#,
            ),
        ),
        (
            opt("--swap", "-1"),
            2,
            clap_error(r#"invalid value '-1' for '--swap <SWAP>': swap limit "-1" is negative"#),
        ),
        (
            opt("--oom-score-adj", "-1000"),
            2,
            clap_error(
                "invalid value '-1000' for '--oom-score-adj <OOM_SCORE_ADJ>': oomScoreAdj -1000 is not allowed: it must be in -999..=1000 (-1000 makes a container unkillable and its memcg OOM a livelock)",
            ),
        ),
        (
            opt("--cgroup-root", "guard/../x"),
            2,
            clap_error(
                r#"invalid value 'guard/../x' for '--cgroup-root <CGROUP_ROOT>': cgroup root "guard/../x" must be an absolute path of plain components (no '.', '..', empty, control characters)"#,
            ),
        ),
        (
            args(&["exec", "--cgroup", "/x", "--memory", "50%", "--", "true"]),
            2,
            clap_error(
                r#"invalid value '50%' for '--memory <BYTES>': memory limit "50%": guard exec takes bytes (e.g. 33554432 or 32M); a percentage or "max" are for guard run"#,
            ),
        ),
        // The old spelling is an alias: the value is checked, the flag named as it is now.
        (
            args(&["exec", "--cgroup", "/x", "--pids-max", "-5", "--", "true"]),
            2,
            clap_error(r#"invalid value '-5' for '--pids <N>': pids limit "-5" is negative"#),
        ),
        (
            args(&[
                "exec",
                "--cgroup",
                "/x",
                "--memory-max",
                "max",
                "--",
                "true",
            ]),
            2,
            clap_error(
                r#"invalid value 'max' for '--memory <BYTES>': memory limit "max": guard exec takes bytes (e.g. 33554432 or 32M); a percentage or "max" are for guard run"#,
            ),
        ),
        (
            args(&[
                "exec",
                "--cgroup",
                "/x",
                "--oom-score-adj",
                "5000",
                "--",
                "true",
            ]),
            2,
            clap_error(
                "invalid value '5000' for '--oom-score-adj <OOM_SCORE_ADJ>': 5000 is not in -1000..=1000",
            ),
        ),
        (
            args(&[
                "exec",
                "--cgroup",
                "/x",
                "--fsync",
                "sometimes",
                "--",
                "true",
            ]),
            2,
            clap_error(
                r#"invalid value 'sometimes' for '--fsync <POLICY>': invalid fsync policy "sometimes": expected always, never or interval=<ms>"#,
            ),
        ),
        (
            args(&["watch", "--cgroup", "x=/tmp", "--duration", "1e30"]),
            2,
            clap_error(
                r#"invalid value '1e30' for '--duration <SECONDS>': "1e30" seconds is too long"#,
            ),
        ),
        (
            args(&["watch", "--cgroup", "x=/tmp", "--duration", "-1"]),
            2,
            clap_error(
                r#"invalid value '-1' for '--duration <SECONDS>': "-1" is not a positive number of seconds"#,
            ),
        ),
    ]);
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("guard-bad-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn config_files() {
    let scratch = Scratch::new("config");
    let config = |name: &str, text: &[u8]| {
        let path = scratch.file(name, text);
        (
            run_with(&[OsString::from("--config"), path.clone().into()]),
            path.display().to_string(),
        )
    };
    let (unknown, unknown_path) = config("unknown.toml", b"memory = \"64M\"\nbogus = 1\n");
    let (negative, negative_path) = config("negative.toml", b"pids = -1\n");
    let (binary, binary_path) = config("binary.toml", b"\xff\n");
    let missing = scratch.0.join("missing.toml");
    check(vec![
        (
            unknown,
            2,
            guard_error(&format!(
                "config file {unknown_path}, line 2, column 1: unknown field `bogus`, expected one of `memory`, `pids`, `swap`, `cgroup_root`, `log_dir`, `fsync`, `max_tier`"
            )),
        ),
        (
            negative,
            2,
            guard_error(&format!(
                r#"config file {negative_path}, line 1, column 8: pids limit "-1" is negative"#
            )),
        ),
        (
            binary,
            2,
            guard_error(&format!(
                "cannot read config file {binary_path}: stream did not contain valid UTF-8"
            )),
        ),
        (
            run_with(&[OsString::from("--config"), missing.clone().into()]),
            2,
            guard_error(&format!(
                "cannot read config file {}: No such file or directory (os error 2)",
                missing.display()
            )),
        ),
    ]);
}

#[test]
fn cgroup_paths() {
    let mount = match Hierarchy::find() {
        Ok(hierarchy) => hierarchy.mount,
        Err(error) => {
            eprintln!("SKIP cgroup_paths: {error}");
            return;
        }
    };
    let shown = mount.display();
    let missing = mount.join("guard-bad-input-no-such-cgroup");
    let file = mount.join("cgroup.procs");
    check(vec![
        (
            args(&["watch", "--cgroup", "/tmp"]),
            1,
            guard_error(&format!(
                "watching tmp at /tmp: /tmp is not a cgroup directory under the cgroup2 mount {shown}"
            )),
        ),
        (
            args(&["watch", "--cgroup", "p=/proc"]),
            1,
            guard_error(&format!(
                "watching p at /proc: /proc is not a cgroup directory under the cgroup2 mount {shown}"
            )),
        ),
        (
            vec!["watch".into(), "--cgroup".into(), missing.clone().into()],
            1,
            guard_error(&format!(
                "watching guard-bad-input-no-such-cgroup at {0}: cgroup directory {0} does not exist",
                missing.display()
            )),
        ),
        (
            vec!["watch".into(), "--cgroup".into(), file.clone().into()],
            1,
            guard_error(&format!(
                "watching cgroup.procs at {0}: {0} is not a directory: a cgroup is a directory under the cgroup2 mount {shown}",
                file.display()
            )),
        ),
        (
            args(&["exec", "--cgroup", "/tmp/guard-bad-input-job", "--", "true"]),
            1,
            guard_error(&format!(
                "--cgroup /tmp/guard-bad-input-job: /tmp is not a cgroup directory under the cgroup2 mount {shown}"
            )),
        ),
    ]);
}

fn write_log(dir: &Path) -> PathBuf {
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("bad-input-cli".to_string()),
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(dir, options, &StartInfo::new(0, json!(null))).unwrap();
    writer.append("fork", Some("c1"), &json!({"i": 1})).unwrap();
    writer.close().unwrap();
    dir.join("guard-000000.jsonl")
}

#[test]
fn damaged_logs() {
    let scratch = Scratch::new("logs");
    let altered = scratch.0.join("altered");
    let file = write_log(&altered);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"i\":1", "\"i\":2", 1)).unwrap();
    let outcome = guard(&[
        "log".into(),
        "--dir".into(),
        altered.clone().into(),
        "verify".into(),
    ]);
    assert_eq!(
        (
            outcome.code,
            outcome.stdout.as_str(),
            outcome.stderr.as_str()
        ),
        (
            1,
            format!(
                "FAILED: {}:2: line bytes do not match its hash field: the line was altered\n\
                 1 file(s), 1 complete record(s), seq 0..=0 verified before the first defect\n",
                file.display()
            )
            .as_str(),
            ""
        )
    );

    let torn = scratch.0.join("torn");
    let file = write_log(&torn);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 30]).unwrap();
    let outcome = guard(&[
        "log".into(),
        "--dir".into(),
        torn.clone().into(),
        "verify".into(),
    ]);
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    assert_eq!(outcome.code, 3, "{}", outcome.stdout);
    assert_eq!(
        outcome.stdout.lines().next().unwrap(),
        format!(
            "TORN TAIL: {}:3: torn final line: {} bytes without a newline (an interrupted append); `guard log verify --repair` removes it",
            file.display(),
            bytes.len() - 30 - last_line
        )
    );
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);

    // A guard killed mid-session: every record verifies, but no stop ends the session.
    let died = scratch.0.join("died");
    write_log(&died);
    let mut writer = guard::forensic::LogWriter::create(
        &died,
        guard::forensic::LogOptions {
            boot_id: Some("b".into()),
            ..Default::default()
        },
        &serde_json::json!({}),
    )
    .unwrap();
    writer
        .append("oom_kill", Some("c"), &serde_json::json!({"i": 9}))
        .unwrap();
    drop(writer);
    let verify = |json: bool| {
        let mut args = vec![
            "log".into(),
            "--dir".into(),
            died.clone().into(),
            "verify".into(),
        ];
        if json {
            args.push("--json".into());
        }
        guard(&args)
    };
    let outcome = verify(false);
    assert_eq!(
        (outcome.code, outcome.stdout.lines().next()),
        (
            4,
            Some(
                "ENDED ABRUPTLY: the last session (from seq 3) ended without a stop after seq 4: \
                 records after it may be missing"
            )
        ),
        "{}",
        outcome.stdout
    );
    let outcome = verify(true);
    let json: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
    assert_eq!(outcome.code, 4);
    assert_eq!(json["verdict"], "ended_abruptly", "{json}");
    assert_eq!(json["last_session"]["last_seq"], 4, "{json}");
    // Closed cleanly by a later session: ok, the earlier death noted.
    guard::forensic::LogWriter::create(
        &died,
        guard::forensic::LogOptions {
            boot_id: Some("b".into()),
            ..Default::default()
        },
        &serde_json::json!({}),
    )
    .unwrap()
    .close()
    .unwrap();
    let outcome = verify(false);
    assert_eq!(outcome.code, 0, "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .starts_with("note: 1 earlier session(s) ended without a stop"),
        "{}",
        outcome.stdout
    );
    assert!(verify(true).stdout.contains("\"verdict\":\"ok\""));

    let not_a_dir = scratch.file("not-a-dir", b"x");
    let missing = scratch.0.join("missing");
    check(vec![
        (
            vec![
                "log".into(),
                "--dir".into(),
                missing.clone().into(),
                "verify".into(),
            ],
            1,
            guard_error(&format!(
                "cannot read log directory {}: No such file or directory (os error 2)",
                missing.display()
            )),
        ),
        (
            vec![
                "log".into(),
                "--dir".into(),
                not_a_dir.clone().into(),
                "stats".into(),
            ],
            1,
            guard_error(&format!(
                "{} is not a directory: pass the log directory (the one holding guard-NNNNNN.jsonl)",
                not_a_dir.display()
            )),
        ),
        (
            vec![
                "log".into(),
                "--dir".into(),
                altered.into(),
                "show".into(),
                "--since".into(),
                "yesterday".into(),
            ],
            1,
            guard_error(
                r#"invalid duration "yesterday": expected a number (examples: 30s, 10m, 1h30m, 2d, 500ms)"#,
            ),
        ),
    ]);
}

/// A reader that goes away is not an error: `guard probe --json | head -c 1` ends quietly,
/// never with a panic (`println!` panics on a closed pipe). Both forms of output are tried.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    for probe_args in [&["probe", "--json"][..], &["probe"]] {
        let mut child = Command::new(GUARD)
            .args(probe_args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before guard writes a byte.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{probe_args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{probe_args:?}: {stderr}");
    }
}

#[test]
fn the_exec_helper_run_by_hand_says_it_is_internal() {
    let outcome = guard(&args(&["exec-helper"]));
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert_eq!(
        outcome.stderr,
        "the exec helper is internal: guard's runtime starts it with a request on descriptor \
         3, which is not a socket here\n"
    );
    assert!(
        !guard(&args(&["--help"])).stdout.contains("exec-helper"),
        "the helper is hidden from --help"
    );
}

#[test]
fn stream_options() {
    let exec = |extra: &[&str]| {
        let mut all = args(&["exec", "--cgroup", "/nonexistent-cgroup"]);
        all.extend(args(extra));
        all.extend(args(&["--", "true"]));
        all
    };
    check(vec![
        (
            exec(&["--stream", "tcp:1"]),
            2,
            clap_error(
                r#"invalid value 'tcp:1' for '--stream <ADDR>': stream address "tcp:1": expected unix:PATH, vsock:PORT or vsock:CID:PORT"#,
            ),
        ),
        (
            exec(&["--stream", "vsock:x"]),
            2,
            clap_error(
                r#"invalid value 'vsock:x' for '--stream <ADDR>': stream address "vsock:x": the port "x" is not a number"#,
            ),
        ),
        (
            exec(&[
                "--log",
                "/tmp/l",
                "--stream",
                "vsock:1",
                "--stream-name",
                "../x",
            ]),
            2,
            clap_error(
                r#"invalid value '../x' for '--stream-name <NAME>': guest name "../x": 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"#,
            ),
        ),
        (
            args(&["collect", "--listen", "unix:", "--dir", "/tmp/x"]),
            2,
            clap_error(
                r#"invalid value 'unix:' for '--listen <ADDR>': stream address "unix:": unix: needs a socket path"#,
            ),
        ),
    ]);
}

#[test]
fn metrics_and_timeline_options() {
    check(vec![
        (
            args(&[
                "exec",
                "--cgroup",
                "/nonexistent-cgroup",
                "--metrics",
                "localhost:9464",
                "--",
                "true",
            ]),
            2,
            clap_error(
                r#"invalid value 'localhost:9464' for '--metrics <ADDR>': metrics address "localhost:9464": expected HOST:PORT with a numeric address (127.0.0.1:9464, [::1]:9464) or unix:PATH"#,
            ),
        ),
        (
            args(&["metrics", "--log", "/nonexistent-log"]),
            1,
            guard_error(
                "the forensic log in /nonexistent-log: cannot read log directory /nonexistent-log: No such file or directory (os error 2)",
            ),
        ),
        (
            args(&["log", "timeline", "/nonexistent-log", "--out", "x.svg"]),
            1,
            guard_error(
                "the forensic log in /nonexistent-log: cannot read log directory /nonexistent-log: No such file or directory (os error 2)",
            ),
        ),
    ]);
}

//! The bad-input matrix, library level: every case with the exact error text it must give
//! (docs/ERRORS.md is the same matrix for people). Command-line cases are in bad_input_cli.rs;
//! the ones that need root (a full or read-only filesystem under the log) are in
//! tests/tests/host/bad_input.rs.
//!
//! Each table is checked whole, so a failure lists every case that changed, not the first.
use std::path::{Path, PathBuf};

use guard::{
    ContainerId, Guard, GuardOptions, Tier,
    cgroup::Hierarchy,
    config::Config,
    forensic::{
        self, FsyncPolicy, LogOptions, LogReader, LogWriter, StartInfo,
        serde_json::{Value, json},
    },
    internals::{read_offsets, tracepoints},
    limits::{
        BudgetRequest, LimitRequest, MemInfo, MemorySetting, PidsSetting, SwapSetting, guest_budget,
    },
};

/// Collects mismatches so one run shows them all.
#[derive(Default)]
struct Matrix(Vec<String>);

impl Matrix {
    fn expect(&mut self, case: &str, got: Result<impl std::fmt::Debug, String>, want: &str) {
        match got {
            Err(got) if got == want => {}
            Err(got) => self
                .0
                .push(format!("{case}:\n    got  {got:?}\n    want {want:?}")),
            Ok(value) => self.0.push(format!(
                "{case}: accepted as {value:?}, want error {want:?}"
            )),
        }
    }

    fn done(self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }
}

fn err<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("guard-bad-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn container_ids() {
    let long = "x".repeat(300);
    let clipped = "x".repeat(128);
    let cases: &[(&[u8], String)] = &[
        (b"", "container id is empty".into()),
        (
            b"..",
            r#"container id ".." contains only dots, which could escape its cgroup path"#.into(),
        ),
        (
            b".",
            r#"container id "." contains only dots, which could escape its cgroup path"#.into(),
        ),
        (
            b"/x",
            r#"container id "/x" contains a '/', which could escape its cgroup path"#.into(),
        ),
        (
            b"../etc",
            r#"container id "../etc" contains a '/', which could escape its cgroup path"#.into(),
        ),
        (
            b"a\0b",
            r#"container id "a\0b" contains a NUL byte, which could escape its cgroup path"#
                .into(),
        ),
        (
            b"a\nb",
            r#"container id "a\nb" contains a control character, which could escape its cgroup path"#
                .into(),
        ),
        (
            b"a b",
            r#"container id "a b" contains whitespace, which could escape its cgroup path"#.into(),
        ),
        (
            long.as_bytes(),
            format!(
                "container id \"{clipped}…\" is 300 bytes long; at most 128 are allowed"
            ),
        ),
        (
            b"web\xff\xfe1",
            "container id \"web\u{FFFD}\u{FFFD}1\" is not valid UTF-8".into(),
        ),
    ];
    let mut matrix = Matrix::default();
    for (id, want) in cases {
        let case = format!("id {:?}", String::from_utf8_lossy(id));
        matrix.expect(&case, err(ContainerId::from_bytes(id)), want);
    }
    matrix.done();
}

/// A 128 MiB guest with 100 000 kB available.
fn guest() -> MemInfo {
    MemInfo::parse_file(
        Path::new("meminfo"),
        "MemTotal: 131072 kB\nMemAvailable: 100000 kB\n",
    )
    .unwrap()
}

#[test]
fn limits() {
    let mut matrix = Matrix::default();
    let memory = [
        (
            "0",
            r#"memory limit "0" is 0: a container cannot run without memory"#,
        ),
        (
            "0M",
            r#"memory limit "0M" is 0: a container cannot run without memory"#,
        ),
        ("-64M", r#"memory limit "-64M" is negative"#),
        (
            "64X",
            r#"memory limit "64X" is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a percentage of available memory (e.g. 50%) or "max""#,
        ),
        (
            "",
            r#"memory limit "" is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a percentage of available memory (e.g. 50%) or "max""#,
        ),
        (
            "99999999999T",
            r#"memory limit "99999999999T" is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a percentage of available memory (e.g. 50%) or "max""#,
        ),
        (
            "150%",
            r#"memory limit "150%": a percentage must be above 0% and at most 100%"#,
        ),
        (
            "nan%",
            r#"memory limit "nan%": a percentage must be above 0% and at most 100%"#,
        ),
    ];
    for (text, want) in memory {
        matrix.expect(
            &format!("--memory {text}"),
            err(text.parse::<MemorySetting>()),
            want,
        );
    }
    let pids = [
        (
            "0",
            r#"pids limit "0" is 0: the container's init could not even exist"#,
        ),
        ("-1", r#"pids limit "-1" is negative"#),
        (
            "4194305",
            r#"pids limit "4194305" is absurd: above the kernel's pid ceiling 4194304"#,
        ),
        (
            "1e3",
            r#"pids limit "1e3" is not understood: give a whole number between 1 and 4194304, or "max""#,
        ),
    ];
    for (text, want) in pids {
        matrix.expect(
            &format!("--pids {text}"),
            err(text.parse::<PidsSetting>()),
            want,
        );
    }
    let swap = [
        ("-1", r#"swap limit "-1" is negative"#),
        (
            "1Q",
            r#"swap limit "1Q" is not understood: give bytes (0 for none) or "max""#,
        ),
    ];
    for (text, want) in swap {
        matrix.expect(
            &format!("--swap {text}"),
            err(text.parse::<SwapSetting>()),
            want,
        );
    }
    // Valid syntax, refused against the VM's memory.
    let resolved = [
        (
            "200M",
            r#"memory limit "209715200" (209715200 bytes) is above the VM's memory (134217728 bytes of MemTotal)"#,
        ),
        (
            "1M",
            r#"memory limit "1048576" (1048576 bytes) is below the floor of 4194304 bytes"#,
        ),
        (
            "100",
            r#"memory limit "100" is 0: a container cannot run without memory"#,
        ),
        (
            "1%",
            r#"memory limit "1%" (1024000 bytes) is below the floor of 4194304 bytes"#,
        ),
    ];
    for (text, want) in resolved {
        let request = LimitRequest {
            memory: text.parse().unwrap(),
            ..LimitRequest::default()
        };
        matrix.expect(
            &format!("resolve --memory {text}"),
            err(request.resolve(&guest())),
            want,
        );
    }
    matrix.done();
}

/// The guest budget: asked for more than the guest has, a guest too small for one, and
/// explicit container limits above it (defaults are clamped instead, and say so).
#[test]
fn guest_budget_and_limits_above_it() {
    let mut matrix = Matrix::default();
    let agent_reserve = 10 << 20;
    let mib = |n: u64| n << 20;
    let budgets = [
        (
            "a memory budget of 200 MiB",
            BudgetRequest {
                memory: Some(mib(200)),
                ..BudgetRequest::default()
            },
            guest(),
            "guest budget of 209715200 bytes is more than the guest can give: 70942720 bytes \
             (MemAvailable 102400000 minus the kernel reserve 20971520 and the agent reserve \
             10485760)",
        ),
        (
            "a 40 MiB guest",
            BudgetRequest::default(),
            MemInfo::parse_file(
                Path::new("meminfo"),
                "MemTotal: 40960 kB\nMemAvailable: 30000 kB\n",
            )
            .unwrap(),
            "the guest is too small for a budget: 0 bytes remain of MemAvailable 30720000 after \
             the kernel reserve 20971520 and the agent reserve 10485760, below the floor of 10485760 \
             (the budget must hold libcontainer's exec helpers beside the containers): a bigger \
             guest, or no budget",
        ),
        (
            "a pids budget of 0",
            BudgetRequest {
                pids: Some(0),
                ..BudgetRequest::default()
            },
            guest(),
            r#"pids limit "0" is 0: the container's init could not even exist"#,
        ),
    ];
    for (case, request, meminfo, want) in budgets {
        matrix.expect(
            case,
            err(guest_budget(&meminfo, agent_reserve, &request)),
            want,
        );
    }
    let budget = guest_budget(&guest(), agent_reserve, &BudgetRequest::default()).unwrap();
    let above = [
        (
            "--memory 100M",
            LimitRequest {
                memory: "100M".parse().unwrap(),
                ..LimitRequest::default()
            },
            "memory limit of 104857600 bytes is above the guest budget of 70942720 bytes that \
             every container shares: ask for less, or leave the limit at its default (clamped to \
             the budget)",
        ),
        (
            "--pids-max 100000",
            LimitRequest {
                pids: "100000".parse().unwrap(),
                ..LimitRequest::default()
            },
            "pids limit 100000 is above the guest budget of 2165 tasks that every container \
             shares: ask for less, or leave the limit at its default (clamped to the budget)",
        ),
    ];
    for (case, request, want) in above {
        matrix.expect(case, err(request.resolve_within(&guest(), &budget)), want);
    }
    matrix.done();
}

#[test]
fn meminfo() {
    let mut matrix = Matrix::default();
    let cases = [
        ("", "meminfo has no MemTotal line"),
        ("MemAvailable: 1000 kB\n", "meminfo has no MemTotal line"),
        ("MemTotal: 131072 kB\n", "meminfo has no MemAvailable line"),
        (
            "MemTotal: lots kB\n",
            r#"meminfo, line 1: MemTotal is not a number of kB: "lots kB""#,
        ),
        (
            "MemTotal: 131072 kB\nMemAvailable: -5 kB\n",
            r#"meminfo, line 2: MemAvailable is not a number of kB: "-5 kB""#,
        ),
        (
            "MemTotal: 128 MB\n",
            r#"meminfo, line 1: MemTotal is not a number of kB: "128 MB""#,
        ),
        (
            "MemTotal:\n",
            r#"meminfo, line 1: MemTotal is not a number of kB: """#,
        ),
        (
            "MemTotal: 18446744073709551615 kB\n",
            "meminfo, line 1: MemTotal of 18446744073709551615 kB does not fit in 64 bits as bytes",
        ),
        (
            "MemTotal: 131072 kB\nMemAvailable: 99999999999999999999999 kB\n",
            "meminfo, line 2: MemAvailable of 99999999999999999999999 kB does not fit in 64 bits as bytes",
        ),
        (
            "MemTotal: 0 kB\nMemAvailable: 0 kB\n",
            "meminfo: MemTotal is 0 kB",
        ),
        (
            "MemTotal: 131072 kB\nMemAvailable: 100 kB\nSwapTotal: x\n",
            r#"meminfo, line 3: SwapTotal is not a number of kB: "x""#,
        ),
    ];
    for (text, want) in cases {
        matrix.expect(
            &format!("meminfo {text:?}"),
            err(MemInfo::parse_file(Path::new("meminfo"), text)),
            want,
        );
    }
    // The largest value that fits is accepted (nothing wraps), and 90% of it stays below it.
    let huge = format!("MemTotal: {0} kB\nMemAvailable: {0} kB\n", u64::MAX / 1024);
    let info = MemInfo::parse_file(Path::new("meminfo"), &huge).unwrap();
    let limits = LimitRequest::default().resolve(&info).unwrap();
    assert!(limits.memory_max.unwrap() < info.available);
    matrix.expect(
        "missing meminfo file",
        err(MemInfo::read_from(Path::new("/nonexistent/meminfo"))),
        "reading /nonexistent/meminfo: No such file or directory (os error 2)",
    );
    matrix.done();
}

/// The 6.12 `format` files laid out as tracefs does, in a scratch directory.
fn fake_tracefs(tag: &str) -> Scratch {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format/6.12");
    let root = Scratch::new(&format!("tracefs-{tag}"));
    for (category, name) in tracepoints() {
        let dir = root.0.join("events").join(category).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixtures.join(format!("{name}.format")), dir.join("format")).unwrap();
    }
    root
}

fn format_path(root: &Path, category: &str, name: &str) -> PathBuf {
    root.join("events").join(category).join(name).join("format")
}

#[test]
fn tracepoint_formats() {
    const CHILD_PID: &str = "\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;";
    const RET: &str = "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;";
    // (case, category, tracepoint, edit of its format file, error)
    type Edit = fn(&str) -> Vec<u8>;
    let cases: &[(&str, &str, &str, Edit, &str)] = &[
        (
            "missing field",
            "sched",
            "sched_process_fork",
            |text| text.replace(CHILD_PID, "").into_bytes(),
            "tracepoint sched:sched_process_fork has no field child_pid",
        ),
        (
            "odd size",
            "syscalls",
            "sys_exit_clone",
            |text| {
                text.replace(RET, &RET.replace("size:8", "size:4"))
                    .into_bytes()
            },
            "tracepoint syscalls:sys_exit_clone field ret is 4 bytes, expected 8",
        ),
        (
            "unparseable size",
            "sched",
            "sched_process_fork",
            |text| {
                text.replace(CHILD_PID, &CHILD_PID.replace("size:4", "size:four"))
                    .into_bytes()
            },
            "tracepoint format sched:sched_process_fork, line 12: bad size: \"\\tfield:pid_t child_pid;\\toffset:44;\\tsize:four;\\tsigned:1;\"",
        ),
        (
            "offset beyond 64 KiB",
            "sched",
            "sched_process_fork",
            |text| {
                text.replace(CHILD_PID, &CHILD_PID.replace("offset:44", "offset:70000"))
                    .into_bytes()
            },
            "tracepoint layout of sched:sched_process_fork field child_pid: offset beyond 64 KiB",
        ),
        (
            "no format section",
            "oom",
            "mark_victim",
            |_| b"name: mark_victim\nID: 1\n".to_vec(),
            "tracepoint format oom:mark_victim has no `format:` section",
        ),
        (
            "empty file",
            "vmscan",
            "mm_vmscan_memcg_reclaim_end",
            |_| Vec::new(),
            "tracepoint format vmscan:mm_vmscan_memcg_reclaim_end has no `format:` section",
        ),
        (
            "layouts that disagree",
            "syscalls",
            "sys_exit_fork",
            |text| {
                text.replace(RET, &RET.replace("offset:16", "offset:24"))
                    .into_bytes()
            },
            "tracepoint layout of syscalls:sys_exit_fork: its ret/__syscall_nr offsets differ from sys_exit_clone's",
        ),
    ];
    let mut matrix = Matrix::default();
    for (case, category, name, edit, want) in cases {
        let root = fake_tracefs("edit");
        let path = format_path(&root.0, category, name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(&text)).unwrap();
        matrix.expect(case, err(read_offsets(&root.0)), want);
    }
    // A missing file and one that is not text name the file.
    let root = fake_tracefs("files");
    let path = format_path(&root.0, "vmscan", "mm_vmscan_memcg_reclaim_end");
    std::fs::remove_file(&path).unwrap();
    matrix.expect(
        "missing format file",
        err(read_offsets(&root.0)),
        &format!(
            "reading tracepoint format {}: No such file or directory (os error 2)",
            path.display()
        ),
    );
    std::fs::write(&path, b"name: x\n\xff\xfe\n").unwrap();
    matrix.expect(
        "format file not UTF-8",
        err(read_offsets(&root.0)),
        &format!(
            "reading tracepoint format {}: stream did not contain valid UTF-8",
            path.display()
        ),
    );
    matrix.done();
}

#[test]
fn cgroup_paths_without_bpf() {
    let mut matrix = Matrix::default();
    // Not on cgroup2 at all, whatever the mount says.
    let proc = Hierarchy {
        mount: PathBuf::from("/proc"),
    };
    matrix.expect(
        "/proc as a cgroup",
        err(proc.identify(Path::new("/proc/self"))),
        "/proc/self is not on a cgroup2 filesystem (it is on proc)",
    );
    let elsewhere = Hierarchy {
        mount: PathBuf::from("/nonexistent-cgroup-root"),
    };
    matrix.expect(
        "outside the mount",
        err(elsewhere.identify(Path::new("/tmp"))),
        "/tmp is not a cgroup directory under the cgroup2 mount /nonexistent-cgroup-root",
    );
    matrix.expect(
        "'..' under the mount",
        err(elsewhere.identify(Path::new("/nonexistent-cgroup-root/a/../b"))),
        "/nonexistent-cgroup-root/a/../b is not a cgroup directory under the cgroup2 mount /nonexistent-cgroup-root",
    );
    // A cgroup v1 hierarchy (hybrid hosts): has cgroup.procs, but is not cgroup2.
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("cgroup.procs").exists() {
        let v1_hierarchy = Hierarchy {
            mount: v1.to_path_buf(),
        };
        matrix.expect(
            "a cgroup v1 directory",
            err(v1_hierarchy.identify(v1)),
            "/sys/fs/cgroup/memory is not on a cgroup2 filesystem (it is on cgroup v1)",
        );
    }
    // A limit written into a cgroup whose parent does not pass the controller on (the files
    // are simply absent): a fake tree, as cgroupfs would look.
    let tree = Scratch::new("controller-off");
    let child = tree.0.join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(tree.0.join("cgroup.subtree_control"), "pids\n").unwrap();
    std::fs::write(tree.0.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    matrix.expect(
        "memory.max without +memory in the parent",
        err(guard::cgroup::files::write(
            &child,
            "memory.max",
            "67108864",
        )),
        &format!(
            "writing 67108864 to {child}/memory.max: the file does not exist because the parent \
             cgroup {parent} does not enable the memory controller for its children (its \
             cgroup.subtree_control holds \"pids\", its cgroup.controllers \"cpu memory pids\"): \
             where the controller is available, enable it there (echo +memory > \
             {parent}/cgroup.subtree_control, with no process of its own in {parent}) or choose \
             another parent",
            child = child.display(),
            parent = tree.0.display()
        ),
    );
    // With the controller passed on, a missing file is only missing (no swap accounting).
    matrix.expect(
        "pids.max with +pids in the parent (the file is just missing)",
        err(guard::cgroup::files::write(&child, "pids.max", "5"))
            .map_err(|error| error.split(": ").last().unwrap_or_default().to_string()),
        "No such file or directory (os error 2)",
    );
    matrix.done();
}

/// A required tier the guard cannot reach is refused at start, naming why (an agent must not
/// run blind without knowing it).
#[tokio::test]
async fn a_required_tier_above_what_guard_can_reach_is_refused() {
    let kernel = guard::CapabilityReport::probe();
    let mut options = GuardOptions::default();
    options.max_tier = Tier::CgroupFilesOnly;
    options.min_tier = Tier::Tracepoints;
    let result = Guard::start(options).await;
    let Err(error) = result else {
        panic!("a guard capped at tier 0 started although tier 2 was required");
    };
    let message = error.to_string();
    let want = if kernel.tier > Tier::CgroupFilesOnly {
        format!(
            "guard would run at tier 0 (cgroup event files only) (max_tier caps it; the kernel \
             allows {}), below the required tier 2 (tracepoints): raise max_tier or lower \
             min_tier",
            kernel.tier
        )
    } else {
        let why = if kernel.privilege.permits_bpf() {
            format!("all that kernel {} allows", kernel.kernel_release)
        } else {
            "this process may not use BPF".to_string()
        };
        format!(
            "guard would run at tier 0 (cgroup event files only) ({why}), below the required \
             tier 2 (tracepoints): {}",
            kernel.blockers(Tier::Tracepoints).join("; ")
        )
    };
    assert_eq!(message, want);
}

/// `Guard::watch` itself, at tier 0 (no BPF is loaded, so no root is needed for this).
#[tokio::test]
async fn guard_watch_refuses_what_is_not_a_cgroup() {
    let Ok(hierarchy) = Hierarchy::find() else {
        eprintln!("SKIP guard_watch_refuses_what_is_not_a_cgroup: no cgroup2 mount");
        return;
    };
    let mount = hierarchy.mount.display().to_string();
    let mut options = GuardOptions::default();
    options.max_tier = Tier::CgroupFilesOnly;
    let guard = Guard::start(options).await.unwrap();
    let missing = hierarchy.mount.join("guard-bad-input-no-such-cgroup");
    let file = hierarchy.mount.join("cgroup.procs");
    let cases = [
        (
            "web",
            PathBuf::from("/tmp"),
            format!("/tmp is not a cgroup directory under the cgroup2 mount {mount}"),
        ),
        (
            "web",
            PathBuf::from("/proc"),
            format!("/proc is not a cgroup directory under the cgroup2 mount {mount}"),
        ),
        (
            "web",
            PathBuf::from("relative/web"),
            format!("relative/web is not a cgroup directory under the cgroup2 mount {mount}"),
        ),
        (
            "web",
            missing.clone(),
            format!("cgroup directory {} does not exist", missing.display()),
        ),
        (
            "web",
            file.clone(),
            format!(
                "{} is not a directory: a cgroup is a directory under the cgroup2 mount {mount}",
                file.display()
            ),
        ),
        (
            "..",
            hierarchy.mount.clone(),
            r#"container id ".." contains only dots, which could escape its cgroup path"#
                .to_string(),
        ),
    ];
    let mut matrix = Matrix::default();
    for (id, path, want) in &cases {
        matrix.expect(
            &format!("watch {id} {}", path.display()),
            err(guard.watch(id, path)),
            want,
        );
    }
    matrix.done();
}

fn log_options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("bad-input".to_string()),
        ..LogOptions::default()
    }
}

fn start_info() -> StartInfo {
    StartInfo::new(0, Value::Null)
}

#[test]
fn log_paths() {
    let scratch = Scratch::new("logpaths");
    let file = scratch.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let mut matrix = Matrix::default();
    let under_file = file.join("log");
    matrix.expect(
        "log dir under a file",
        err(LogWriter::create(&under_file, log_options(), &start_info()).map(|_| ())),
        &format!(
            "cannot create log directory {}: Not a directory (os error 20)",
            under_file.display()
        ),
    );
    matrix.expect(
        "log dir is a file",
        err(LogWriter::create(&file, log_options(), &start_info()).map(|_| ())),
        &format!(
            "{} is not a directory: pass the log directory (the one holding guard-NNNNNN.jsonl)",
            file.display()
        ),
    );
    let missing = scratch.0.join("missing");
    matrix.expect(
        "verify a missing dir",
        err(forensic::verify(&missing)),
        &format!(
            "cannot read log directory {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    matrix.done();
}

/// A log of five lines: start, three events, stop.
fn small_log(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let mut writer = LogWriter::create(dir, log_options(), &start_info()).unwrap();
    for i in 1..=3 {
        writer
            .append("fork", Some("c1"), &json!({ "i": i }))
            .unwrap();
    }
    writer.close().unwrap();
    let file = dir.join("guard-000000.jsonl");
    let lines = std::fs::read(&file)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    (file, lines)
}

/// The first problem `verify` reports, or its torn tail.
fn verify_text(dir: &Path) -> Result<(), String> {
    let report = forensic::verify(dir).map_err(|e| e.to_string())?;
    if let Some(problem) = report.problem {
        return Err(problem.to_string());
    }
    match report.torn_tail {
        Some(torn) => Err(torn.to_string()),
        None => Ok(()),
    }
}

#[test]
fn corrupt_and_truncated_logs() {
    type Edit = fn(&mut Vec<Vec<u8>>);
    // (case, edit of the lines, verify's first finding at file:line)
    let cases: &[(&str, Edit, &str)] = &[
        (
            "a byte changed",
            |lines| {
                let line = String::from_utf8(lines[1].clone()).unwrap();
                lines[1] = line.replace("\"i\":1", "\"i\":7").into_bytes();
            },
            ":2: line bytes do not match its hash field: the line was altered",
        ),
        (
            "a line deleted",
            |lines| {
                lines.remove(2);
            },
            ":3: seq 3, expected 2: 1 record(s) missing, or records reordered, before this line",
        ),
        (
            "lines swapped",
            |lines| lines.swap(1, 2),
            ":2: seq 2, expected 1: 1 record(s) missing, or records reordered, before this line",
        ),
        (
            "a line duplicated",
            |lines| {
                let copy = lines[1].clone();
                lines.insert(2, copy);
            },
            ":3: seq 1, expected 2: records reordered or duplicated",
        ),
        (
            "garbage line",
            |lines| lines.insert(1, b"hello\n".to_vec()),
            ":2: not valid JSON: expected value at line 1 column 1",
        ),
        (
            "not UTF-8",
            |lines| lines.insert(1, b"\"\xff\"\n".to_vec()),
            ":2: not valid JSON: not UTF-8: invalid utf-8 sequence of 1 bytes from index 1",
        ),
        (
            "empty line",
            |lines| lines.insert(1, b"\n".to_vec()),
            ":2: empty line",
        ),
        (
            "JSON but not a record",
            |lines| lines.insert(1, b"{\"seq\":1}\n".to_vec()),
            ":2: not a log record: missing field `boot_id` at line 1 column 9",
        ),
        (
            "first record is not start",
            |lines| {
                lines.remove(0);
            },
            ":1: the log must begin with a start record, found \"fork\"",
        ),
        (
            "truncated mid-line",
            |lines| {
                let last = lines.last_mut().unwrap();
                last.truncate(40);
            },
            ":5: torn final line: 40 bytes without a newline (an interrupted append); `guard log verify --repair` removes it",
        ),
    ];
    let mut matrix = Matrix::default();
    for (case, edit, want) in cases {
        let scratch = Scratch::new("corrupt");
        let (file, mut lines) = small_log(&scratch.0);
        edit(&mut lines);
        std::fs::write(&file, lines.concat()).unwrap();
        matrix.expect(
            case,
            verify_text(&scratch.0),
            &format!("{}{want}", file.display()),
        );
    }

    // Readers skip what they cannot read, saying where; a writer refuses to continue it.
    let scratch = Scratch::new("reader");
    let (file, mut lines) = small_log(&scratch.0);
    lines.insert(1, b"hello\n".to_vec());
    lines.last_mut().unwrap().truncate(40);
    std::fs::write(&file, lines.concat()).unwrap();
    let problems: Vec<String> = LogReader::open(&scratch.0)
        .unwrap()
        .filter_map(|item| item.err().map(|e| e.to_string()))
        .collect();
    let shown = file.display();
    assert_eq!(
        problems,
        [
            format!("{shown}:2: unreadable record: expected value at line 1 column 1"),
            format!("{shown}:6: torn final line (40 bytes without a newline)"),
        ]
    );
    matrix.expect(
        "reopen with a torn tail",
        err(LogWriter::create(&scratch.0, log_options(), &start_info()).map(|_| ())),
        &format!(
            "{shown}:6: torn final line (40 bytes without a newline, from an interrupted write); refusing to append: run `guard log verify --repair` or open with repair_torn_tail"
        ),
    );
    lines.pop();
    lines.push(b"hello\n".to_vec());
    std::fs::write(&file, lines.concat()).unwrap();
    matrix.expect(
        "reopen after a garbage last line",
        err(LogWriter::create(&scratch.0, log_options(), &start_info()).map(|_| ())),
        &format!(
            "{shown}:6: cannot resume the log: last record is not readable: expected value at line 1 column 1; run `guard log verify`"
        ),
    );
    matrix.done();
}

#[test]
fn logs_missing_files() {
    let mut matrix = Matrix::default();
    let empty = Scratch::new("nofiles");
    matrix.expect(
        "no files",
        verify_text(&empty.0),
        &format!("{}:0: no guard-NNNNNN.jsonl files", empty.0.display()),
    );
    // Two files: the first truncated, then missing.
    let scratch = Scratch::new("rotated");
    let options = LogOptions {
        rotate_bytes: Some(1000),
        ..log_options()
    };
    let mut writer = LogWriter::create(&scratch.0, options, &start_info()).unwrap();
    for i in 0..4 {
        writer
            .append("fork", None, &json!({ "i": i, "pad": "x".repeat(200) }))
            .unwrap();
    }
    writer.close().unwrap();
    let first = scratch.0.join("guard-000000.jsonl");
    let second = scratch.0.join("guard-000001.jsonl");
    assert!(second.exists(), "the log must have rotated");
    let bytes = std::fs::read(&first).unwrap();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    std::fs::write(&first, &bytes[..bytes.len() - 10]).unwrap();
    matrix.expect(
        "a rotated file truncated",
        verify_text(&scratch.0),
        &format!(
            "{}:{lines}: file ends with a partial line ({} bytes without a newline) but is not the newest file: truncated",
            first.display(),
            bytes.len() - 10 - bytes[..bytes.len() - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1)
        ),
    );
    // Emptied rather than truncated (found by fuzzing: it verified clean, then the writer
    // refused the log).
    std::fs::write(&first, b"").unwrap();
    matrix.expect(
        "a rotated file emptied",
        verify_text(&scratch.0),
        &format!(
            "{}:0: file holds no record but is not the newest file: it was emptied",
            first.display()
        ),
    );
    std::fs::remove_file(&first).unwrap();
    matrix.expect(
        "a rotated file missing",
        verify_text(&scratch.0),
        &format!(
            "{}:0: guard-000000.jsonl is missing (files must be numbered without gaps from 0)",
            first.display()
        ),
    );
    matrix.done();
}

#[test]
fn config_files() {
    let expected_keys =
        "expected one of `memory`, `pids`, `swap`, `cgroup_root`, `log_dir`, `fsync`, `max_tier`";
    let cases = [
        (
            "memory = \"64M\"\nbogus = 1\n",
            format!("config file agent.toml, line 2, column 1: unknown field `bogus`, {expected_keys}"),
        ),
        (
            "[limits]\nmemory = \"64M\"\n",
            format!("config file agent.toml, line 1, column 2: unknown field `limits`, {expected_keys}"),
        ),
        (
            "pids = -1\n",
            "config file agent.toml, line 1, column 8: pids limit \"-1\" is negative".to_string(),
        ),
        (
            "memory = \"0\"\n",
            "config file agent.toml, line 1, column 10: memory limit \"0\" is 0: a container cannot run without memory".to_string(),
        ),
        (
            "memory = \"64X\"\n",
            "config file agent.toml, line 1, column 10: memory limit \"64X\" is not understood: give bytes (e.g. 67108864, 64M, 1.5G), a percentage of available memory (e.g. 50%) or \"max\"".to_string(),
        ),
        (
            "swap = \"-1\"\n",
            "config file agent.toml, line 1, column 8: swap limit \"-1\" is negative".to_string(),
        ),
        (
            "pids = true\n",
            "config file agent.toml, line 1, column 8: invalid type: boolean `true`, expected a string or an integer".to_string(),
        ),
        (
            "max_tier = 4\n",
            "config file agent.toml, line 1, column 12: max_tier 4 is not a tier: give 0 (cgroup files only), 1 (kernel sources: perf and the kernel log), 2 (tracepoints) or 3 (tracepoints and kprobes)".to_string(),
        ),
        (
            "fsync = \"sometimes\"\n",
            "config file agent.toml, line 1, column 9: invalid fsync policy \"sometimes\": expected always, never or interval=<ms>".to_string(),
        ),
        (
            "cgroup_root = \"guard\"\n",
            "config file agent.toml, line 1, column 15: cgroup root \"guard\" must be an absolute path of plain components (no '.', '..', empty, control characters)".to_string(),
        ),
        (
            "memory = \"64M\"\nmemory = \"32M\"\n",
            "config file agent.toml, line 2, column 1: duplicate key `memory`".to_string(),
        ),
        (
            "memory = \n",
            "config file agent.toml, line 1, column 10: string values must be quoted, expected literal string".to_string(),
        ),
    ];
    let mut matrix = Matrix::default();
    for (text, want) in &cases {
        matrix.expect(
            &format!("config {text:?}"),
            err(Config::parse(Path::new("agent.toml"), text)),
            want,
        );
    }
    let scratch = Scratch::new("config");
    let missing = scratch.0.join("missing.toml");
    matrix.expect(
        "missing config file",
        err(Config::load(&missing)),
        &format!(
            "cannot read config file {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    let binary = scratch.0.join("binary.toml");
    std::fs::write(&binary, b"memory = \"\xff\"\n").unwrap();
    matrix.expect(
        "config file not UTF-8",
        err(Config::load(&binary)),
        &format!(
            "cannot read config file {}: stream did not contain valid UTF-8",
            binary.display()
        ),
    );
    matrix.expect(
        "endless config file",
        err(Config::load(Path::new("/dev/zero"))),
        "config file /dev/zero is larger than 1048576 bytes",
    );
    matrix.done();
}

/// A bundle's seccomp profile that cannot be enforced as written, or that would let a tenant
/// past the guard's rule (no AF_VSOCK sockets, no io_uring), refuses the container.
#[test]
fn seccomp_profiles() {
    use guard::spec::{SpecOptions, apply, for_rootfs};
    let mut matrix = Matrix::default();
    let apply_profile = |profile: &str| {
        let mut spec = for_rootfs(Path::new("/srv/rootfs"), &["sh".to_string()], &[]).unwrap();
        let profile = serde_json::from_str(profile).unwrap();
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_seccomp(Some(profile));
        err(apply(
            &mut spec,
            "web",
            &guard::limits::Limits {
                memory_max: None,
                swap_max: None,
                pids_max: None,
            },
            &SpecOptions::default(),
        ))
    };
    let cases = [
        (
            "a refusal libseccomp cannot name",
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "the bundle's seccomp rule 0 (SCMP_ACT_ERRNO) names \"no_such_call\", a syscall \
             libseccomp does not know: the restriction could not be enforced",
        ),
        (
            "an allowance that admits AF_VSOCK",
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                              "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_GE"}]}]}"#,
            "the bundle's seccomp rule 1 (SCMP_ACT_ALLOW socket when arg0 SCMP_CMP_GE 2) lets \
             AF_VSOCK sockets through, which guard denies to every container: narrow it to \
             exclude domain 40",
        ),
        (
            "an argument past the sixth",
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
            "the bundle's seccomp rule 0 compares argument 6: syscalls have six (0-5)",
        ),
        (
            "notify as the default",
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
            "the bundle's seccomp profile cannot be enforced: SCMP_ACT_NOTIFY as the default \
             action",
        ),
        (
            "notify for write",
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp.sock",
                "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "the bundle's seccomp profile cannot be enforced: SCMP_ACT_NOTIFY for write, which \
             the notification itself needs",
        ),
        (
            "notify without a listener",
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "the bundle's seccomp profile cannot be enforced: SCMP_ACT_NOTIFY without a \
             listenerPath",
        ),
    ];
    for (case, profile, want) in cases {
        matrix.expect(case, apply_profile(profile), want);
    }
    matrix.done();
}

//! The counters as OpenMetrics text, parsed by the Prometheus project's own Python parser
//! (`tests/check_metrics.py`, strict), with every value checked against the report it comes
//! from: once from a forensic log (`guard metrics --log`), once live from a scrape of
//! `guard exec --metrics` while its workload waits.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::forensic_log::{TempDir, guard_bin};
use guard_tests::host::{TestCgroup, root_or_skip};
use serde_json::Value;

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses OpenMetrics text with the reference parser; a text it refuses fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/check_metrics.py");
    let mut child = Command::new("python3")
        .arg(checker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the text ({}; `pip install prometheus-client` if the \
         module is missing):\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let sample: Value = serde_json::from_str(line).unwrap();
            Sample {
                name: sample["name"].as_str().unwrap().to_string(),
                labels: sample["labels"].as_object().unwrap().clone(),
                value: sample["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one {name}{labels:?} among {samples:#?}"
    );
    matching[0].value
}

fn u(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {report}")) as f64
}

/// Every figure of `report` that the metrics carry, compared sample by sample.
fn assert_equal_to_report(samples: &[Sample], report: &Value) {
    let id = report["container"].as_str().unwrap();
    let c = ("container", id);
    for (name, pointer) in [
        ("guard_forks_total", "/counters/bpf/forks"),
        ("guard_exits_total", "/counters/bpf/exits"),
        ("guard_bpf_oom_kills_total", "/counters/bpf/oom_kills"),
        ("guard_memcg_reclaims_total", "/counters/bpf/reclaim_runs"),
        (
            "guard_events_throttled_total",
            "/counters/bpf/events_throttled",
        ),
        ("guard_task_map_full_total", "/counters/bpf/task_map_full"),
    ] {
        assert_eq!(value(samples, name, &[c]), u(report, pointer), "{name}");
    }
    let denied: f64 = samples
        .iter()
        .filter(|s| s.name == "guard_fork_denied_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(denied, u(report, "/counters/bpf/fork_denied"));
    for (kind, count) in report["counters"]["delivered"].as_object().unwrap() {
        assert_eq!(
            value(
                samples,
                "guard_events_delivered_total",
                &[c, ("kind", kind)]
            ),
            count.as_u64().unwrap() as f64,
            "delivered {kind}"
        );
    }
    for scope in ["memcg", "ancestor", "global"] {
        assert_eq!(
            value(samples, "guard_oom_kills_total", &[c, ("scope", scope)]),
            u(report, &format!("/oom/{scope}_kills")),
        );
    }
    let verdict = report["verdict"].as_str().unwrap();
    assert_eq!(
        value(
            samples,
            "guard_verdict",
            &[c, ("limit", "overall"), ("verdict", verdict)]
        ),
        1.0
    );
    assert_eq!(
        value(samples, "guard_tier", &[]),
        report["tier"].as_u64().unwrap() as f64
    );
}

fn exec_json(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The workload's own output comes first; guard's JSON is the last value.
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .last()
        .expect("guard exec --json printed its report")
        .unwrap()
}

#[test]
fn the_metrics_of_a_log_equal_its_report() {
    if !root_or_skip("the_metrics_of_a_log_equal_its_report") {
        return;
    }
    let scratch = TempDir::new("metrics-log");
    let log = scratch.0.join("log");
    let parent = TestCgroup::create("metrics-log");
    let output = Command::new(guard_bin())
        .args(["exec", "--json", "--cgroup"])
        .arg(parent.path.join("job"))
        .arg("--log")
        .arg(&log)
        .args(["--", super::STRESS, "fork", "25"])
        .output()
        .unwrap();
    let report = exec_json(&output)["report"].clone();
    let text = Command::new(guard_bin())
        .args(["metrics", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let samples = parse(&String::from_utf8(text.stdout).unwrap());
    assert!(u(&report, "/counters/bpf/forks") >= 25.0, "{report}");
    assert_equal_to_report(&samples, &report);
    let records = guard::forensic::verify(&log).unwrap().records;
    assert_eq!(
        value(&samples, "guard_log_records_total", &[]),
        records as f64
    );
}

/// `GET path` over the Unix socket; the status line and the body.
fn get(socket: &Path, path: &str) -> (String, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: guard\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn a_live_scrape_equals_the_report() {
    if !root_or_skip("a_live_scrape_equals_the_report") {
        return;
    }
    let scratch = TempDir::new("metrics-live");
    let socket = scratch.0.join("metrics.sock");
    let ready = scratch.0.join("ready");
    let fifo = scratch.0.join("release");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let parent = TestCgroup::create("metrics-live");
    // The workload forks, says so, then waits on a fifo with shell builtins only: nothing
    // forks between the scrape and the report but the shell's own exit.
    let script = format!(
        "{} fork 30 > /dev/null && echo > {} && read x < {}",
        super::STRESS,
        ready.display(),
        fifo.display()
    );
    let exec = Command::new(guard_bin())
        .args(["exec", "--json", "--metrics"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--cgroup")
        .arg(parent.path.join("job"))
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the workload never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = get(&socket, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    let (missing, _) = get(&socket, "/nothing");
    assert!(missing.contains("404"), "{missing}");
    std::fs::write(&fifo, "go\n").unwrap();
    let report = exec_json(&exec.wait_with_output().unwrap())["report"].clone();
    let samples = parse(&body);
    let c = ("container", "job");
    assert_eq!(
        value(&samples, "guard_forks_total", &[c]),
        u(&report, "/counters/bpf/forks"),
        "forks scraped while the workload waited = the final report's"
    );
    assert!(u(&report, "/counters/bpf/forks") >= 31.0, "{report}");
    // The shell's own exit came after the scrape.
    assert_eq!(
        value(&samples, "guard_exits_total", &[c]) + 1.0,
        u(&report, "/counters/bpf/exits")
    );
    assert_eq!(
        value(&samples, "guard_reader_state", &[("state", "healthy")]),
        1.0
    );
}

#[test]
fn the_collector_serves_each_guests_stream() {
    use std::io::BufRead as _;
    if !root_or_skip("the_collector_serves_each_guests_stream") {
        return;
    }
    let scratch = TempDir::new("metrics-collect");
    let listen = scratch.0.join("collect.sock");
    let socket = scratch.0.join("metrics.sock");
    let mut collect = Command::new(guard_bin())
        .args(["collect", "--json", "--no-auth", "--listen"])
        .arg(format!("vm-7=unix:{}", listen.display()))
        .arg("--dir")
        .arg(scratch.0.join("copies"))
        .arg("--metrics")
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(listen.exists() && socket.exists()) {
        assert!(Instant::now() < deadline, "the collector never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let parent = TestCgroup::create("metrics-collect");
    let output = Command::new(guard_bin())
        .args(["exec", "--json", "--cgroup"])
        .arg(parent.path.join("job"))
        .arg("--log")
        .arg(scratch.0.join("log"))
        .arg("--stream")
        .arg(format!("unix:{}", listen.display()))
        .args(["--stream-name", "vm-7", "--", "true"])
        .output()
        .unwrap();
    exec_json(&output);
    // The collector's own account of the stream, then the scrape.
    let mut lines = std::io::BufReader::new(collect.stdout.take().unwrap()).lines();
    let ended: Value = loop {
        let line = lines.next().expect("a status line").unwrap();
        let status: Value = serde_json::from_str(&line).unwrap();
        if !status["verdict"].is_null() {
            break status;
        }
    };
    let (status, body) = get(&socket, "/metrics");
    let _ = collect.kill();
    let _ = collect.wait();
    assert!(status.contains("200"), "{status}");
    let samples = parse(&body);
    let guest = ("guest", "vm-7");
    assert_eq!(ended["verdict"]["verdict"], "complete", "{ended}");
    assert_eq!(
        value(&samples, "guard_stream_records", &[guest]),
        ended["records"].as_u64().unwrap() as f64
    );
    assert_eq!(
        value(
            &samples,
            "guard_stream_verdict",
            &[guest, ("verdict", "complete")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "guard_stream_connections_total", &[guest]),
        1.0
    );
}

//! The guest half of `cargo xtask bench`: what guard costs a 128 MiB guest's memory.
//!
//! One boot per kernel. The example agent (`guard/examples/agent.rs`) runs the same idle
//! container six times, without the guard (`--no-guard`) and with it in rotating order. Once
//! the agent says its container runs, the guest drops its caches and reads /proc/meminfo, the
//! agent's /proc status (VmRSS) and the fdinfo of its bpf-map fds; then the container runs a
//! fork storm (the same in both modes: events for the guard) and the guest reads the agent's
//! VmHWM, its peak; then it kills the container and waits for the agent to exit. Every wait is
//! on a condition (a line in the agent's output, a file the container makes, a process gone):
//! TCG guests are 10–50× slower than hardware.
//!
//! Then the dependent (`tests/dependent/`: guard's monitoring example, built outside the
//! workspace as an agent's crate builds it) runs the same storm [`READINGS`] times in a cgroup
//! of its own: its idle RSS once it watches, its VmHWM after the storm.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, bail};

use crate::kernels::meminfo_kb;
use xtask::vm::{self, VmConfig, VmResult};

/// Guest memory: the size micro-VM sandboxes give their guests.
const MEMORY_MIB: u32 = 128;
/// Readings per mode (with and without the guard), each one agent run.
const READINGS: usize = 3;
/// Forks in the container's storm, after the idle reading: the peak RSS is under events.
const FORKS: u32 = 2000;
/// Console lines carrying this prefix are the guest's progress lines.
const PROGRESS: &str = "bench guest:";

/// The agent runs in order: rotating, so drift over the boot (slab, page cache) favours
/// neither mode.
const ORDER: [&str; 2 * READINGS] = ["none", "guard", "guard", "none", "none", "guard"];

/// The guest's scenario; `@ORDER@` becomes [`ORDER`], `@FORKS@` [`FORKS`]. `$1` of `run_agent` is `none` or
/// `guard`; each reading's files go to /results/<n>-<mode>/.
const SCENARIO: &str = r#"set -e
mkdir -p /tmp/rootfs/bin
cp /bin/busybox /tmp/rootfs/bin/
for applet in sh sleep true touch; do ln -s busybox /tmp/rootfs/bin/$applet; done
say() { echo "bench guest: $*" > /dev/console; }
field() { awk -v f="$1:" '$1 == f { print $2 }' "$2"; }
# The container: idle until /go, then $FORKS fork+exec, then /done, then idle again.
CONTAINER='until [ -e /go ]; do sleep 0.1; done
i=0; while [ $i -lt @FORKS@ ]; do /bin/true; i=$((i + 1)); done
touch /done; exec sleep 1000000'
FORKS=@FORKS@
# Polls `$3...` until it succeeds; fails the scenario if the agent exits first.
until_agent() {
    mode=$1 what=$2
    shift 2
    until "$@" 2> /dev/null; do
        if ! kill -0 $pid 2> /dev/null; then
            cat $dir/agent.err >&2
            echo "the agent ($mode) exited before $what" >&2
            exit 1
        fi
        sleep 0.1
    done
}
n=0
run_agent() {
    n=$((n + 1))
    flag=
    [ "$1" = none ] && flag=--no-guard
    dir=/results/$n-$1
    mkdir -p $dir
    rm -f /tmp/rootfs/go /tmp/rootfs/done
    say "reading $n $1: starting the agent"
    # A file of its own per run: the grep below must never see an earlier run's lines.
    agent --rootfs /tmp/rootfs --min-tier 0 $flag -- /bin/sh -c "$CONTAINER" \
        > /tmp/agent-$n.out 2> $dir/agent.err &
    pid=$!
    # Armed: the agent says so once its container runs (with the guard: watched too).
    until_agent "$1" "its container started" grep -q 'agent: container agent-demo started' $dir/agent.err
    sync
    echo 3 > /proc/sys/vm/drop_caches
    cat /proc/meminfo > $dir/meminfo
    cat /proc/$pid/status > $dir/status
    for fd in /proc/$pid/fd/*; do
        case "$(readlink $fd)" in *bpf-map*) cat /proc/$pid/fdinfo/${fd##*/} ;; esac
    done > $dir/maps
    # The peak: the same fork storm in both modes, events for the guard's pipeline.
    touch /tmp/rootfs/go
    until_agent "$1" "the storm ended" test -e /tmp/rootfs/done
    cat /proc/$pid/status > $dir/status-after
    say "reading $n $1: MemAvailable $(field MemAvailable $dir/meminfo) kB, agent VmRSS $(field VmRSS $dir/status) kB, after $FORKS forks VmHWM $(field VmHWM $dir/status-after) kB"
    # The container's init is killed; the agent then reports, deletes it and exits 1.
    kill -9 $(cat /sys/fs/cgroup/guard/agent-demo/cgroup.procs)
    wait $pid || true
}
for mode in @ORDER@; do run_agent $mode; done
# The dependent: the same storm, a plain command in a cgroup it makes and watches.
m=0
run_monitor() {
    m=$((m + 1))
    dir=/results/monitor-$m
    mkdir -p $dir
    rm -f /tmp/go /tmp/done /tmp/finish
    say "dependent reading $m: starting it"
    monitor --cgroup /sys/fs/cgroup/monitor-demo --min-tier 0 -- /bin/sh -c \
        "until [ -e /tmp/go ]; do sleep 0.1; done; i=0; while [ \$i -lt $FORKS ]; do /bin/true; i=\$((i + 1)); done; touch /tmp/done; until [ -e /tmp/finish ]; do sleep 0.1; done" \
        > /tmp/monitor-$m.out 2> $dir/agent.err &
    pid=$!
    until_agent dependent "it watched" grep -q 'monitor: watching' $dir/agent.err
    cat /proc/$pid/status > $dir/status
    touch /tmp/go
    until_agent dependent "the storm ended" test -e /tmp/done
    cat /proc/$pid/status > $dir/status-after
    say "dependent reading $m: VmRSS $(field VmRSS $dir/status) kB, after $FORKS forks VmHWM $(field VmHWM $dir/status-after) kB"
    touch /tmp/finish
    wait $pid
}
i=0; while [ $i -lt @READINGS@ ]; do run_monitor; i=$((i + 1)); done
"#;

/// One kernel's readings, medians over [`READINGS`] agent runs per mode.
pub(super) struct GuestFootprint {
    pub kernel: String,
    /// guard's tier in this guest (0: no BPF, so no maps).
    pub tier: Option<u8>,
    pub mem_total_kib: u64,
    pub available_without_kib: u64,
    pub available_with_kib: u64,
    /// Slab + Percpu with the guard minus without: kernel memory beside the maps' memlock.
    pub slab_percpu_delta_kib: i64,
    pub rss_without_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    pub maps: usize,
    pub map_memlock_kib: u64,
    /// The dependent's idle VmRSS and its VmHWM after the storm.
    pub dependent_idle_kib: u64,
    pub dependent_peak_kib: u64,
}

/// Measures each kernel with the example agent from `bin_dir` and the `dependent` binary.
pub(super) fn measure(
    kernels: &[String],
    bin_dir: &Path,
    dependent: &Path,
) -> anyhow::Result<Vec<GuestFootprint>> {
    let agent = bin_dir.join("examples").join("agent");
    if !kernels.is_empty() && !agent.is_file() {
        bail!(
            "{} is missing (cargo build --release -p guard --example agent --features runtime)",
            agent.display()
        );
    }
    kernels
        .iter()
        .map(|kernel| measure_one(kernel, &agent, dependent))
        .collect()
}

fn measure_one(kernel: &str, agent: &Path, dependent: &Path) -> anyhow::Result<GuestFootprint> {
    println!(
        "guest {kernel}: one {MEMORY_MIB} MiB boot, {} agent runs (with and without guard)",
        2 * READINGS
    );
    let scenario = SCENARIO
        .replace("@ORDER@", &ORDER.join(" "))
        .replace("@FORKS@", &FORKS.to_string())
        .replace("@READINGS@", &READINGS.to_string());
    let mut config = VmConfig::shell(kernel, &scenario)
        .memory_mib(MEMORY_MIB)
        .binary(agent)
        .binary(dependent)
        .timeout(Duration::from_secs(600))
        .label(format!("bench-guest-{kernel}"));
    config.echo_console = Some(PROGRESS.to_string());
    let outcome = vm::run(&config).with_context(|| format!("booting the {kernel} guest"))?;
    let VmResult::Completed(done) = &outcome.result else {
        bail!(
            "the {kernel} guest did not complete ({}):\n{}",
            outcome.run_dir.display(),
            outcome.console_tail()
        );
    };
    if done.exit_code != 0 {
        bail!(
            "the {kernel} guest's scenario failed (exit {}):\n{}",
            done.exit_code,
            done.stderr_str()
        );
    }
    let reading = |name: &str| -> anyhow::Result<Reading> {
        let file = |what: &str| {
            done.file_str(&format!("{name}/{what}"))
                .with_context(|| format!("the {kernel} guest sent no {name}/{what}"))
        };
        Reading::parse(
            &file("meminfo")?,
            &file("status")?,
            &file("status-after")?,
            &file("maps")?,
        )
        .with_context(|| format!("the {kernel} guest's reading {name}"))
    };
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut tier = None;
    for (index, mode) in ORDER.iter().enumerate() {
        let name = format!("{}-{mode}", index + 1);
        if *mode == "none" {
            without.push(reading(&name)?);
        } else {
            with.push(reading(&name)?);
            tier = tier.or_else(|| {
                done.file_str(&format!("{name}/agent.err"))
                    .as_deref()
                    .and_then(agent_tier)
            });
        }
    }
    let median_of = |readings: &[Reading], value: fn(&Reading) -> u64| {
        median(readings.iter().map(value).collect())
    };
    let mut dependent = Vec::new();
    for index in 1..=READINGS {
        let name = format!("monitor-{index}");
        let file = |what: &str| {
            done.file_str(&format!("{name}/{what}"))
                .with_context(|| format!("the {kernel} guest sent no {name}/{what}"))
        };
        let (idle, after) = (file("status")?, file("status-after")?);
        dependent.push((
            meminfo_kb(&idle, "VmRSS").context("the dependent's status")?,
            meminfo_kb(&after, "VmHWM").context("the dependent's status after the storm")?,
        ));
    }
    let slab_percpu = |r: &Reading| r.slab_kib + r.percpu_kib;
    Ok(GuestFootprint {
        kernel: kernel.to_string(),
        tier,
        mem_total_kib: median_of(&with, |r| r.mem_total_kib),
        available_without_kib: median_of(&without, |r| r.mem_available_kib),
        available_with_kib: median_of(&with, |r| r.mem_available_kib),
        slab_percpu_delta_kib: median_of(&with, slab_percpu) as i64
            - median_of(&without, slab_percpu) as i64,
        rss_without_kib: median_of(&without, |r| r.rss_kib),
        rss_idle_kib: median_of(&with, |r| r.rss_kib),
        rss_peak_kib: median_of(&with, |r| r.hwm_kib),
        maps: with.iter().map(|r| r.maps).max().unwrap_or(0),
        map_memlock_kib: median_of(&with, |r| r.memlock_bytes) / 1024,
        dependent_idle_kib: median(dependent.iter().map(|(idle, _)| *idle).collect()),
        dependent_peak_kib: median(dependent.iter().map(|(_, peak)| *peak).collect()),
    })
}

/// One agent run's numbers, read in the guest while its container ran.
#[derive(Debug, PartialEq)]
struct Reading {
    mem_total_kib: u64,
    mem_available_kib: u64,
    slab_kib: u64,
    /// 0 where the kernel has no `Percpu` line.
    percpu_kib: u64,
    rss_kib: u64,
    /// VmHWM after the storm: the peak from the agent's start on.
    hwm_kib: u64,
    maps: usize,
    memlock_bytes: u64,
}

impl Reading {
    /// From /proc/meminfo, the agent's /proc/<pid>/status when armed and after the storm, and
    /// its bpf-map fds' fdinfo, one after the other.
    fn parse(meminfo: &str, status: &str, after: &str, maps: &str) -> anyhow::Result<Self> {
        let (count, memlock_bytes) = memlock(maps);
        Ok(Self {
            mem_total_kib: meminfo_kb(meminfo, "MemTotal").context("meminfo")?,
            mem_available_kib: meminfo_kb(meminfo, "MemAvailable").context("meminfo")?,
            slab_kib: meminfo_kb(meminfo, "Slab").context("meminfo")?,
            percpu_kib: meminfo_kb(meminfo, "Percpu").unwrap_or(0),
            rss_kib: meminfo_kb(status, "VmRSS").context("the agent's status")?,
            hwm_kib: meminfo_kb(after, "VmHWM").context("the agent's status after the storm")?,
            maps: count,
            memlock_bytes,
        })
    }
}

/// The number of bpf-map fdinfo blocks in `fdinfo` and the sum of their `memlock:` (bytes).
fn memlock(fdinfo: &str) -> (usize, u64) {
    fdinfo
        .lines()
        .filter_map(|line| line.strip_prefix("memlock:"))
        .filter_map(|value| value.trim().parse::<u64>().ok())
        .fold((0, 0), |(count, sum), bytes| (count + 1, sum + bytes))
}

/// The tier from the agent's `agent: guard at tier N` line.
fn agent_tier(stderr: &str) -> Option<u8> {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix("agent: guard at tier "))
        .and_then(|tier| tier.split_whitespace().next()?.parse().ok())
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(super) fn table(rows: &[GuestFootprint]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## In the guest\n\n\
         What guard costs a {MEMORY_MIB} MiB guest under QEMU TCG, one boot per kernel: the \
         example agent (`guard/examples/agent.rs`) runs one idle container {READINGS} times \
         without the guard (`--no-guard`) and {READINGS} times with it, alternating; each \
         reading is taken once the container runs, after `drop_caches`; medians. Peak RSS is \
         the agent's VmHWM after {FORKS} fork+exec in the container (its start, the guard's \
         load and the storm's events included). Map memlock \
         is the kernel memory of guard's BPF maps (the sum of `memlock:` in the agent's \
         bpf-map fdinfo, ring buffer included); Slab+Percpu is the guest's own count of kernel \
         memory beside it, with minus without. The dependent is `tests/dependent/` (guard's \
         monitoring example built outside guard's workspace, as an agent's own crate: its own \
         lock file, the stable toolchain, a prebuilt eBPF object) running the same storm \
         {READINGS} times in a cgroup it watches, without libcontainer: its idle RSS once it \
         watches, its VmHWM after the storm. The targets: MemAvailable at most 4 MiB apart, \
         peak RSS at most idle + 2 MiB (the agent's and the dependent's), map memlock at most \
         1.5 MiB.\n"
    );
    let _ = writeln!(
        out,
        "| kernel | tier | MemTotal | MemAvailable without guard | with guard | delta | \
         agent RSS without guard | agent idle RSS | agent peak RSS | dependent idle RSS | \
         dependent peak RSS | Slab+Percpu delta | map memlock |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} MiB | {:.1} MiB | {:.1} MiB \
             | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.2} MiB | {:.2} MiB ({} maps) |",
            row.kernel,
            row.tier.map_or("-".to_string(), |tier| tier.to_string()),
            mib(row.mem_total_kib),
            mib(row.available_without_kib),
            mib(row.available_with_kib),
            (row.available_without_kib as f64 - row.available_with_kib as f64) / 1024.0,
            mib(row.rss_without_kib),
            mib(row.rss_idle_kib),
            mib(row.rss_peak_kib),
            mib(row.dependent_idle_kib),
            mib(row.dependent_peak_kib),
            row.slab_percpu_delta_kib as f64 / 1024.0,
            mib(row.map_memlock_kib),
            row.maps,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         104028 kB\nMemFree:           60112 kB\n\
                           MemAvailable:      71236 kB\nSlab:              9876 kB\n\
                           SReclaimable:       2104 kB\nPercpu:              672 kB\n";
    const STATUS: &str = "Name:\tagent\nVmPeak:\t   40000 kB\nVmHWM:\t    9216 kB\n\
                          VmRSS:\t    8192 kB\nRssAnon:\t    4096 kB\n";
    /// Two maps' fdinfo as the kernel writes them, one after the other.
    const MAPS: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t27\n\
                        key_size:\t0\nvalue_size:\t0\nmax_entries:\t262144\nmap_flags:\t0x0\n\
                        map_extra:\t0x0\nmemlock:\t270336\nmap_id:\t4\nfrozen:\t0\n\
                        pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\n\
                        memlock:\t8192\nmap_id:\t5\n";

    #[test]
    fn parses_a_reading() {
        let after = STATUS.replace("9216", "10240");
        let reading = Reading::parse(MEMINFO, STATUS, &after, MAPS).unwrap();
        assert_eq!(
            reading,
            Reading {
                mem_total_kib: 104028,
                mem_available_kib: 71236,
                slab_kib: 9876,
                percpu_kib: 672,
                rss_kib: 8192,
                hwm_kib: 10240,
                maps: 2,
                memlock_bytes: 278528,
            }
        );
    }

    #[test]
    fn fields_match_whole_names_and_tolerate_what_is_absent() {
        // A prefix of a name is no field.
        assert!(meminfo_kb(MEMINFO, "Mem").is_err());
        assert_eq!(meminfo_kb(MEMINFO, "MemFree").unwrap(), 60112);
        let no_percpu = MEMINFO.replace("Percpu:              672 kB\n", "");
        let parsed = Reading::parse(&no_percpu, STATUS, STATUS, "").unwrap();
        assert_eq!(parsed.percpu_kib, 0);
        assert_eq!(memlock(""), (0, 0));
        assert!(Reading::parse(MEMINFO, STATUS, "Name:\tagent\n", "").is_err());
    }

    #[test]
    fn reads_the_agents_tier_and_medians() {
        assert_eq!(
            agent_tier("INFO tier=2\nagent: guard at tier 2 (tracepoints + kprobes)\nagent: x"),
            Some(2)
        );
        assert_eq!(
            agent_tier("agent: container agent-demo started (no guard)"),
            None
        );
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median(Vec::new()), 0);
    }
}

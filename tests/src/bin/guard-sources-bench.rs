//! guard-sources-bench: what the live sources without tracing cost a guest, as ratios within
//! one boot (run by `cargo xtask bench`, in the guest). Each mode prints one JSON line.
//!
//! The workload is always the same child (`work`): GETPIDS raw getpid syscalls, then FORKS
//! fork + `_exit` + waitpid, timed apart; it is spawned afresh for every reading, because what
//! audit and perf attach to a task is decided when the task is forked.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard::sources::{audit::AuditSource, taskstats::TaskstatsSource};
use serde_json::{Value, json};

const USAGE: &str = "\
usage: guard-sources-bench MODE ARGS

  work GETPIDS FORKS [CGROUP]      the workload: prints ns per getpid and per fork
  tier ROUNDS GETPIDS FORKS CGROUP rotating rounds: none, the perf cgroup dummy event, taskstats,
                                   both (the new tier's two per-fork sources)
  audit ROUNDS GETPIDS FORKS       phases: audit never enabled, guard's audit source open
                                   (the fork-denial rule), closed again
  bpf ROUNDS FORKS CGROUP GUARD    rounds of no guard, then `GUARD watch` on CGROUP with
                                   kernel.bpf_stats_enabled: each program's run time";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize| -> u64 {
        args.get(index)
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| fail(&format!("argument {index} must be a number")))
    };
    let text = |index: usize| -> String {
        args.get(index)
            .cloned()
            .unwrap_or_else(|| fail(&format!("missing argument {index}")))
    };
    let line = match args.first().map(String::as_str) {
        Some("work") => work(number(1), number(2), args.get(3).map(String::as_str)),
        Some("tier") => tier(number(1), number(2), number(3), &text(4)),
        Some("audit") => audit(number(1), number(2), number(3)),
        Some("bpf") => bpf(number(1), number(2), &text(3), &text(4)),
        _ => fail("no such mode"),
    };
    println!("{line}");
}

fn fail(message: &str) -> ! {
    eprintln!("guard-sources-bench: {message}\n\n{USAGE}");
    std::process::exit(2)
}

/// The workload, in this process.
fn work(getpids: u64, forks: u64, cgroup: Option<&str>) -> Value {
    if let Some(cgroup) = cgroup {
        std::fs::write(format!("{cgroup}/cgroup.procs"), "0")
            .unwrap_or_else(|error| fail(&format!("joining {cgroup}: {error}")));
    }
    let started = Instant::now();
    for _ in 0..getpids {
        // SAFETY: getpid has no arguments and no side effects; raw, so nothing caches it.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let getpid_ns = started.elapsed().as_nanos() as f64 / getpids.max(1) as f64;
    let started = Instant::now();
    for _ in 0..forks {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe { libc::_exit(0) },
            -1 => fail(&format!("fork: {}", std::io::Error::last_os_error())),
            pid => {
                let mut status = 0;
                // SAFETY: waitpid writes into a valid int.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
    }
    let fork_ns = started.elapsed().as_nanos() as f64 / forks.max(1) as f64;
    json!({"getpid_ns": getpid_ns, "fork_ns": fork_ns})
}

/// Runs the workload in a fresh child, calling `drain` every few milliseconds meanwhile.
fn run_work(getpids: u64, forks: u64, cgroup: Option<&str>, mut drain: impl FnMut()) -> Value {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.args(["work", &getpids.to_string(), &forks.to_string()]);
    if let Some(cgroup) = cgroup {
        command.arg(cgroup);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the workload");
    loop {
        drain();
        if child
            .try_wait()
            .expect("waiting for the workload")
            .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drain();
    let output = child.wait_with_output().expect("the workload's output");
    serde_json::from_slice(&output.stdout).expect("the workload's JSON")
}

/// One perf dummy software event per CPU on a cgroup, with task (fork/exit) and comm records
/// in a mmap'd ring: the tier's fork and exit source, read as the tier reads it.
struct PerfCgroup {
    rings: Vec<(OwnedFd, *mut u8)>,
    forks: u64,
    exits: u64,
    lost: u64,
}

const RING_PAGES: usize = 64;

impl PerfCgroup {
    fn open(cgroup: &str) -> Self {
        let dir = std::fs::File::open(cgroup).expect("opening the cgroup");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let page = 4096usize;
        let mut rings = Vec::new();
        for cpu in 0..cpus {
            // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes) as u64 words.
            let mut attr = [0u64; 8];
            attr[0] = 1 | (64u64 << 32); // type PERF_TYPE_SOFTWARE, size
            attr[1] = 9; // config PERF_COUNT_SW_DUMMY
            attr[3] = (1 << 1) | (1 << 2); // sample_type TID | TIME
            attr[5] = (1 << 9) | (1 << 13) | (1 << 18); // comm, task, sample_id_all
            const PERF_FLAG_PID_CGROUP: libc::c_ulong = 1 << 2;
            const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
            // SAFETY: a valid attr; the fd is owned below.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_ptr(),
                    dir.as_raw_fd(),
                    cpu as libc::c_int,
                    -1,
                    PERF_FLAG_PID_CGROUP | PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                fail(&format!(
                    "perf_event_open on cpu {cpu}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: a new fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: mapping the event's ring (1 + 2^n pages), as perf defines it.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    (1 + RING_PAGES) * page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                fail(&format!(
                    "mmap perf ring: {}",
                    std::io::Error::last_os_error()
                ));
            }
            rings.push((fd, base.cast::<u8>()));
        }
        Self {
            rings,
            forks: 0,
            exits: 0,
            lost: 0,
        }
    }

    /// Reads every record waiting and frees the ring's space.
    fn drain(&mut self) {
        let page = 4096usize;
        let size = RING_PAGES * page;
        for (_, base) in &self.rings {
            // SAFETY: data_head (offset 1024) and data_tail (1032) of the mapped
            // perf_event_mmap_page; records lie in the data pages after it.
            unsafe {
                let head_ptr = base.add(1024).cast::<u64>();
                let tail_ptr = base.add(1032).cast::<u64>();
                let head = std::ptr::read_volatile(head_ptr);
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                let mut tail = std::ptr::read_volatile(tail_ptr);
                let data = base.add(page);
                while tail < head {
                    let at = (tail as usize) % size;
                    let mut header = [0u8; 8];
                    for (index, byte) in header.iter_mut().enumerate() {
                        *byte = *data.add((at + index) % size);
                    }
                    let kind = u32::from_ne_bytes(header[..4].try_into().unwrap());
                    let length = u16::from_ne_bytes(header[6..8].try_into().unwrap()) as u64;
                    match kind {
                        7 => self.forks += 1,
                        4 => self.exits += 1,
                        2 => {
                            let mut lost = [0u8; 8];
                            for (index, byte) in lost.iter_mut().enumerate() {
                                *byte = *data.add((at + 16 + index) % size);
                            }
                            self.lost += u64::from_ne_bytes(lost);
                        }
                        _ => {}
                    }
                    tail += length.max(8);
                }
                std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
                std::ptr::write_volatile(tail_ptr, head);
            }
        }
    }
}

impl Drop for PerfCgroup {
    fn drop(&mut self) {
        for (_, base) in &self.rings {
            // SAFETY: the mapping made in open.
            unsafe { libc::munmap(base.cast(), (1 + RING_PAGES) * 4096) };
        }
    }
}

/// Rotating rounds of the tier's sources against none.
fn tier(rounds: u64, getpids: u64, forks: u64, cgroup: &str) -> Value {
    let _ = std::fs::create_dir(cgroup);
    let modes = ["none", "perf", "taskstats", "perf+taskstats"];
    let mut results: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut perf_counts = json!(null);
    let mut taskstats_exits = 0u64;
    for round in 0..=rounds {
        for offset in 0..modes.len() {
            let mode = modes[(offset + round as usize) % modes.len()];
            let mut perf = mode.contains("perf").then(|| PerfCgroup::open(cgroup));
            let mut taskstats = mode
                .contains("taskstats")
                .then(|| TaskstatsSource::open().expect("taskstats source"));
            let mut exits = 0u64;
            let reading = run_work(getpids, forks, Some(cgroup), || {
                if let Some(perf) = perf.as_mut() {
                    perf.drain();
                }
                if let Some(source) = taskstats.as_mut() {
                    exits += source.read_batch().expect("taskstats batch").exits.len() as u64;
                }
            });
            if round == 0 {
                continue; // warm-up
            }
            if let Some(perf) = &perf {
                perf_counts = json!({"forks": perf.forks, "exits": perf.exits, "lost": perf.lost});
            }
            if taskstats.is_some() {
                taskstats_exits = exits;
            }
            results.entry(mode).or_default().push(reading);
        }
    }
    json!({"mode": "tier", "forks": forks, "getpids": getpids, "rounds": results,
           "last_perf_round": perf_counts, "last_taskstats_exits": taskstats_exits})
}

/// Audit's phases: never enabled in this boot, guard's source open, closed again.
fn audit(rounds: u64, getpids: u64, forks: u64) -> Value {
    let enabled_at_start = audit_ever_enabled_hint();
    let mut phases = serde_json::Map::new();
    let mut measure = |name: &str, source: Option<&mut AuditSource>| {
        let mut readings = Vec::new();
        let mut denials = 0;
        let mut source = source;
        for round in 0..=rounds {
            let reading = run_work(getpids, forks, None, || {
                if let Some(source) = source.as_deref_mut() {
                    denials += source.read_batch().expect("audit batch").denials.len();
                }
            });
            if round > 0 {
                readings.push(reading);
            }
        }
        phases.insert(
            name.into(),
            json!({"readings": readings, "denials": denials}),
        );
    };
    measure("never", None);
    let mut source = AuditSource::open().expect("guard as the audit daemon");
    measure("rule", Some(&mut source));
    drop(source);
    measure("after", None);
    json!({"mode": "audit", "forks": forks, "getpids": getpids,
           "audit_status_at_start": enabled_at_start, "phases": phases})
}

/// `/proc/self/loginuid` exists with AUDITSYSCALL; whether audit was on before is the
/// kernel's secret, so the bench only records the command line's `audit=` if any.
fn audit_ever_enabled_hint() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find(|word| word.starts_with("audit="))
        .unwrap_or("no audit= on the command line")
        .to_string()
}

/// Rounds of no guard, then guard watching the cgroup: the fork's wall time both ways, and
/// each of guard's programs' run time from bpf_stats.
fn bpf(rounds: u64, forks: u64, cgroup: &str, guard: &str) -> Value {
    let _ = std::fs::create_dir(cgroup);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enabling bpf_stats");
    let mut none = Vec::new();
    let mut with = Vec::new();
    let mut programs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut jited = None;
    for round in 0..=rounds {
        let reading = run_work(0, forks, Some(cgroup), || {});
        if round > 0 {
            none.push(reading);
        }
        let mut child = Command::new(guard)
            .args(["watch", "--cgroup"])
            .arg(format!("bench={cgroup}"))
            // Its report at the end goes to stdout, which is this mode's JSON line.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting guard watch");
        let stderr = child.stderr.take().expect("guard's stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("guard: watching") => break,
                Some(Ok(_)) => {}
                _ => fail("guard watch ended before it watched"),
            }
        }
        // Keep draining guard's stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let before = programs_of(child.id());
        let reading = run_work(0, forks, Some(cgroup), || {});
        let after = programs_of(child.id());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        if round == 0 {
            continue;
        }
        with.push(reading);
        for (name, (time, count, is_jited)) in after {
            let (time0, count0, _) = before.get(&name).copied().unwrap_or_default();
            let total = programs.entry(name).or_default();
            total.0 += time - time0;
            total.1 += count - count0;
            jited = Some(is_jited);
        }
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let programs: BTreeMap<String, Value> = programs
        .into_iter()
        .map(|(name, (time, count))| (name, json!({"run_time_ns": time, "run_cnt": count})))
        .collect();
    json!({"mode": "bpf", "forks": forks, "rounds": rounds, "none": none, "guard": with,
           "programs": programs, "jited": jited})
}

/// Every BPF program `pid` holds, by name: run time, run count, and whether it is JIT-compiled.
fn programs_of(pid: u32) -> BTreeMap<String, (u64, u64, bool)> {
    let mut programs = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return programs;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        let (Some(time), Some(count)) = (field("run_time_ns:"), field("run_cnt:")) else {
            continue;
        };
        let jited = field("prog_jited:") == Some(1);
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        let name = program_name(pid, fd).unwrap_or_else(|| format!("fd{fd}"));
        let total = programs.entry(name).or_insert((0, 0, jited));
        total.0 += time;
        total.1 += count;
    }
    programs
}

/// The program's name (`bpf_prog_info.name`, 16 bytes at offset 64) via a duplicate fd.
fn program_name(pid: u32, fd: i32) -> Option<String> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
    // SAFETY: plain syscalls; the duplicated fd is ours and closed below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        if pidfd < 0 {
            return None;
        }
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as libc::c_int;
        libc::close(pidfd);
        if dup < 0 {
            return None;
        }
        let mut info = [0u8; 256];
        let mut attr = [0u64; 2];
        attr[0] = dup as u32 as u64 | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        );
        libc::close(dup);
        if rc != 0 {
            return None;
        }
        let name = &info[64..80];
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(String::from_utf8_lossy(&name[..len]).into_owned())
    }
}

//! guard-stress: the hostile workloads guard's tests and benches run (fork storms, pids bombs,
//! memory bombs), with an exact account of what they attempted and what the kernel refused.
//!
//! Every mode prints one JSON line on stdout with its tallies. Children only call
//! async-signal-safe functions between fork and exit.
use std::process::ExitCode;

const USAGE: &str = "\
usage: guard-stress [--cgroup DIR] MODE ARGS

Modes (each prints one JSON line of tallies):
  fork N           fork N children one at a time; each exits at once and is reaped
  hold N           fork up to N children that all stay alive until the last fork was tried
                   (a pids bomb: forks past pids.max fail with EAGAIN)
  alloc MIB        allocate MIB MiB and touch every page (a memory bomb)
  forkalloc N MIB  fork N children that each allocate and touch MIB MiB, then wait

--cgroup DIR moves this process into the cgroup DIR (writes to DIR/cgroup.procs) first.";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--cgroup") {
        let Some(dir) = args.get(1).cloned() else {
            return usage("--cgroup needs a directory");
        };
        if let Err(error) = std::fs::write(format!("{dir}/cgroup.procs"), "0") {
            eprintln!("guard-stress: joining cgroup {dir}: {error}");
            return ExitCode::FAILURE;
        }
        args.drain(..2);
    }
    let number = |index: usize, what: &str| -> Result<u64, String> {
        let text = args.get(index).ok_or_else(|| format!("missing {what}"))?;
        text.parse()
            .map_err(|_| format!("{what} must be a whole number, got {text:?}"))
    };
    let result = match args.first().map(String::as_str) {
        Some("fork") => number(1, "N").and_then(|n| fork_and_reap(n, false)),
        Some("hold") => number(1, "N").and_then(|n| fork_and_reap(n, true)),
        Some("alloc") => number(1, "MIB").map(|mib| {
            let touched = allocate_and_touch(mib);
            format!("{{\"mode\":\"alloc\",\"mib\":{mib},\"touched_pages\":{touched}}}")
        }),
        Some("forkalloc") => number(1, "N")
            .and_then(|n| number(2, "MIB").map(|mib| (n, mib)))
            .map(|(n, mib)| fork_alloc(n, mib)),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown mode {other:?}")),
        None => Err("no mode given".to_string()),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => usage(&message),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("guard-stress: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Forks `n` children. With `hold`, children block on a pipe until every fork was tried, so
/// they accumulate (as a fork bomb's do); without, each exits at once and is reaped.
fn fork_and_reap(n: u64, hold: bool) -> Result<String, String> {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe() writes two fds into the array.
    if hold && unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let mut succeeded = 0u64;
    let mut eagain = 0u64;
    let mut other_errors = 0u64;
    let mut children = Vec::with_capacity(if hold { n as usize } else { 0 });
    for _ in 0..n {
        // SAFETY: the child only calls read/_exit, which are async-signal-safe.
        match unsafe { libc::fork() } {
            0 => unsafe {
                if hold {
                    libc::close(pipe[1]);
                    let mut byte = 0u8;
                    libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
                }
                libc::_exit(0)
            },
            -1 => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => eagain += 1,
                _ => other_errors += 1,
            },
            pid => {
                succeeded += 1;
                if hold {
                    children.push(pid);
                } else {
                    wait_for(pid);
                }
            }
        }
    }
    if hold {
        // Closing the write end gives every child EOF: they all exit.
        unsafe {
            libc::close(pipe[1]);
            libc::close(pipe[0]);
        }
        for pid in children {
            wait_for(pid);
        }
    }
    let mode = if hold { "hold" } else { "fork" };
    Ok(format!(
        "{{\"mode\":\"{mode}\",\"requested\":{n},\"succeeded\":{succeeded},\"eagain\":{eagain},\"other_errors\":{other_errors}}}"
    ))
}

fn wait_for(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid int.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// Allocates `mib` MiB with mmap and writes one byte per page; returns the pages touched (the
/// OOM killer may end the process before it returns).
fn allocate_and_touch(mib: u64) -> u64 {
    let bytes = (mib as usize) << 20;
    // SAFETY: anonymous private mapping; written only within its bounds.
    unsafe {
        let memory = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            // NORESERVE: the kernel's overcommit heuristic refuses a single mapping near the
            // guest's RAM size up front; a bomb must reach the OOM killer instead.
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if memory == libc::MAP_FAILED {
            return 0;
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let base = memory.cast::<u8>();
        let mut touched = 0;
        let mut offset = 0;
        while offset < bytes {
            base.add(offset).write_volatile(1);
            touched += 1;
            offset += page;
        }
        touched
    }
}

/// Forks `n` children that each allocate and touch `mib` MiB, then waits for all of them and
/// tallies how they ended (exit 0, killed by a signal, or fork refused).
fn fork_alloc(n: u64, mib: u64) -> String {
    let mut children = Vec::new();
    let mut fork_failed = 0u64;
    for _ in 0..n {
        // SAFETY: the child touches memory and calls _exit only.
        match unsafe { libc::fork() } {
            0 => {
                allocate_and_touch(mib);
                unsafe { libc::_exit(0) }
            }
            -1 => fork_failed += 1,
            pid => children.push(pid),
        }
    }
    let (mut exited, mut killed) = (0u64, 0u64);
    for pid in children {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid int.
        while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        if libc::WIFSIGNALED(status) {
            killed += 1;
        } else {
            exited += 1;
        }
    }
    format!(
        "{{\"mode\":\"forkalloc\",\"requested\":{n},\"mib\":{mib},\"exited\":{exited},\"killed\":{killed},\"fork_failed\":{fork_failed}}}"
    )
}

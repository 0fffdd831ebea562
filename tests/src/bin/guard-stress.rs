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
  hold N           create up to N processes that all stay alive until the last one was tried
                   (a pids bomb: creations past pids.max fail with EAGAIN); they share this
                   process's memory (clone with CLONE_VM), so 1000 fit in a 128 MiB guest
  alloc MIB        allocate MIB MiB and touch every page (a memory bomb)
  forkalloc N MIB  fork N children that each allocate and touch MIB MiB and hold it until
                   the last fork was tried, then wait for them
  steady N MIB     well-behaved work: N rounds, one at a time, of a child that allocates and
                   touches MIB MiB and exits; prints the rounds that succeeded and the time
  reap             a container init: reap every child (orphans too, as PID 1), forever

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
        Some("fork") => number(1, "N").and_then(fork_and_reap),
        Some("hold") => number(1, "N").and_then(hold),
        Some("alloc") => number(1, "MIB").map(|mib| {
            let touched = allocate_and_touch(mib);
            format!("{{\"mode\":\"alloc\",\"mib\":{mib},\"touched_pages\":{touched}}}")
        }),
        Some("forkalloc") => number(1, "N")
            .and_then(|n| number(2, "MIB").map(|mib| (n, mib)))
            .map(|(n, mib)| fork_alloc(n, mib)),
        Some("steady") => number(1, "N")
            .and_then(|n| number(2, "MIB").map(|mib| (n, mib)))
            .and_then(|(n, mib)| steady(n, mib)),
        Some("reap") => reap_forever(),
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

/// Forks `n` children one at a time; each exits at once and is reaped.
fn fork_and_reap(n: u64) -> Result<String, String> {
    let mut tally = Tally::default();
    for _ in 0..n {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => tally.failed(),
            pid => {
                tally.succeeded += 1;
                wait_for(pid);
            }
        }
    }
    Ok(tally.line("fork", n))
}

#[derive(Default)]
struct Tally {
    succeeded: u64,
    eagain: u64,
    other_errors: u64,
}

impl Tally {
    fn failed(&mut self) {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => self.eagain += 1,
            _ => self.other_errors += 1,
        }
    }

    fn line(&self, mode: &str, requested: u64) -> String {
        format!(
            "{{\"mode\":\"{mode}\",\"requested\":{requested},\"succeeded\":{},\"eagain\":{},\"other_errors\":{}}}",
            self.succeeded, self.eagain, self.other_errors
        )
    }
}

/// Stack reserved for each held process (only the pages it touches are charged).
const HOLD_STACK: usize = 64 * 1024;

/// A held process: closes its copy of the write end, blocks until EOF, exits.
extern "C" fn held(pipe: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `pipe` points to the parent's two fds, alive (shared memory) until every held
    // process was reaped; only raw syscalls run here, on this process's own stack.
    unsafe {
        let fds = pipe.cast::<[libc::c_int; 2]>();
        libc::close((*fds)[1]);
        let mut byte = 0u8;
        libc::read((*fds)[0], (&mut byte as *mut u8).cast(), 1);
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// Creates up to `n` processes that all stay alive until every creation was tried, as a fork
/// bomb's do. They share this process's memory (CLONE_VM, no CLONE_THREAD: each is its own
/// process, counted by the pids controller like a forked one) so that page-table and
/// copy-on-write costs (~130 KiB a forked child) do not hit memory.max before pids.max.
fn hold(n: u64) -> Result<String, String> {
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: pipe() writes two fds into the array.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let bytes = HOLD_STACK * n as usize;
    // SAFETY: an anonymous mapping, used only as the held processes' stacks.
    let stacks = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes.max(HOLD_STACK),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stacks == libc::MAP_FAILED {
        return Err(format!("mmap stacks: {}", std::io::Error::last_os_error()));
    }
    let mut tally = Tally::default();
    let mut children = Vec::with_capacity(n as usize);
    for index in 0..n as usize {
        // SAFETY: each process gets the top of its own stack slot; `held` only makes syscalls.
        let pid = unsafe {
            let top = stacks.cast::<u8>().add((index + 1) * HOLD_STACK);
            libc::clone(
                held,
                top.cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                pipe.as_mut_ptr().cast(),
            )
        };
        if pid == -1 {
            tally.failed();
        } else {
            tally.succeeded += 1;
            children.push(pid);
        }
    }
    // Closing the write end gives every held process EOF: they all exit.
    unsafe {
        libc::close(pipe[1]);
    }
    for pid in children {
        wait_for(pid);
    }
    unsafe {
        libc::close(pipe[0]);
        libc::munmap(stacks, bytes.max(HOLD_STACK));
    }
    Ok(tally.line("hold", n))
}

/// PID 1 of a container: orphans are reparented here and must be reaped, or their zombies
/// keep counting against pids.max.
fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid int; sleep has no preconditions.
        unsafe {
            if libc::waitpid(-1, &mut status, 0) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
            {
                // No children right now: wait for some to be reparented to us.
                libc::sleep(1);
            }
        }
    }
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

/// Forks `n` children that each allocate and touch `mib` MiB and hold it until every fork was
/// tried (so their memory adds up, as a bomb's does), then waits for all of them and tallies
/// how they ended (exit 0, killed by a signal, or fork refused).
fn fork_alloc(n: u64, mib: u64) -> String {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe() writes two fds into the array.
    let piped = unsafe { libc::pipe(pipe.as_mut_ptr()) } == 0;
    let mut children = Vec::new();
    let mut fork_failed = 0u64;
    for _ in 0..n {
        // SAFETY: the child touches memory and calls read/_exit only.
        match unsafe { libc::fork() } {
            0 => unsafe {
                allocate_and_touch(mib);
                if piped {
                    libc::close(pipe[1]);
                    let mut byte = 0u8;
                    libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
                }
                libc::_exit(0)
            },
            -1 => fork_failed += 1,
            pid => children.push(pid),
        }
    }
    if piped {
        unsafe {
            libc::close(pipe[1]);
            libc::close(pipe[0]);
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

/// `n` rounds of a child that allocates and touches `mib` MiB and exits, one at a time: a
/// tenant that does real work within its limits. An error unless every round succeeded.
fn steady(n: u64, mib: u64) -> Result<String, String> {
    let started = std::time::Instant::now();
    let mut ok = 0u64;
    for _ in 0..n {
        // SAFETY: the child touches memory and calls _exit only.
        match unsafe { libc::fork() } {
            0 => unsafe {
                allocate_and_touch(mib);
                libc::_exit(0)
            },
            -1 => {}
            pid => {
                let mut status = 0;
                // SAFETY: waitpid writes the status into a valid int.
                while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    ok += 1;
                }
            }
        }
    }
    let line = format!(
        "{{\"mode\":\"steady\",\"rounds\":{n},\"mib\":{mib},\"ok\":{ok},\"elapsed_ms\":{}}}",
        started.elapsed().as_millis()
    );
    if ok == n {
        Ok(line)
    } else {
        Err(format!("steady: only {ok} of {n} rounds succeeded: {line}"))
    }
}

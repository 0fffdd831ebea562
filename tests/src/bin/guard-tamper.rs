//! guard-tamper: what a hostile container would try against the guard, each attempt reported
//! as one JSON line `{"attempt":…,"ok":…,"error":…}`. Run inside a guarded container every
//! attempt must fail; run as the guest's root (the two-sided control) every attempt succeeds,
//! which shows each one is a real attempt. Nothing is changed where an attempt succeeds:
//! limits are written back with their current value, the log is opened but never written, a
//! vsock connection is closed without a byte sent.
use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

const USAGE: &str = "\
usage: guard-tamper --cgroup DIR --log-file FILE [--vsock-port PORT]

Attempts, each printed as a JSON line:
  write own memory.max / pids.max / cgroup.procs    DIR's files (their current value)
  write parent memory.max / pids.max                DIR/..'s files (their current value)
  mount cgroup2                                     a fresh cgroup2 mount (the whole tree)
  remount cgroupfs read-write                       /sys/fs/cgroup
  open the log                                      FILE for appending (nothing is written)
  open the log through /proc/PID/root               the same, through every visible process
  bpf map create / bpf prog load                    an array map; a tracepoint program
                                                    (a socket filter on kernels without
                                                    tracepoint programs, so the control can)
  vsock socket                                      socket(AF_VSOCK)
  vsock connect to the host                         CID 2 at PORT (the host's evidence port;
                                                    only with --vsock-port)
  io_uring setup                                    io_uring_setup, which can make sockets
                                                    without socket(2)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .map(PathBuf::from)
    };
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (Some(cgroup), Some(log_file)) = (option("--cgroup"), option("--log-file")) else {
        eprintln!("guard-tamper: --cgroup DIR and --log-file FILE are required\n\n{USAGE}");
        return ExitCode::from(2);
    };
    let parent = cgroup.join("..");
    for file in ["memory.max", "pids.max"] {
        report(&format!("write own {file}"), rewrite(&cgroup.join(file)));
    }
    report(
        "write own cgroup.procs",
        write(&cgroup.join("cgroup.procs"), "0"),
    );
    for file in ["memory.max", "pids.max"] {
        report(&format!("write parent {file}"), rewrite(&parent.join(file)));
    }
    report("mount cgroup2", mount_cgroup2());
    report("remount cgroupfs read-write", remount_cgroupfs());
    report("open the log", open_for_append(&log_file));
    report(
        "open the log through /proc/PID/root",
        through_proc_root(&log_file),
    );
    report("bpf map create", bpf_map_create());
    report("bpf prog load", bpf_prog_load());
    report("vsock socket", vsock_socket().map(close));
    if let Some(port) = option("--vsock-port") {
        let Some(port) = port.to_str().and_then(|port| port.parse().ok()) else {
            eprintln!("guard-tamper: --vsock-port takes a port number\n\n{USAGE}");
            return ExitCode::from(2);
        };
        report("vsock connect to the host", vsock_connect(port));
    }
    report("io_uring setup", io_uring_setup().map(close));
    ExitCode::SUCCESS
}

fn report(attempt: &str, result: Result<(), String>) {
    let line = match result {
        Ok(()) => format!("{{\"attempt\":{attempt:?},\"ok\":true}}"),
        Err(error) => format!("{{\"attempt\":{attempt:?},\"ok\":false,\"error\":{error:?}}}"),
    };
    println!("{line}");
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| format!("open {}: {error}", path.display()))?;
    file.write_all(value.as_bytes())
        .map_err(|error| format!("write {}: {error}", path.display()))
}

/// Writes a limit file's current value back: the write is real, the limit unchanged.
fn rewrite(path: &Path) -> Result<(), String> {
    let current = std::fs::read_to_string(path)
        .map_err(|error| format!("read {}: {error}", path.display()))?;
    write(path, current.trim())
}

fn open_for_append(path: &Path) -> Result<(), String> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|error| format!("open {}: {error}", path.display()))
}

/// The log through any process's root: a container sharing the agent's PID namespace could
/// reach the agent's files this way.
fn through_proc_root(path: &Path) -> Result<(), String> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let entries = std::fs::read_dir("/proc").map_err(|error| format!("read_dir /proc: {error}"))?;
    let mut tried = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        tried += 1;
        if open_for_append(&entry.path().join("root").join(relative)).is_ok() {
            return Ok(());
        }
    }
    Err(format!("not reachable through any of {tried} processes"))
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

fn mount_cgroup2() -> Result<(), String> {
    let target = std::env::temp_dir().join(format!("guard-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&target)
        .map_err(|error| format!("mkdir {}: {error}", target.display()))?;
    let target_c = c_path(&target);
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed for cgroup2.
    let mounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target_c.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let result = if mounted == 0 {
        // SAFETY: as above; the mount was just made.
        unsafe { libc::umount(target_c.as_ptr()) };
        Ok(())
    } else {
        Err(format!(
            "mount -t cgroup2 {}: {}",
            target.display(),
            errno_text()
        ))
    };
    let _ = std::fs::remove_dir(&target);
    result
}

fn remount_cgroupfs() -> Result<(), String> {
    // SAFETY: valid NUL-terminated strings; MS_REMOUNT without MS_RDONLY asks for read-write.
    let remounted = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/sys/fs/cgroup".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            std::ptr::null(),
        )
    };
    if remounted == 0 {
        Ok(())
    } else {
        Err(format!(
            "remount /sys/fs/cgroup read-write: {}",
            errno_text()
        ))
    }
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("paths built here have no NUL")
}

/// `bpf(cmd, attr)`; the fd is closed at once.
fn bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> Result<(), String> {
    // SAFETY: attr is a zeroed, large-enough union bpf_attr (128 bytes) for these commands.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(errno_text());
    }
    // SAFETY: fd is a descriptor the kernel just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn bpf_map_create() -> Result<(), String> {
    const BPF_MAP_CREATE: libc::c_int = 0;
    const BPF_MAP_TYPE_ARRAY: u64 = 2;
    let mut attr = [0u64; 16];
    // map_type, key_size (u32 pair); value_size, max_entries.
    attr[0] = BPF_MAP_TYPE_ARRAY | (4 << 32);
    attr[1] = 8 | (1 << 32);
    bpf(BPF_MAP_CREATE, &mut attr).map_err(|error| format!("BPF_MAP_CREATE: {error}"))
}

fn bpf_prog_load() -> Result<(), String> {
    const BPF_PROG_TYPE_SOCKET_FILTER: u64 = 1;
    const BPF_PROG_TYPE_TRACEPOINT: u64 = 5;
    match load_program(BPF_PROG_TYPE_TRACEPOINT) {
        // A kernel without BPF_EVENTS has no tracepoint programs at all: a socket filter,
        // which every kernel has, still shows whether bpf(2) is open to this process.
        Err(error) if error.contains("Invalid argument") => {
            load_program(BPF_PROG_TYPE_SOCKET_FILTER)
        }
        other => other,
    }
}

fn load_program(prog_type: u64) -> Result<(), String> {
    const BPF_PROG_LOAD: libc::c_int = 5;
    // r0 = 0; exit
    let instructions: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt (u32 pair); insns; license.
    attr[0] = prog_type | ((instructions.len() as u64) << 32);
    attr[1] = instructions.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|error| format!("BPF_PROG_LOAD: {error}"))
}

fn close(fd: libc::c_int) {
    // SAFETY: a descriptor this process owns, closed once.
    unsafe { libc::close(fd) };
}

fn vsock_socket() -> Result<libc::c_int, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket(AF_VSOCK): {}", errno_text()));
    }
    Ok(fd)
}

/// Connects to the host (CID 2) at `port`, then hangs up without sending anything.
fn vsock_connect(port: u32) -> Result<(), String> {
    let fd = vsock_socket()?;
    // SAFETY: a zeroed sockaddr_vm is valid; its size is passed with it.
    let connected = unsafe {
        let mut address: libc::sockaddr_vm = std::mem::zeroed();
        address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        address.svm_cid = libc::VMADDR_CID_HOST;
        address.svm_port = port;
        libc::connect(
            fd,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    let result = if connected == 0 {
        Ok(())
    } else {
        Err(format!("connect to CID 2 port {port}: {}", errno_text()))
    };
    close(fd);
    result
}

fn io_uring_setup() -> Result<libc::c_int, String> {
    // struct io_uring_params is 120 bytes; zeroed asks for the defaults.
    let mut params = [0u8; 120];
    // SAFETY: a writable, zeroed io_uring_params for one entry.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(format!("io_uring_setup: {}", errno_text()));
    }
    Ok(fd as libc::c_int)
}

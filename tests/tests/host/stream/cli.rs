//! The commands themselves: `guard collect keygen`, `guard exec --stream … --stream-key` into
//! an unprivileged `guard collect`, by a named socket and by a VM directory; the exit status
//! of a guest command whose stream the host refused.
use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::harness::*;

/// The collector's user: it needs no privilege.
pub(crate) const NOBODY: u32 = 65534;

/// Kills a helper process if the test fails before it exits by itself.
pub(crate) struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// A scratch folder the collector (an unprivileged user) owns, with a copy of `guard` it can
/// run.
pub(crate) struct NobodyHome {
    pub home: PathBuf,
    pub bin: PathBuf,
    pub uid: u32,
}

impl NobodyHome {
    pub fn new(scratch: &TempDir) -> Self {
        Self::for_user(scratch, NOBODY)
    }

    /// For `uid` (a user of the test's own, whose process count nothing else shares).
    pub fn for_user(scratch: &TempDir, uid: u32) -> Self {
        let home = scratch.0.join("collector");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A copy nobody can run wherever the checkout is (a clone under /root is not).
        let bin = scratch.0.join("guard");
        std::fs::copy(crate::forensic_log::guard_bin(), &bin).unwrap();
        Self { home, bin, uid }
    }

    /// `guard collect ARGS` as nobody, its stdout piped.
    pub fn collect(&self, args: &[&str], limits: &[(libc::c_int, u64)]) -> Child {
        let limits = limits.to_vec();
        let mut command = Command::new(&self.bin);
        command
            .arg("collect")
            .args(args)
            .uid(self.uid)
            .gid(self.uid)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for (resource, value) in &limits {
                    let limit = libc::rlimit {
                        rlim_cur: *value,
                        rlim_max: *value,
                    };
                    if libc::setrlimit(*resource as _, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }

    /// A key made by `guard collect keygen`, owned by `uid`.
    pub fn keygen(&self, path: &Path, uid: u32) {
        let made = Command::new(&self.bin)
            .args(["collect", "keygen"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    }
}

pub(crate) fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `path` to appear while `child` runs; its stderr if it exits first.
pub(crate) fn wait_for_socket(child: &mut Child, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            panic!(
                "the collector exited ({status}) before {} appeared: {stderr}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `guard exec` of `true` streaming its log to `socket` as `name` with `key`.
fn exec_streaming(
    guard: &Path,
    log: &Path,
    socket: &Path,
    name: &str,
    key: &Path,
) -> std::process::Output {
    let parent = guard_tests::host::TestCgroup::create(&format!("stream-cli-{name}"));
    let cgroup = parent.path.join("job").display().to_string();
    Command::new(guard)
        .args(["exec", "--cgroup", &cgroup, "--log"])
        .arg(log)
        .arg("--stream")
        .arg(format!("unix:{}", socket.display()))
        .args(["--stream-name", name, "--stream-key"])
        .arg(key)
        .args(["--", "sh", "-c", "true"])
        .output()
        .unwrap()
}

/// The last JSON status line of a finished `guard collect --json`.
fn last_status(output: &std::process::Output) -> guard::forensic::serde_json::Value {
    guard::forensic::serde_json::from_slice(
        output
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|line| !line.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "no status; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            }),
    )
    .unwrap()
}

/// `guard exec --stream unix:S --stream-key K` into `guard collect --listen NAME=unix:S --key
/// NAME=K --streams 1` (as nobody): the collector exits 0 on `complete`, its copy is the
/// guest's log byte for byte, nothing is written outside its folder, `guard log verify`
/// accepts the copy. Then the same guest command with another key: refused, exit status 5.
#[test]
fn guard_exec_streams_into_an_unprivileged_guard_collect() {
    if !guard_tests::host::root_or_skip("guard_exec_streams_into_an_unprivileged_guard_collect") {
        return;
    }
    let scratch = TempDir::new("cli");
    let nobody = NobodyHome::new(&scratch);
    let (guest_key, host_key) = (scratch.0.join("guest.key"), nobody.home.join("host.key"));
    nobody.keygen(&guest_key, 0);
    std::fs::copy(&guest_key, &host_key).unwrap();
    std::os::unix::fs::chown(&host_key, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = nobody.home.join("collect.sock");
    let copies = nobody.home.join("copies");
    let collect = nobody.collect(
        &[
            "--streams",
            "1",
            "--json",
            "--listen",
            &format!("cli-guest=unix:{}", socket.display()),
            "--key",
            &format!("cli-guest={}", host_key.display()),
            "--dir",
            copies.to_str().unwrap(),
        ],
        &[],
    );
    let _reap = KillOnDrop(collect.id());
    wait_for_path(&socket);
    let log = scratch.0.join("log");
    let exec = exec_streaming(&nobody.bin, &log, &socket, "cli-guest", &guest_key);
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(exec.status.success(), "{stderr}");
    assert!(stderr.contains("the host holds the whole log"), "{stderr}");
    let collected = collect.wait_with_output().unwrap();
    let status = last_status(&collected);
    assert!(collected.status.success(), "{status}");
    assert_eq!(status["verdict"]["verdict"], "complete", "{status}");
    assert_eq!(status["authenticated"], true, "{status}");
    let copy = copies.join("cli-guest");
    assert_eq!(files_of(&copy), files_of(&log));
    // Everything the collector made is its socket and what is under --dir, owned by nobody.
    let mut pending = vec![nobody.home.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().uid(),
                NOBODY,
                "{}",
                path.display()
            );
            assert!(
                path == socket || path == host_key || path.starts_with(&copies),
                "the collector wrote {} outside --dir",
                path.display()
            );
        }
    }
    let verify = Command::new(&nobody.bin)
        .args(["log", "--dir"])
        .arg(&copy)
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // The wrong key: the host refuses, the guest command says so and exits 5.
    let wrong = scratch.0.join("wrong.key");
    nobody.keygen(&wrong, 0);
    let _ = std::fs::remove_file(&socket);
    let mut collect = nobody.collect(
        &[
            "--listen",
            &format!("cli-guest=unix:{}", socket.display()),
            "--key",
            &format!("cli-guest={}", host_key.display()),
            "--dir",
            copies.to_str().unwrap(),
        ],
        &[],
    );
    let _reap = KillOnDrop(collect.id());
    wait_for_path(&socket);
    let refused = exec_streaming(
        &nobody.bin,
        &scratch.0.join("log2"),
        &socket,
        "cli-guest",
        &wrong,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("NOT DELIVERED: authentication_failed"),
        "{stderr}"
    );
    assert_eq!(files_of(&copy), files_of(&log), "the copy is untouched");
    let _ = collect.kill();
    let _ = collect.wait();
}

/// `guard collect --vm-dir D --port P`: a VM directory renamed into place with its key gets a
/// listener at D/NAME/vsock_P, and the guest streams through it.
#[test]
fn a_vm_directory_gets_a_listener_and_streams() {
    if !guard_tests::host::root_or_skip("a_vm_directory_gets_a_listener_and_streams") {
        return;
    }
    let scratch = TempDir::new("cli-vmdir");
    let nobody = NobodyHome::new(&scratch);
    let vms = nobody.home.join("vms");
    std::fs::create_dir_all(vms.join(".new-vm-7")).unwrap();
    for dir in [&vms, &vms.join(".new-vm-7")] {
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let copies = nobody.home.join("copies");
    let collect = nobody.collect(
        &[
            "--streams",
            "1",
            "--json",
            "--vm-dir",
            vms.to_str().unwrap(),
            "--port",
            "7000",
            "--dir",
            copies.to_str().unwrap(),
        ],
        &[],
    );
    let _reap = KillOnDrop(collect.id());
    let guest_key = scratch.0.join("guest.key");
    nobody.keygen(&guest_key, 0);
    std::fs::copy(&guest_key, vms.join(".new-vm-7/key")).unwrap();
    std::os::unix::fs::chown(vms.join(".new-vm-7/key"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::rename(vms.join(".new-vm-7"), vms.join("vm-7")).unwrap();
    let socket = vms.join("vm-7/vsock_7000");
    wait_for_path(&socket);
    let log = scratch.0.join("log");
    let exec = exec_streaming(&nobody.bin, &log, &socket, "vm-7", &guest_key);
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let collected = collect.wait_with_output().unwrap();
    let status = last_status(&collected);
    assert_eq!(status["verdict"]["verdict"], "complete", "{status}");
    assert_eq!(status["guest"], "vm-7", "{status}");
    assert_eq!(files_of(&copies.join("vm-7")), files_of(&log));
}

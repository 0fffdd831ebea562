//! A guest's vsock device, bridged to host Unix sockets as the micro-VM monitors do it.
//!
//! This host has no `/dev/vhost-vsock`, and the field does not use it either: Firecracker,
//! libkrun and rust-vmm's `vhost-device-vsock` map a guest's connection to CID 2 port P onto a
//! host Unix socket `<uds-path>_P`. The harness runs `vhost-device-vsock` (installed by `cargo
//! xtask setup`) as a vhost-user backend; QEMU gets shared memfd guest memory (vhost-user maps
//! it) and a `vhost-user-vsock-device` (microvm, virtio-mmio) or `-pci` (the PC). A test
//! listens on [`VsockConfig::host_socket`] before the guest connects.
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Machine;

/// The guest's context id. Any value above 2 works; each guest has its own bridge.
pub const GUEST_CID: u32 = 3;

/// How a guest's vsock reaches the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The bridge's Unix socket prefix: a guest connection to port P arrives on `<uds>_P`.
    /// Unix socket paths hold at most 107 bytes: keep it short (see [`VsockConfig::in_dir`]).
    pub uds: PathBuf,
}

impl VsockConfig {
    /// A bridge whose sockets live in `dir` (`dir/vsock`, `dir/vsock_<port>`).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            uds: dir.join("vsock"),
        }
    }

    /// Where a guest's connection to CID 2 `port` arrives: the host listens here.
    pub fn host_socket(&self, port: u32) -> PathBuf {
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }
}

/// Where a guest's stream key is in its initramfs: a file of the guest's root, mode 0400, on
/// the guest's own root filesystem, which no container sees (each has a root of its own), and
/// never on the kernel command line (`/proc/cmdline` is readable inside containers).
pub const GUEST_KEY_PATH: &str = "/etc/guard/stream.key";

/// One VM under a collector's `--vm-dir` (docs/STREAM.md), as an orchestrator lays it out:
/// `DIR/<name>/` holding the VM's stream key `key` (64 hex digits, mode 0400), made under a
/// dotted name and renamed into place once the key is written, so the collector never sees a
/// VM without its key. The VMM's uds path is `DIR/<name>/vsock`: the collector listens at
/// `DIR/<name>/vsock_<PORT>`, where the guest's connections to that port arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// The VM's name: the collector's name for its stream, the guest's `--stream-name`.
    pub name: String,
    /// `DIR/<name>`.
    pub dir: PathBuf,
    /// The VM's stream key, 64 lowercase hex digits (None: a VM without one, for a collector
    /// run with `--no-auth`).
    pub key: Option<String>,
}

impl VmEntry {
    /// Creates `vm_dir/<name>/` with a fresh random key.
    pub fn create(vm_dir: &Path, name: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
            &mut bytes,
        )
        .context("reading /dev/urandom")?;
        let key: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Self::lay_out(vm_dir, name, Some(key))
    }

    /// Creates `vm_dir/<name>/` without a key: only a collector with `--no-auth` listens for
    /// it (the two-sided runs that show what a key prevents).
    pub fn create_without_key(vm_dir: &Path, name: &str) -> Result<Self> {
        Self::lay_out(vm_dir, name, None)
    }

    fn lay_out(vm_dir: &Path, name: &str, key: Option<String>) -> Result<Self> {
        let dir = vm_dir.join(name);
        let staging = vm_dir.join(format!(".{name}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        let key_file = staging.join("key");
        if let Some(key) = &key {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&key_file)
                .with_context(|| format!("creating {}", key_file.display()))?;
            file.write_all(format!("{key}\n").as_bytes())
                .with_context(|| format!("writing {}", key_file.display()))?;
        }
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
        Ok(Self {
            name: name.to_string(),
            dir,
            key,
        })
    }

    /// The VM's vsock bridge: its uds path is `DIR/<name>/vsock`.
    pub fn vsock(&self) -> VsockConfig {
        VsockConfig::in_dir(&self.dir)
    }

    /// The key file's contents as the guest gets it at [`GUEST_KEY_PATH`] (None: no key).
    pub fn key_file(&self) -> Option<Vec<u8>> {
        self.key.as_ref().map(|key| format!("{key}\n").into_bytes())
    }
}

/// The name of the bridge binary (`$GUARD_VHOST_VSOCK` overrides it).
pub fn bridge_binary() -> String {
    std::env::var("GUARD_VHOST_VSOCK").unwrap_or_else(|_| "vhost-device-vsock".to_string())
}

/// A running `vhost-device-vsock`, killed on drop.
pub(super) struct Bridge {
    child: Child,
    /// The vhost-user socket QEMU connects to.
    pub vhost_socket: PathBuf,
}

/// How long the bridge may take to create its vhost-user socket.
const BRIDGE_START_TIMEOUT: Duration = Duration::from_secs(30);

impl Bridge {
    pub fn start(config: &VsockConfig, run_dir: &Path) -> Result<Self> {
        let socket_dir = config
            .uds
            .parent()
            .context("the vsock uds path has no parent folder")?;
        std::fs::create_dir_all(socket_dir)
            .with_context(|| format!("creating {}", socket_dir.display()))?;
        let vhost_socket = socket_dir.join("vhost-user");
        if vhost_socket.as_os_str().len() > 100 || config.uds.as_os_str().len() > 90 {
            bail!(
                "vsock socket paths under {} are too long for a Unix socket (107 bytes): use a \
                 shorter folder",
                socket_dir.display()
            );
        }
        let _ = std::fs::remove_file(&vhost_socket);
        let _ = std::fs::remove_file(&config.uds);
        let log = std::fs::File::create(run_dir.join("vhost-device-vsock.log"))
            .with_context(|| format!("creating a log in {}", run_dir.display()))?;
        let mut command = Command::new(bridge_binary());
        command
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                vhost_socket.display(),
                config.uds.display()
            ))
            // Its own diagnostics in the run folder; RUST_LOG=debug shows every packet.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a test may stop it (a stalled link) without stopping us.
        command.process_group(0);
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (run `cargo xtask setup`, which installs it)",
                bridge_binary()
            )
        })?;
        let mut bridge = Bridge {
            child,
            vhost_socket,
        };
        let started = Instant::now();
        while !bridge.vhost_socket.exists() {
            if let Some(status) = bridge.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before creating {}: see {}",
                    bridge_binary(),
                    bridge.vhost_socket.display(),
                    run_dir.join("vhost-device-vsock.log").display()
                );
            }
            if started.elapsed() > BRIDGE_START_TIMEOUT {
                bail!(
                    "{} did not create {} within {} s",
                    bridge_binary(),
                    bridge.vhost_socket.display(),
                    BRIDGE_START_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bridge)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // A stopped bridge must be continued to die promptly.
        // SAFETY: plain signals to a child we own.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's share of the bridge: guest memory it can map, the vhost-user chardev, the device.
/// `machine_options` go on `-M` (microvm's come first: `microvm,acpi=off`).
pub(super) fn qemu_args(machine: Machine, memory_mib: u32, vhost_socket: &Path) -> Vec<String> {
    let device = match machine {
        Machine::Microvm => "vhost-user-vsock-device,chardev=vsock0",
        Machine::Pc => "vhost-user-vsock-pci,chardev=vsock0",
    };
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", vhost_socket.display()),
        "-device".into(),
        device.into(),
    ]
}

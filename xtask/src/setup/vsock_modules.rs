//! The vsock modules of a Debian guest kernel. Debian builds virtio, virtio-pci and vsock as
//! modules, and the harness's initramfs has none: setup takes the few the vsock tests need out
//! of the kernel's .deb (kept in `.debs`), in the order `modules.dep` gives, decompressed
//! (busybox's insmod reads plain ELF), into `<kernel>/modules/`, and lists them in the
//! manifest's `vsock_modules=` line, which the harness loads in that order.
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::debian_kernels::unpack_deb;
use super::*;

/// What the guest needs for `vhost-user-vsock-pci`: the PCI transport and the vsock socket
/// family's virtio transport (their dependencies follow from modules.dep).
const WANTED: &[&str] = &["virtio_pci", "vmw_vsock_virtio_transport"];

/// Adds the modules to a kernel folder whose manifest lacks them. Ok(false) when the kernel
/// needs none (its manifest says `machine=microvm`: the lean kernels have vsock built in).
pub(super) fn add_vsock_modules(
    root: &Path,
    dir: &Path,
    manifest: &BTreeMap<String, String>,
) -> Result<bool> {
    if manifest.contains_key("vsock_modules") || manifest.get("machine").is_some() {
        return Ok(false);
    }
    let Some(deb_name) = manifest.get("deb") else {
        return Ok(false);
    };
    let deb = root.join(".debs").join(deb_name);
    if !deb.is_file() {
        bail!(
            "{} is gone: rerun with --refresh-kernels to fetch the kernel with its vsock modules",
            deb.display()
        );
    }
    let staging = dir.join("modules.partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    unpack_deb(
        &deb,
        &staging,
        &[
            "./lib/modules/*/kernel/net/vmw_vsock/*",
            "./lib/modules/*/kernel/drivers/virtio/*",
        ],
    )?;
    // The package carries no modules.dep (depmod makes it at install): each module's own
    // `.modinfo` names what it depends on.
    let mut modules: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
    for file in module_files(&staging.join("lib/modules"))? {
        let bytes = decompress(&file)?;
        let depends = modinfo_depends(&bytes);
        modules.insert(
            module_name(&file.to_string_lossy()).to_string(),
            (bytes, depends),
        );
    }
    let deps = modules
        .iter()
        .map(|(name, (_, depends))| (name.clone(), depends.clone()))
        .collect();
    let order = load_order(&deps, WANTED)?;
    let out = dir.join("modules");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let mut names = Vec::new();
    for name in &order {
        let file = format!("{name}.ko");
        fs::write(out.join(&file), &modules[name].0)?;
        names.push(file);
    }
    let _ = fs::remove_dir_all(&staging);
    let manifest_path = dir.join(paths::KERNEL_MANIFEST);
    let mut text = fs::read_to_string(&manifest_path)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("vsock_modules={}\n", names.join(" ")));
    fs::write(&manifest_path, text)?;
    println!(
        "setup: vsock modules for {}: {}",
        dir.display(),
        names.join(" ")
    );
    Ok(true)
}

/// Every `.ko` (compressed or not) under `dir`.
fn module_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().contains(".ko") {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        // modinfo names use `_` where file names may use `-`.
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// The modules to load for `wanted` (by name, any compression), dependencies first.
fn load_order(deps: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> Result<Vec<String>> {
    fn visit(
        module: &str,
        deps: &BTreeMap<String, Vec<String>>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|m| m == module) {
            return Ok(());
        }
        if depth > 32 {
            bail!("modules.dep has a cycle through {module}");
        }
        // Not in the package: built into the kernel (6.12 builds virtio and virtio_pci in).
        let Some(needs) = deps.get(module) else {
            return Ok(());
        };
        for dep in needs {
            visit(dep, deps, order, depth + 1)?;
        }
        order.push(module.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, deps, &mut order, 0)?;
    }
    Ok(order)
}

/// `kernel/net/vmw_vsock/vsock.ko.xz` → `vsock`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} on {}", path.display()))?;
            if !out.status.success() {
                bail!("{tool} -d {} failed ({})", path.display(), out.status);
            }
            Ok(out.stdout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let deps: BTreeMap<String, Vec<String>> = [
            ("virtio", ""),
            ("virtio_ring", "virtio"),
            ("virtio_pci", "virtio_ring,virtio"),
            ("vsock", ""),
            ("vmw_vsock_virtio_transport_common", "vsock,virtio"),
            (
                "vmw_vsock_virtio_transport",
                "vmw_vsock_virtio_transport_common,virtio_ring,vsock",
            ),
        ]
        .into_iter()
        .map(|(name, depends)| {
            let modinfo = format!("\0license=GPL\0depends={depends}\0vermagic=6.1\0");
            (name.to_string(), modinfo_depends(modinfo.as_bytes()))
        })
        .collect();
        let order = load_order(&deps, WANTED).unwrap();
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        // A module the package lacks is built in: nothing to load.
        assert!(load_order(&deps, &["built_in"]).unwrap().is_empty());
    }
}

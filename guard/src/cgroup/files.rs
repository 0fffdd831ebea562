//! A cgroup's files read and written one by one: the one write guard makes there names the
//! file and the value; a missing controller file says which parent does not pass the
//! controller on. guard's own (feature `internals`): an agent reads a report's figures, or
//! writes its limits through its runtime.
use std::{fs, io, path::Path};

use super::{CgroupError, ControllerOff, read_optional};

/// The text of the file `name` of `cgroup`, trimmed; None when it does not exist.
pub fn read(cgroup: &Path, name: &str) -> Result<Option<String>, CgroupError> {
    Ok(read_optional(&cgroup.join(name))?.map(|text| text.trim().to_string()))
}

/// The ids listed in `cgroup`'s `name` (`cgroup.procs`, `cgroup.threads`), one per line; none
/// when the file does not exist (the cgroup was removed meanwhile).
pub fn read_ids(cgroup: &Path, name: &str) -> Result<Vec<u32>, CgroupError> {
    Ok(read_optional(&cgroup.join(name))?
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

/// Writes `value` to the file `name` of `cgroup`: the one way guard changes a cgroup. The file
/// must exist: cgroupfs refuses to create one with EACCES, which would hide that the kernel
/// simply lacks it (no `memory.swap.max` without CONFIG_SWAP), so a missing file is NotFound.
pub fn write(cgroup: &Path, name: &str, value: &str) -> Result<(), CgroupError> {
    use std::io::Write as _;
    let path = cgroup.join(name);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound
                && let Some(off) = controller_off(cgroup, name, value)
            {
                return CgroupError::ControllerOff(Box::new(off));
            }
            CgroupError::Write {
                path,
                value: value.to_string(),
                source,
            }
        })
}

/// Why a controller's file (`memory.max`) is missing from an existing cgroup, when the reason
/// is that its parent does not pass the controller on. None when that is not the reason.
fn controller_off(cgroup: &Path, name: &str, value: &str) -> Option<ControllerOff> {
    let (controller, _) = name.split_once('.')?;
    if controller == "cgroup" || !cgroup.is_dir() {
        return None;
    }
    let parent = cgroup.parent()?;
    let parent_file =
        |file: &str| fs::read_to_string(parent.join(file)).map(|text| text.trim().to_string());
    let enabled = parent_file("cgroup.subtree_control").ok()?;
    if enabled.split_whitespace().any(|on| on == controller) {
        return None;
    }
    Some(ControllerOff {
        path: cgroup.join(name),
        value: value.to_string(),
        controller: controller.to_string(),
        parent: parent.to_path_buf(),
        enabled,
        available: parent_file("cgroup.controllers").unwrap_or_default(),
    })
}

//! The attach signal: `cgroup:cgroup_attach_task`. Keeps the task → container map right when a
//! task moves between cgroups (the OOM victim's container comes from that map). It streams
//! nothing.
use guard_common::TracepointOffsets;

use super::{Formats, Program, Signal, SignalError, required};

pub(crate) static SIGNAL: Signal = Signal {
    name: "attach",
    programs: &[Program::tracepoint("cgroup", "cgroup_attach_task")],
    read_offsets,
};

fn read_offsets(formats: &Formats<'_>, offsets: &mut TracepointOffsets) -> Result<(), SignalError> {
    let format = formats.read("cgroup", "cgroup_attach_task")?;
    offsets.attach_dst_root = required(&format, "dst_root", 4)?;
    offsets.attach_dst_level = required(&format, "dst_level", 4)?;
    offsets.attach_dst_id = required(&format, "dst_id", 8)?;
    offsets.attach_pid = required(&format, "pid", 4)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::signals::fixtures::{FakeTracefs, KERNELS};

    #[test]
    fn reads_the_attach_layout_of_every_captured_kernel() {
        for kernel in KERNELS {
            let offsets = FakeTracefs::new(kernel, "attach").offsets();
            assert_eq!(offsets.attach_dst_id, 16, "{kernel}");
            assert_eq!(offsets.attach_pid, 24, "{kernel}");
        }
    }
}

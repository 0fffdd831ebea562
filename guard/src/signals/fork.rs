//! The fork signal: `sched:sched_process_fork`. Counts forks per container, tracks the child in
//! the task map, streams the fork.
use guard_common::{EventKind, ForkEvent, TracepointOffsets};
use serde::Serialize;

use super::{DecodeError, Formats, Program, Signal, SignalError, Streamed, read_record, required};
use crate::counters::Delivered;

pub(crate) static SIGNAL: Signal = Signal {
    name: "fork",
    programs: &[Program::tracepoint("sched", "sched_process_fork")],
    read_offsets,
};

fn read_offsets(formats: &Formats<'_>, offsets: &mut TracepointOffsets) -> Result<(), SignalError> {
    let format = formats.read("sched", "sched_process_fork")?;
    offsets.fork_parent_pid = required(&format, "parent_pid", 4)?;
    offsets.fork_child_pid = required(&format, "child_pid", 4)?;
    Ok(())
}

/// A task in a watched container forked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fork {
    /// Thread id of the forking task.
    pub parent_pid: u32,
    /// Thread id of the new task.
    pub child_pid: u32,
}

impl Streamed for Fork {
    const KIND: EventKind = EventKind::Fork;

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let fork: ForkEvent = read_record(bytes, "fork event")?;
        Ok(Fork {
            parent_pid: fork.parent_pid,
            child_pid: fork.child_pid,
        })
    }

    fn tally(&self, delivered: &mut Delivered) {
        delivered.forks += 1;
    }
}

#[cfg(test)]
mod tests {
    use guard_common::{EventHeader, EventKind};

    use super::*;
    use crate::signals::fixtures::{FakeTracefs, as_bytes};

    #[test]
    fn reads_both_fork_layouts() {
        // 6.1 and 6.12 inline the comms; 6.18 makes them __data_loc and moves the pids.
        for (kernel, parent, child) in [("6.1", 24, 44), ("6.12", 24, 44), ("6.18", 12, 20)] {
            let offsets = FakeTracefs::new(kernel, "fork").offsets();
            assert_eq!(
                (offsets.fork_parent_pid, offsets.fork_child_pid),
                (parent, child),
                "{kernel}"
            );
        }
    }

    #[test]
    fn decodes_a_fork_and_refuses_a_short_one() {
        let record = ForkEvent {
            header: EventHeader {
                kind: EventKind::Fork as u16,
                ..Default::default()
            },
            parent_pid: 10,
            child_pid: 11,
        };
        let bytes = as_bytes(&record);
        assert_eq!(
            Fork::decode(&bytes),
            Ok(Fork {
                parent_pid: 10,
                child_pid: 11
            })
        );
        assert!(matches!(
            Fork::decode(&bytes[..36]),
            Err(DecodeError::Short { needed: 40, .. })
        ));
    }
}

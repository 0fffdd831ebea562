//! The exit signal: `sched:sched_process_exit`. Counts exits per container and forgets the task
//! in the task map. It streams nothing: exits are counted exactly in the kernel.
use super::{Program, Signal, no_offsets};

pub(crate) static SIGNAL: Signal = Signal {
    name: "exit",
    programs: &[Program::tracepoint("sched", "sched_process_exit")],
    read_offsets: no_offsets,
};

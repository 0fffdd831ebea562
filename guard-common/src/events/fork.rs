use crate::EventHeader;

/// A fork inside a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Thread id of the forking task, as the tracepoint reports it.
    pub parent_pid: u32,
    /// Thread id of the new task.
    pub child_pid: u32,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 40);

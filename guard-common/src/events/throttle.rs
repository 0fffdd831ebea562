use crate::EventHeader;

/// Individual events of one container suppressed in the window that just closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThrottleEvent {
    pub header: EventHeader,
    pub suppressed: u64,
    pub window_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ThrottleEvent>() == 48);

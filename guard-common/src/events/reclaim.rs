use crate::EventHeader;

/// A finished memcg direct reclaim in a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub _pad0: u32,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}
const _: () = assert!(core::mem::size_of::<ReclaimEvent>() == 56);

use crate::EventHeader;

/// Longest command name the kernel keeps (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// The OOM killer's victim. `header.cgroup_id` is the victim's container from the task map
/// (0: the victim was in no watched container), never the allocating task's cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomVictimEvent {
    pub header: EventHeader,
    pub victim_pid: u32,
    /// Counter row the kill was attributed to ([`crate::GLOBAL_SLOT`] when in no container).
    pub slot: u32,
    /// cgroup of the task whose allocation triggered the OOM (`bpf_get_current_cgroup_id`).
    pub trigger_cgroup_id: u64,
    /// Sizes in kB as the tracepoint reports them (0 where the kernel lacks the field).
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub oom_score_adj: i16,
    /// 1 when the kernel's tracepoint carried the rss fields above.
    pub has_rss: u8,
    pub _pad0: [u8; 5],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<OomVictimEvent>() == 104);

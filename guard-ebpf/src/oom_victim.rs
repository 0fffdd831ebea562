//! The oom_victim signal: `oom:mark_victim`, the OOM killer chose a victim.
//!
//! The program runs in the task whose allocation triggered the OOM, so
//! `bpf_get_current_cgroup_id()` names that task's cgroup, not the victim's (a known bug in two
//! public tools). The victim's container comes from the task map instead; a victim in no
//! container is counted on the global row.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use guard_common::{ABSENT, COMM_LEN, Counter, EventKind, GLOBAL_SLOT, OomVictimEvent};

use crate::{container, emit, maps, tasks};

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    on_mark_victim(&ctx);
    0
}

#[inline(always)]
fn read_optional<T: Default>(ctx: &TracePointContext, offset: u16) -> T {
    if offset == ABSENT {
        return T::default();
    }
    unsafe { ctx.read_at(offset as usize) }.unwrap_or_default()
}

#[inline(always)]
fn on_mark_victim(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    let offsets = &config.offsets;
    let victim_pid: u32 = unsafe { ctx.read_at(offsets.oom_pid as usize) }.ok()?;
    let (slot, cgroup_id) = match tasks::container_of(victim_pid) {
        Some(container) => (container.slot, container.cgroup_id),
        None => (GLOBAL_SLOT, 0),
    };
    container::bump(slot, Counter::OomKills, 1);

    let mut comm = [0u8; COMM_LEN];
    if offsets.oom_comm != ABSENT {
        // __data_loc: the low 16 bits are the string's offset in the record.
        let location: u32 = read_optional(ctx, offsets.oom_comm);
        let source = unsafe { (ctx.as_ptr() as *const u8).add((location & 0xffff) as usize) };
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(source, &mut comm) };
    }
    // OOM kills are rare and are the evidence itself: never rate-bounded.
    let event = OomVictimEvent {
        header: emit::header(EventKind::OomVictim, cgroup_id, unsafe {
            bpf_ktime_get_ns()
        }),
        victim_pid,
        slot,
        trigger_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        total_vm_kb: read_optional(ctx, offsets.oom_total_vm),
        anon_rss_kb: read_optional(ctx, offsets.oom_anon_rss),
        file_rss_kb: read_optional(ctx, offsets.oom_file_rss),
        shmem_rss_kb: read_optional(ctx, offsets.oom_shmem_rss),
        oom_score_adj: read_optional(ctx, offsets.oom_score_adj),
        has_rss: (offsets.oom_anon_rss != ABSENT) as u8,
        _pad0: [0; 5],
        comm,
    };
    emit::emit(config, EventKind::OomVictim, event);
    Some(())
}

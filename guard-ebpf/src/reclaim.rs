//! The reclaim signal: `vmscan:mm_vmscan_memcg_reclaim_{begin,end}`, memory pressure. Direct
//! reclaim runs in the charging task's context, so the current task's container is the one
//! under pressure.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use guard_common::{Counter, EventKind, ReclaimEvent};

use crate::{
    container, emit,
    maps::{self, RECLAIM_START},
    throttle,
};

#[tracepoint]
pub fn mm_vmscan_memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    on_begin();
    0
}

#[tracepoint]
pub fn mm_vmscan_memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    on_end(&ctx);
    0
}

#[inline(always)]
fn on_begin() -> Option<()> {
    let config = maps::active_config()?;
    container::current_container(config)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RECLAIM_START.insert(container::current_tid(), now, 0);
    Some(())
}

#[inline(always)]
fn on_end(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    let tid = container::current_tid();
    let started = unsafe { RECLAIM_START.get(tid) }.copied()?;
    let _ = RECLAIM_START.remove(tid);
    let container = container::current_container(config)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let duration_ns = now.saturating_sub(started);
    let offset = config.offsets.reclaim_nr_reclaimed as usize;
    let nr_reclaimed: u64 = unsafe { ctx.read_at(offset) }.unwrap_or(0);
    container::bump(container.slot, Counter::ReclaimRuns, 1);
    container::bump(container.slot, Counter::ReclaimNs, duration_ns);
    container::bump(container.slot, Counter::ReclaimPages, nr_reclaimed);
    if !throttle::admit(config, container.slot, container.cgroup_id, now) {
        return None;
    }
    let event = ReclaimEvent {
        header: emit::header(EventKind::Reclaim, container.cgroup_id, now),
        tid,
        _pad0: 0,
        duration_ns,
        nr_reclaimed,
    };
    emit::emit(config, EventKind::Reclaim, event);
    Some(())
}

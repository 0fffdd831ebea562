//! The fork_denied signal: `syscalls:sys_exit_{clone,clone3,fork,vfork}` returning EAGAIN in
//! a container, and (tier 2, where the kernel has kprobes) a kretprobe on `pids_can_fork`.
//!
//! EAGAIN alone is ambiguous (pids.max, RLIMIT_NPROC and threads-max all give it): where the
//! kretprobe runs, it marks the calling thread when the pids controller refused the fork, and
//! the syscall-exit program then tags the denial as pids.max exactly; elsewhere the cause is
//! left `Inferred` and userspace reconciles with `pids.events`.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{kretprobe, tracepoint},
    programs::{RetProbeContext, TracePointContext},
};
use guard_common::{Counter, DenialCause, EventKind, ForkDeniedEvent};

use crate::{
    container, emit,
    maps::{self, PIDS_DENIED},
    record, throttle,
};

const EAGAIN: i64 = 11;

#[tracepoint]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    on_fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    on_fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_fork(ctx: TracePointContext) -> u32 {
    on_fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_vfork(ctx: TracePointContext) -> u32 {
    on_fork_exit(&ctx);
    0
}

/// Marks the thread whose fork the pids controller just refused.
#[kretprobe]
pub fn pids_can_fork_exit(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    // pids_can_fork returns int: only its low 32 bits are meaningful.
    if (ret as i32) < 0 {
        let _ = PIDS_DENIED.insert(container::current_tid(), 1, 0);
    }
    0
}

#[inline(always)]
fn on_fork_exit(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    let offsets = &config.offsets;
    let ret = record::syscall_ret(ctx, offsets.syscall_ret)?;
    // Every fork returns here twice (parent and child): the common case leaves at once. A
    // mark is set only when `pids_can_fork` refused, and then these syscalls return EAGAIN;
    // one left by a fork outside them (an io_uring worker's) is consumed at the thread's
    // next EAGAIN, as it was at its next fork before this path was made lean.
    if ret != -EAGAIN {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // Consume the mark whatever the container, so it cannot leak to a later call.
    let observed_pids_max = config.pids_kprobe != 0 && unsafe { PIDS_DENIED.get(tid) }.is_some();
    if observed_pids_max {
        let _ = PIDS_DENIED.remove(tid);
    }
    let container = container::current_container(config)?;
    container::bump(container.slot, Counter::ForkDenied, 1);
    let cause = if observed_pids_max {
        container::bump(container.slot, Counter::ForkDeniedPidsMax, 1);
        DenialCause::PidsMax
    } else {
        DenialCause::Inferred
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if !throttle::admit(config, container.slot, container.cgroup_id, now) {
        return None;
    }
    let syscall_nr: i32 = unsafe { ctx.read_at(offsets.syscall_nr as usize) }.unwrap_or(-1);
    let event = ForkDeniedEvent {
        header: emit::header(EventKind::ForkDenied, container.cgroup_id, now),
        tgid: (pid_tgid >> 32) as u32,
        tid,
        ret,
        cause: cause as u32,
        syscall_nr: syscall_nr as u32,
        // Only on the (rare) denial path: the fork path never pays for it.
        task_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    };
    emit::emit(config, EventKind::ForkDenied, event);
    Some(())
}

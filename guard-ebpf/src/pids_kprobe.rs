//! kretprobe on `pids_can_fork` (tier 2, where the kernel has kprobes): marks the calling
//! thread when the pids controller refused a fork, so the syscall-exit program can name
//! pids.max as the exact cause.
use aya_ebpf::{macros::kretprobe, programs::RetProbeContext};

use crate::{maps::PIDS_DENIED, watch};

#[kretprobe]
pub fn pids_can_fork_exit(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    // pids_can_fork returns int: only its low 32 bits are meaningful.
    if (ret as i32) < 0 {
        let _ = PIDS_DENIED.insert(watch::current_tid(), 1, 0);
    }
    0
}

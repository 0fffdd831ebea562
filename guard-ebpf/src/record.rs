//! Reading fields of a tracepoint's record. The loader gives each field's offset from tracefs;
//! where that offset is the one every kernel we know uses, the field is a direct load from the
//! record, else a probe read (a helper call, a good part of a small program's cost).
//!
//! Only where the layout is one: the verifier allows only constant offsets into the record,
//! and the kernel refuses to attach a program whose loads reach past the tracepoint's record,
//! so a program with a load for each known layout (`sched_process_fork`'s `child_pid` is at 44
//! on 6.1 and 6.12, at 20 in 6.18's 24-byte record) attaches nowhere.
use aya_ebpf::{EbpfContext, programs::TracePointContext};

/// A direct load of the `T` at the constant `OFFSET` in the record.
#[inline(always)]
fn load<T: Copy, const OFFSET: usize>(ctx: &TracePointContext) -> T {
    unsafe { *((ctx.as_ptr() as *const u8).add(OFFSET) as *const T) }
}

/// A `sys_exit_*` record's `ret` (offset 16 on every kernel we know).
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext, offset: u16) -> Option<i64> {
    match offset {
        16 => Some(load::<i64, 16>(ctx)),
        _ => unsafe { ctx.read_at(offset as usize) }.ok(),
    }
}

//! guard's eBPF programs: one file per hook, shared maps and helpers beside them.
#![no_std]
#![no_main]

mod attach;
mod emit;
mod exit;
mod fork;
mod fork_denied;
mod maps;
mod oom;
mod pids_kprobe;
mod reclaim;
mod watch;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: the tracing helpers we call are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

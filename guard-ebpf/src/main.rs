//! guard's eBPF programs: one file per hook, shared maps and helpers beside them.
#![no_std]
#![no_main]

mod emit;
mod fork;
mod maps;
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

//! guard's eBPF programs: one file per signal (its hooks), shared maps and helpers beside them.
#![no_std]
#![no_main]

// One file per signal (its hooks)…
mod attach;
mod exit;
mod fork;
mod fork_denied;
mod oom_victim;
mod reclaim;
mod throttle;
// …and what they share: the maps, container lookup and counters, the task map, record
// fields, ring-buffer output.
mod container;
mod emit;
mod maps;
mod record;
mod tasks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: the tracing helpers we call are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

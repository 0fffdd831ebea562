//! Rebuild the programs when `bpf-linker` changes (it is an undeclared build tool: cargo cannot
//! track it). Missing is not an error here: host-side checks (clippy) and builds of guard against
//! a prebuilt object (GUARD_EBPF_OBJECT) never link.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

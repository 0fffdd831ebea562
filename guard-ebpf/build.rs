//! Rebuild the programs when `bpf-linker` changes (it is an undeclared build tool: cargo cannot
//! track it). Missing is not an error here: host-side checks (clippy, AYA_BUILD_SKIP) never link.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

//! Library side of `xtask`: workspace paths and the guest VM harness, so integration tests
//! (`tests/tests/guest_vm.rs`) boot guests with the same code as `cargo xtask vm`.

pub mod paths;
pub mod vm;

//! Library side of `xtask`: workspace paths and the guest VM harness, so integration tests
//! (`tests/tests/guest/`) boot guests with the same code as `cargo xtask vm`.

pub mod paths;
pub mod progress;
pub mod vm;

#![no_std]
// A library target lets `guard/build.rs` declare this crate as a build dependency, so cargo
// rebuilds the embedded object when the programs change.

//! guard's guest-VM tests, in one binary: each boots the guest kernels (Debian's, and guard's
//! lean ones built from libkrunfw's config) under QEMU with xtask's harness and asserts from
//! the host on what the guest sends back. A mod per signal where a test is about one
//! (fork_denied, oom_victim), and per theme otherwise: the harness itself (vm), the lean
//! kernels' configs (kernels), the tier-0 fallback, the container runtime and what a hostile
//! container tries against it (tamper), the enforcement waves, the log stream over real vsock
//! (stream).
//!
//! A test that runs on every guest kernel is written once, as `f(kernel)`, and declared with
//! `per_kernel!(f)` (`guard_tests::guest`, which holds the kernel list): `cargo test` shows it
//! as `mod::f::linux_6_12`. Each such test boots its own guest per kernel, except the probe
//! suites (fork_denied, oom_victim, tier0), which share one boot per kernel.
//!
//! Requirements: see `vm.rs`. Under CI (`CI` set and not `false`/`0`) a missing requirement
//! fails the test: the guest suite is never skipped there.
mod agent;
mod fork_denied;
mod kernels;
mod oom_victim;
mod runtime;
mod stream;
mod tamper;
mod tenants;
mod tier0;
mod tier1;
mod vm;
mod volume;
mod waves;

//! Live events from kernel sources that need no tracing (tier 1).
// Without `internals` the tier's hub is their only user: some re-exports serve tests only.
#![cfg_attr(
    not(feature = "internals"),
    allow(unused_imports, reason = "re-exports for the tests and the binary")
)]
pub mod audit;
pub mod taskstats;

//! Live events from kernel sources that need no tracing (tier 1).
pub mod audit;
pub mod taskstats;

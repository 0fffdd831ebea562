//! Helpers shared by guard's integration tests.
pub mod host;

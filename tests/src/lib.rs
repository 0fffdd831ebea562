//! Helpers shared by guard's integration tests.
pub mod guest;
pub mod host;

//! One ring-buffer record per signal that streams events; each starts with an
//! [`crate::EventHeader`]. Signals that only count (exit) or only keep the task map (attach)
//! have no record.
mod fork;
mod fork_denied;
mod oom_victim;
mod reclaim;
mod throttle;

pub use fork::ForkEvent;
pub use fork_denied::{DenialCause, ForkDeniedEvent};
pub use oom_victim::{COMM_LEN, OomVictimEvent};
pub use reclaim::ReclaimEvent;
pub use throttle::ThrottleEvent;

//! The throttle signal: the rate bound on individual events (`guard-ebpf/src/throttle.rs`,
//! applied by the other signals' programs; no hook of its own). Counters stay exact; a throttle
//! record says how many individual events of a container were suppressed in a window.
use guard_common::{EventKind, ThrottleEvent};
use serde::Serialize;

use super::{DecodeError, Signal, Streamed, no_offsets, read_record};
use crate::{counters::Delivered, forensic};

pub(crate) static SIGNAL: Signal = Signal {
    name: "throttle",
    programs: &[],
    read_offsets: no_offsets,
};

/// Individual events of the container suppressed by the rate bound (counters stay exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Throttle {
    /// Individual events of the container not streamed in the window on that CPU.
    pub suppressed: u64,
    /// How long the window lasted, in nanoseconds: from its start to the first event after it
    /// closed (at least one second), which is when the record is written.
    pub window_ns: u64,
}

impl Streamed for Throttle {
    const KIND: EventKind = EventKind::Throttle;

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let throttle: ThrottleEvent = read_record(bytes, "throttle event")?;
        Ok(Throttle {
            suppressed: throttle.suppressed,
            window_ns: throttle.window_ns,
        })
    }

    fn tally(&self, delivered: &mut Delivered) {
        delivered.throttle_records += 1;
        delivered.suppressed += self.suppressed;
    }
}

impl Throttle {
    /// The forensic log's `throttle` record of it (docs/LOG-FORMAT.md): the rate bound is one
    /// per container for every kind, so its kind is `any`, and the window is in milliseconds.
    pub fn to_record(&self) -> forensic::Throttle {
        forensic::Throttle {
            event_kind: "any".to_string(),
            suppressed: self.suppressed,
            window_ms: self.window_ns / 1_000_000,
        }
    }
}

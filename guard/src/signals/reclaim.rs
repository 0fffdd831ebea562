//! The reclaim signal: `vmscan:mm_vmscan_memcg_reclaim_{begin,end}`, memory pressure. Direct
//! reclaim runs in the charging task's context, so the current task's container is the one
//! under pressure; the programs time each run and count the pages it reclaimed.
use guard_common::{EventKind, ReclaimEvent, TracepointOffsets};
use serde::Serialize;

use super::{DecodeError, Formats, Program, Signal, SignalError, Streamed, read_record, required};
use crate::counters::Delivered;

pub(crate) static SIGNAL: Signal = Signal {
    name: "reclaim",
    programs: &[
        Program::tracepoint("vmscan", "mm_vmscan_memcg_reclaim_begin"),
        Program::tracepoint("vmscan", "mm_vmscan_memcg_reclaim_end"),
    ],
    read_offsets,
};

fn read_offsets(formats: &Formats<'_>, offsets: &mut TracepointOffsets) -> Result<(), SignalError> {
    let format = formats.read("vmscan", "mm_vmscan_memcg_reclaim_end")?;
    offsets.reclaim_nr_reclaimed = required(&format, "nr_reclaimed", 8)?;
    Ok(())
}

/// A memcg direct reclaim finished in a watched container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reclaim {
    /// Thread id of the task that reclaimed (the one charging memory).
    pub tid: u32,
    /// How long the run took, in nanoseconds.
    pub duration_ns: u64,
    /// Pages it reclaimed.
    pub nr_reclaimed: u64,
}

impl Streamed for Reclaim {
    const KIND: EventKind = EventKind::Reclaim;

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let reclaim: ReclaimEvent = read_record(bytes, "reclaim event")?;
        Ok(Reclaim {
            tid: reclaim.tid,
            duration_ns: reclaim.duration_ns,
            nr_reclaimed: reclaim.nr_reclaimed,
        })
    }

    fn tally(&self, delivered: &mut Delivered) {
        delivered.reclaims += 1;
    }
}

#[cfg(test)]
mod tests {
    use crate::signals::fixtures::{FakeTracefs, KERNELS};

    #[test]
    fn reads_nr_reclaimed_of_every_captured_kernel() {
        for kernel in KERNELS {
            let offsets = FakeTracefs::new(kernel, "reclaim").offsets();
            assert_eq!(offsets.reclaim_nr_reclaimed, 8, "{kernel}");
        }
    }
}

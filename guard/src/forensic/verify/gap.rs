//! The one seq jump a log may hold: right before a `gap` record that names exactly the seqs
//! missing (the writer could not write them), with the chain unbroken around it.
use super::{Defect, payload_of};
use crate::forensic::record::{Gap, kinds};

/// Checks a record whose `seq` is not the `expected` one, or whose kind is `gap`: only a gap
/// naming exactly `expected..=seq - 1` (its kinds adding up to as many) passes.
pub(super) fn check(line: &[u8], kind: &str, seq: u64, expected: u64) -> Result<(), Defect> {
    if kind != kinds::GAP {
        return Err(Defect::SeqMismatch {
            found: seq,
            expected,
        });
    }
    let gap: Gap = payload_of(line)?;
    match gap.mismatch(expected, seq) {
        Some(detail) => Err(Defect::GapMismatch { detail }),
        None => Ok(()),
    }
}

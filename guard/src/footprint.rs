//! The agent's own memory: its footprint. Everything the guard buffers is bounded by a constant
//! or an option: the ring buffer, one drained batch, each subscriber's queue, the log's buffers
//! and the per-container registry. [`Footprint`] adds those bounds up, so that an agent can hold
//! its resident memory to "what it had after start + its footprint" (`guard selftest` checks
//! this under the bomb waves; docs/MEMORY.md has the numbers). It is not the guest budget
//! ([`crate::limits::GuestBudget`], what the containers share), of which it is the agent's
//! reserve.
use serde::Serialize;

use crate::{
    bpf::RingOptions,
    events::{DecodeError, GuardEvent},
    forensic::{self, record::MAX_LINE_BYTES},
};

/// Smallest ring-buffer record: the kernel's 8-byte record header and a fork event.
const SMALLEST_RECORD_BYTES: u64 = 8 + size_of::<guard_common::ForkEvent>() as u64;

/// Heap an event may own besides its struct (a victim's comm, a kernel file's counts).
const EVENT_HEAP_BYTES: u64 = 96;

/// What one watched container costs: its registry entry, its name and tallies in the reader,
/// its inotify watches. A generous round figure over the structs' sizes.
const PER_CONTAINER_BYTES: u64 = 1024;

/// Upper bounds, in bytes, of everything the guard buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// The ring buffer's data, mapped twice (the kernel maps it back to back so records can
    /// wrap), plus its two metadata pages.
    pub ring_buffer: u64,
    /// One drain's decoded records: the whole ring of the smallest records.
    pub drained_batch: u64,
    /// Every subscriber's queue, full.
    pub subscriber_queues: u64,
    /// The forensic log's file buffer and its largest record.
    pub log_buffers: u64,
    /// Per-container state for every container slot.
    pub registry: u64,
}

impl Footprint {
    /// The footprint of a guard whose ring buffer is `ring`, with subscribers of these
    /// capacities, with or without a forensic log.
    pub fn new(ring: &RingOptions, subscriber_capacities: &[usize], log: bool) -> Self {
        let ring_bytes = u64::from(ring.ring_bytes);
        let ring_buffer = 2 * ring_bytes + 2 * 4096;
        let records = ring_bytes / SMALLEST_RECORD_BYTES;
        let drained_batch = records * size_of::<Result<GuardEvent, DecodeError>>() as u64;
        let per_event = size_of::<GuardEvent>() as u64 + EVENT_HEAP_BYTES;
        let subscriber_queues = subscriber_capacities
            .iter()
            .map(|&capacity| capacity as u64 * per_event)
            .sum();
        let log_buffers = if log {
            (forensic::writer::BUFFER_BYTES + MAX_LINE_BYTES) as u64
        } else {
            0
        };
        let registry = u64::from(guard_common::MAX_CONTAINERS) * PER_CONTAINER_BYTES;
        Self {
            ring_buffer,
            drained_batch,
            subscriber_queues,
            log_buffers,
            registry,
        }
    }

    /// Everything at once: the most the guard's buffers can hold.
    pub fn total(&self) -> u64 {
        self.ring_buffer
            + self.drained_batch
            + self.subscriber_queues
            + self.log_buffers
            + self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_agent_footprint_fits_a_small_guest() {
        // `guard run` / `guard selftest`: the log's queue and one live printer.
        let footprint = Footprint::new(
            &RingOptions::default(),
            &[crate::sinks::event_log::QUEUE_EVENTS, 4096],
            true,
        );
        assert_eq!(footprint.ring_buffer, 2 * 256 * 1024 + 8192);
        // A tenth of a 128 MiB guest at most, on top of what the agent holds after start.
        assert!(footprint.total() < 13 << 20, "{footprint:?}");
    }

    #[test]
    fn queues_scale_the_footprint() {
        let small = Footprint::new(&RingOptions::default(), &[1000], false);
        let large = Footprint::new(&RingOptions::default(), &[2000], false);
        assert_eq!(
            large.subscriber_queues,
            2 * small.subscriber_queues,
            "{small:?} {large:?}"
        );
        assert_eq!(small.log_buffers, 0);
    }
}

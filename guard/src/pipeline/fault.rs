//! Fault injection for tests of the reader's recovery (feature `fault-injection` exposes it
//! through `Guard::inject_reader_panic`; the checks cost three relaxed loads per drain).
use std::sync::atomic::{AtomicU32, Ordering};

/// Where an injected panic strikes a drain (feature `fault-injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Before any record is read: nothing is lost, the restart reads them all.
    BeforeReading,
    /// After the batch left the ring buffer, before it was counted: the batch is lost, and the
    /// sequence check must say so.
    AfterReading,
    /// In the reader's task, outside the drain that catches panics: the task dies, as a bug
    /// there or an aborted task would end it. Nothing restarts it; the guard's health says so.
    OutsideDrain,
}

/// Test hook: panics the reader injects into its next drains (see `Guard::inject_reader_panic`).
#[derive(Debug, Default)]
pub struct InjectedPanics {
    before_reading: AtomicU32,
    after_reading: AtomicU32,
    outside_drain: AtomicU32,
}

impl InjectedPanics {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(crate) fn add(&self, point: FaultPoint) {
        self.counter(point).fetch_add(1, Ordering::Relaxed);
    }

    fn counter(&self, point: FaultPoint) -> &AtomicU32 {
        match point {
            FaultPoint::BeforeReading => &self.before_reading,
            FaultPoint::AfterReading => &self.after_reading,
            FaultPoint::OutsideDrain => &self.outside_drain,
        }
    }

    /// Panics if a panic is pending at `point` (consuming it).
    pub(crate) fn strike(&self, point: FaultPoint) {
        let take_one = |n: u32| n.checked_sub(1);
        if self
            .counter(point)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take_one)
            .is_ok()
        {
            panic!("injected reader fault ({point:?})");
        }
    }
}

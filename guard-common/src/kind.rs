//! Stable numeric event kinds, written in [`crate::EventHeader::kind`].
//!
//! One list makes the enum, [`EventKind::ALL`], the names and the decoding of raw values, so a
//! new kind is one line here (and its record in `events/`).

/// Number of distinct kind values a per-kind array must hold (kinds index it directly).
pub const EVENT_KIND_SLOTS: u32 = 16;

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $value:literal, $name:literal;)+) => {
        /// Stable numeric event kinds (values are never reused).
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EventKind {
            $($(#[$doc])* $variant = $value,)+
        }

        impl EventKind {
            /// Every kind, in numeric order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)+];

            /// The kind's stable name in logs and reports.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// The kind a header's raw value names, if any.
            pub const fn from_raw(raw: u16) -> Option<Self> {
                match raw {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        // Every value indexes the per-kind loss array.
        $(const _: () = assert!($value < EVENT_KIND_SLOTS);)+
    };
}

event_kinds! {
    /// A task in a watched container forked (`sched:sched_process_fork`).
    Fork = 1, "fork";
    /// A fork/clone in a watched container failed with EAGAIN (`syscalls:sys_exit_*`).
    ForkDenied = 3, "fork_denied";
    /// The OOM killer chose a victim (`oom:mark_victim`).
    OomVictim = 4, "oom_victim";
    /// A memcg direct reclaim finished in a watched container (`vmscan:*memcg_reclaim_end`).
    Reclaim = 5, "reclaim";
    /// Individual events of a container were suppressed by the rate bound (counters stay exact).
    Throttle = 7, "throttle";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_list_agrees_with_itself() {
        for &kind in EventKind::ALL {
            assert_eq!(EventKind::from_raw(kind as u16), Some(kind));
        }
        assert_eq!(EventKind::from_raw(2), None);
        assert_eq!(EventKind::ForkDenied.name(), "fork_denied");
        assert!(
            EventKind::ALL
                .windows(2)
                .all(|w| (w[0] as u16) < (w[1] as u16))
        );
    }
}

//! The ring-buffer decoder on arbitrary ring-buffer records: never panics, reads only the record's
//! own bytes, and reports what the header says.
use guard::EventDetail;
use guard::internals::{DecodeError, decode};
use guard_common::{
    COMM_LEN, EventHeader, EventKind, ForkDeniedEvent, ForkEvent, OomVictimEvent, ReclaimEvent,
    ThrottleEvent,
};

/// Size of the record a kind value announces.
fn record_size(kind: EventKind) -> usize {
    match kind {
        EventKind::Fork => size_of::<ForkEvent>(),
        EventKind::ForkDenied => size_of::<ForkDeniedEvent>(),
        EventKind::OomVictim => size_of::<OomVictimEvent>(),
        EventKind::Reclaim => size_of::<ReclaimEvent>(),
        EventKind::Throttle => size_of::<ThrottleEvent>(),
    }
}

fn field<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    data[at..at + N].try_into().unwrap()
}

pub fn run(data: &[u8]) {
    let header_len = size_of::<EventHeader>();
    match decode(data) {
        Ok(event) => {
            // The header as the ABI lays it out (native endian, like the kernel writes it).
            let kind = u16::from_ne_bytes(field(data, 0));
            let ring = event.ring.expect("a decoded record has its ring position");
            assert_eq!(ring.cpu, u32::from_ne_bytes(field(data, 4)));
            assert_eq!(ring.seq, u64::from_ne_bytes(field(data, 8)));
            assert_eq!(event.container, None, "the hub attributes, not the decoder");
            assert_eq!(event.ktime_ns, u64::from_ne_bytes(field(data, 16)));
            assert_eq!(event.cgroup_id, u64::from_ne_bytes(field(data, 24)));
            let kind = EventKind::from_raw(kind).expect("decoded an unknown kind");
            assert_eq!(event.detail.kind_name(), kind.name());
            let size = record_size(kind);
            assert!(
                data.len() >= size,
                "decoded {} bytes of a {size}-byte record",
                data.len()
            );
            // Trailing bytes are not part of the record.
            assert_eq!(decode(&data[..size]).as_ref(), Ok(&event));
            if let EventDetail::OomVictim(victim) = &event.detail {
                let comm = &victim.comm;
                assert!(!comm.contains('\0'), "{comm:?}");
                // Lossy decoding replaces each bad byte with U+FFFD (3 bytes).
                assert!(comm.len() <= 3 * COMM_LEN, "{comm:?}");
                assert_eq!(victim.outside_containers, event.cgroup_id == 0);
            }
            guard::forensic::serde_json::to_string(&event).unwrap();
        }
        Err(DecodeError::Short { len, needed, what }) => {
            assert_eq!(len, data.len());
            assert!(len < needed, "{what}: {len} bytes are enough for {needed}");
            if len >= header_len {
                let kind = EventKind::from_raw(u16::from_ne_bytes(field(data, 0)))
                    .expect("a short record of an unknown kind");
                assert_eq!(needed, record_size(kind));
            } else {
                assert_eq!(needed, header_len);
            }
        }
        Err(DecodeError::UnknownKind { kind }) => {
            assert!(data.len() >= header_len);
            assert_eq!(kind, u16::from_ne_bytes(field(data, 0)));
            assert!(EventKind::from_raw(kind).is_none());
        }
    }
}

//! One event or summary as it is appended to the forensic log: the payload's bytes, written
//! field by field for the kinds that storm.
use super::EventLogError;
use crate::sinks::summary::{EventPayload, Step};
use crate::{
    events::{EventDetail, GuardEvent},
    forensic::{LogWriter, kinds, record::Payload},
};

/// The payload as it is logged. The rate-bounded kinds made of integers (fork, reclaim) are
/// written directly: serde's flattening and per-key escaping cost as much as the rest of the
/// line. The bytes are serde_json's for [`EventPayload`] (a test holds every kind to it); the
/// other kinds go through serde.
pub(super) struct LoggedPayload<'a>(pub(super) EventPayload<'a>);

impl Payload for LoggedPayload<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let EventPayload {
            ring,
            ktime_ns,
            cgroup_id,
            source,
            detail,
        } = &self.0;
        // The kind's own fields after the common head, each key with its comma.
        let fields: &[(&[u8], u64)] = match detail {
            EventDetail::Fork(fork) => &[
                (
                    b",\"kind\":\"fork\",\"parent_pid\":",
                    u64::from(fork.parent_pid),
                ),
                (b",\"child_pid\":", u64::from(fork.child_pid)),
            ],
            EventDetail::Reclaim(reclaim) => &[
                (b",\"kind\":\"reclaim\",\"tid\":", u64::from(reclaim.tid)),
                (b",\"duration_ns\":", reclaim.duration_ns),
                (b",\"nr_reclaimed\":", reclaim.nr_reclaimed),
            ],
            _ => return serde_json::to_writer(out, &self.0),
        };
        out.push(b'{');
        if let Some(ring) = ring {
            push_field(out, b"\"cpu\":", u64::from(ring.cpu));
            push_field(out, b",\"seq\":", ring.seq);
            out.push(b',');
        }
        push_field(out, b"\"ktime_ns\":", *ktime_ns);
        push_field(out, b",\"cgroup_id\":", *cgroup_id);
        // Source names are plain ASCII identifiers: no escaping needed.
        out.extend_from_slice(b",\"source\":\"");
        out.extend_from_slice(source.name().as_bytes());
        out.push(b'"');
        for (key, value) in fields {
            push_field(out, key, *value);
        }
        out.push(b'}');
        Ok(())
    }
}

/// `key` (its quotes, colon and any comma before it) and an integer, as serde_json writes it.
fn push_field(out: &mut Vec<u8>, key: &[u8], value: u64) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends what the summarizer passed on: an event as its own record, or a summary.
pub(super) fn append_step(writer: &mut LogWriter, step: Step) -> Result<(), EventLogError> {
    match step {
        Step::Event(event) => append_event(writer, &event),
        Step::Summary(summary) => {
            writer.append(kinds::SUMMARY, summary.container.as_deref(), &summary)?;
            Ok(())
        }
    }
}

/// Appends one streamed event as its log record (`lost` and `throttle` in their own forms,
/// which their payloads give).
pub(crate) fn append_event(
    writer: &mut LogWriter,
    event: &GuardEvent,
) -> Result<(), EventLogError> {
    let container = event.container.as_deref();
    match &event.detail {
        EventDetail::Lost(lost) => {
            writer.append_lost(container, &lost.to_record(event.source()))?;
        }
        EventDetail::Throttle(throttle) => {
            writer.append_throttle(container, &throttle.to_record())?;
        }
        detail => {
            let payload = LoggedPayload(EventPayload::of(event));
            writer.append_payload(detail.kind_name(), container, &payload)?;
        }
    }
    Ok(())
}

//! The text of an `AUDIT_SYSCALL` record, parsed into a [`Denial`], and the audit serials
//! every record carries, watched for gaps.
//!
//! A record reads `audit(1733580000.123:456): arch=c000003e syscall=56 success=no exit=-11 …
//! ppid=12 pid=34 … comm="sh" exe="/bin/busybox" key="guard_fork_denied"`: the time in
//! seconds and milliseconds, the serial, then `name=value` fields. The kernel quotes a string
//! it can print and writes any other in hex without quotes (`comm=2F746D70`).
use std::collections::BTreeSet;

/// One fork, clone, clone3 or vfork that failed with EAGAIN, as audit recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The task that asked (its thread id: audit's `pid` is the kernel's task pid).
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its command name (16 bytes at most, the kernel's `comm`).
    pub comm: String,
    /// The syscall number in the record's `arch`.
    pub syscall: u32,
    /// When the syscall exited: the kernel's wall clock, as audit stamps it.
    pub time: AuditTime,
    /// The audit serial of the event, unique per boot.
    pub serial: u64,
}

/// Audit's timestamp: wall-clock seconds and milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditTime {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Milliseconds past them.
    pub millis: u32,
}

/// What in a record could not be read; the caller names the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record does not start with its stamp.
    #[error("no `audit(SECS.MILLIS:SERIAL):` stamp")]
    Stamp,
    /// A field guard needs is absent.
    #[error("no field `{0}`")]
    Missing(&'static str),
    /// A numeric field is no number (or too large).
    #[error("field `{field}` is not a number: {value:?}")]
    Number {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

/// The stamp of any audit record: its time and serial.
pub(super) fn stamp(text: &str) -> Result<(AuditTime, u64), RecordError> {
    let inner = text
        .strip_prefix("audit(")
        .and_then(|rest| rest.split_once("):"))
        .map(|(inner, _)| inner)
        .ok_or(RecordError::Stamp)?;
    let (time, serial) = inner.split_once(':').ok_or(RecordError::Stamp)?;
    let (secs, millis) = time.split_once('.').ok_or(RecordError::Stamp)?;
    let number = |value: &str| value.parse::<u64>().map_err(|_| RecordError::Stamp);
    Ok((
        AuditTime {
            secs: number(secs)?,
            millis: u32::try_from(number(millis)?).map_err(|_| RecordError::Stamp)?,
        },
        number(serial)?,
    ))
}

/// The value of `name=` in a record's fields and whether it was quoted; `None` if absent.
fn raw_field<'a>(text: &'a str, name: &str) -> Option<(&'a str, bool)> {
    let mut rest = text.split_once("): ").map_or(text, |(_, body)| body);
    loop {
        rest = rest.trim_start();
        let (key, after) = rest.split_once('=')?;
        let (value, quoted, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], true, &quoted[end + 1..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (&after[..end], false, &after[end..])
            }
        };
        if key == name {
            return Some((value, quoted));
        }
        rest = next;
    }
}

/// A string field as the kernel logs it: quoted text as is, otherwise hex bytes (or a
/// placeholder such as `(null)`, kept as is).
fn string_field(text: &str, name: &'static str) -> Result<String, RecordError> {
    let (value, quoted) = raw_field(text, name).ok_or(RecordError::Missing(name))?;
    if quoted {
        return Ok(value.to_string());
    }
    Ok(unhex(value).unwrap_or_else(|| value.to_string()))
}

fn unhex(value: &str) -> Option<String> {
    if !value.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..value.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(value.get(at..at + 2)?, 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

fn number_field(text: &str, name: &'static str) -> Result<u64, RecordError> {
    let (value, _) = raw_field(text, name).ok_or(RecordError::Missing(name))?;
    value.parse().map_err(|_| RecordError::Number {
        field: name,
        value: value.to_string(),
    })
}

/// The record's filter key (`key="…"`), if it has one.
pub(super) fn key(text: &str) -> Option<String> {
    string_field(text, "key").ok()
}

/// An `AUDIT_SYSCALL` record as a denial.
pub(super) fn denial(text: &str) -> Result<Denial, RecordError> {
    let (time, serial) = stamp(text)?;
    let small = |name: &'static str| -> Result<u32, RecordError> {
        let value = number_field(text, name)?;
        u32::try_from(value).map_err(|_| RecordError::Number {
            field: name,
            value: value.to_string(),
        })
    };
    Ok(Denial {
        pid: small("pid")?,
        ppid: small("ppid")?,
        comm: string_field(text, "comm")?,
        syscall: small("syscall")?,
        time,
        serial,
    })
}

/// Audit serials seen, and the ones skipped: the kernel numbers every event it logs from one
/// counter, and guard (the audit daemon) receives every record, so a serial that never comes
/// is an event lost. Records of different CPUs can arrive slightly out of order, so a missing
/// serial counts as lost only once [`REORDER_WINDOW`] later serials have been seen.
#[derive(Debug, Default)]
pub(super) struct Serials {
    highest: Option<u64>,
    missing: BTreeSet<u64>,
    /// Serials given up on: lost events.
    pub lost: u64,
}

/// How far behind the highest serial a missing one may still arrive.
pub(super) const REORDER_WINDOW: u64 = 256;
/// At most this many missing serials are remembered; a jump past it counts the rest as lost
/// at once (a bound on memory whatever the kernel sends).
const MISSING_BOUND: u64 = 4096;

impl Serials {
    pub(super) fn saw(&mut self, serial: u64) {
        let Some(highest) = self.highest else {
            self.highest = Some(serial);
            return;
        };
        if serial <= highest {
            self.missing.remove(&serial);
            return;
        }
        let gap = serial - highest - 1;
        let remembered = gap.min(MISSING_BOUND);
        self.lost += gap - remembered;
        self.missing.extend((serial - remembered)..serial);
        self.highest = Some(serial);
        let horizon = serial.saturating_sub(REORDER_WINDOW);
        let keep = self.missing.split_off(&horizon);
        self.lost += self.missing.len() as u64;
        self.missing = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "audit(1733580000.123:456): arch=c000003e syscall=56 success=no \
        exit=-11 a0=1200011 a1=0 a2=0 a3=7f items=0 ppid=12 pid=34 auid=4294967295 uid=65534 \
        gid=65534 euid=65534 suid=65534 fsuid=65534 egid=65534 sgid=65534 fsgid=65534 \
        tty=(none) ses=4294967295 comm=\"fork me\" exe=\"/usr/bin/x\" key=\"guard_fork_denied\"";

    #[test]
    fn parses_a_denied_clone() {
        let denial = denial(RECORD).unwrap();
        assert_eq!(
            denial,
            Denial {
                pid: 34,
                ppid: 12,
                comm: "fork me".into(),
                syscall: 56,
                time: AuditTime {
                    secs: 1733580000,
                    millis: 123
                },
                serial: 456,
            }
        );
        assert_eq!(key(RECORD).as_deref(), Some("guard_fork_denied"));
    }

    #[test]
    fn decodes_hex_strings_and_names_what_is_missing() {
        let hex = RECORD.replace("comm=\"fork me\"", "comm=666F726B206D65");
        assert_eq!(denial(&hex).unwrap().comm, "fork me");
        let no_pid = RECORD.replace(" pid=34", "");
        assert_eq!(denial(&no_pid), Err(RecordError::Missing("pid")));
        assert_eq!(denial("syscall=56"), Err(RecordError::Stamp));
        let bad = RECORD.replace("ppid=12", "ppid=x");
        assert!(matches!(denial(&bad), Err(RecordError::Number { field: "ppid", .. })));
        assert_eq!(key(&RECORD.replace("key=\"guard_fork_denied\"", "key=(null)")).as_deref(), Some("(null)"));
    }

    #[test]
    fn serial_gaps_count_once_past_the_window() {
        let mut serials = Serials::default();
        serials.saw(10);
        serials.saw(13); // 11 and 12 missing
        serials.saw(11); // late: not lost
        assert_eq!(serials.lost, 0);
        serials.saw(13 + REORDER_WINDOW + 1);
        // 12 fell out of the window, and the jump skipped REORDER_WINDOW serials, all still
        // inside it.
        assert_eq!(serials.lost, 1);
        serials.saw(14 + 2 * REORDER_WINDOW + 1);
        assert_eq!(serials.lost, 1 + REORDER_WINDOW);
        // A jump far past the bound is counted at once, memory stays bounded.
        let mut jump = Serials::default();
        jump.saw(1);
        jump.saw(1_000_000);
        // The last REORDER_WINDOW serials may still come.
        assert_eq!(jump.lost, 1_000_000 - 2 - REORDER_WINDOW);
        assert!(jump.missing.len() as u64 <= REORDER_WINDOW);
    }
}

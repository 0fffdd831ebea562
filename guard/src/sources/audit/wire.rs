//! What guard sends the kernel and how its datagrams are cut: the fork-denial rule, the walk
//! over a datagram's messages, the setup's receive timeout.
use std::{io, os::fd::AsRawFd, time::Duration};

use netlink_packet_audit::{RuleAction, RuleField, RuleFieldFlags, RuleFlags, RuleMessage};
use netlink_sys::Socket;

use super::{AuditError, RULE_KEY};

/// The rule: `-a always,exit -F arch=<native> -S clone,clone3,fork,vfork -F exit=-EAGAIN -k
/// guard_fork_denied`.
pub(super) fn fork_denied_rule() -> RuleMessage {
    let mut rule = RuleMessage::new();
    rule.flags = RuleFlags::FilterExit;
    rule.action = RuleAction::Always;
    #[cfg(target_arch = "x86_64")]
    let arch = netlink_packet_audit::AUDIT_ARCH_X86_64;
    #[cfg(target_arch = "aarch64")]
    let arch = netlink_packet_audit::AUDIT_ARCH_AARCH64;
    rule.fields.push((RuleField::Arch(arch), RuleFieldFlags::Equal));
    // The kernel compares the exit value as a u32, as auditctl writes it.
    rule.fields
        .push((RuleField::Exit(-libc::EAGAIN as u32), RuleFieldFlags::Equal));
    rule.fields
        .push((RuleField::Filterkey(RULE_KEY.into()), RuleFieldFlags::Equal));
    for syscall in fork_syscalls() {
        rule.syscalls.set(syscall);
    }
    rule
}

/// The syscalls that make a task, by number in the native arch.
pub fn fork_syscalls() -> Vec<u32> {
    let mut syscalls = vec![libc::SYS_clone as u32, libc::SYS_clone3 as u32];
    #[cfg(target_arch = "x86_64")]
    syscalls.extend([libc::SYS_fork as u32, libc::SYS_vfork as u32]);
    syscalls
}

/// The netlink messages of one datagram. The kernel sends each audit record alone in its
/// datagram with a length that leaves out the 16-byte header (audit's historical quirk, kept
/// for its userspace): a first message that ends within 16 bytes of the datagram's end is the
/// whole datagram, its length corrected (as rust-netlink's audit codec does).
pub(super) fn messages(datagram: &mut [u8]) -> impl Iterator<Item = &[u8]> {
    if datagram.len() >= 16 {
        let length = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]);
        if datagram.len().saturating_sub(length as usize) <= 16 {
            let whole = datagram.len() as u32;
            datagram[..4].copy_from_slice(&whole.to_ne_bytes());
        }
    }
    let mut rest: &[u8] = datagram;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let length = u32::from_ne_bytes(rest[..4].try_into().ok()?) as usize;
        if length < 16 || length > rest.len() {
            return None;
        }
        let (message, after) = rest.split_at(length);
        rest = after
            .get(length.next_multiple_of(4) - length..)
            .unwrap_or(&[]);
        Some(message)
    })
}

pub(super) fn set_receive_timeout(socket: &Socket, timeout: Duration) -> Result<(), AuditError> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a plain setsockopt on our own socket with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(AuditError::Io {
            step: "setting the receive timeout",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn the_rule_names_the_fork_syscalls_and_eagain() {
        let rule = fork_denied_rule();
        for syscall in fork_syscalls() {
            assert!(rule.syscalls.has(syscall), "syscall {syscall}");
        }
        assert!(!rule.syscalls.has(libc::SYS_getpid as u32));
        assert!(rule.fields.contains(&(
            RuleField::Exit(-libc::EAGAIN as u32),
            RuleFieldFlags::Equal
        )));
        // It encodes: the kernel gets a whole audit_rule_data.
        assert!(rule.buffer_len() > 1024);
    }

    #[test]
    fn walks_the_messages_of_a_datagram() {
        let mut datagram = Vec::new();
        for text in ["ab", "cdef"] {
            let length = 16 + text.len() as u32;
            datagram.extend(length.to_ne_bytes());
            datagram.extend([0u8; 12]);
            datagram.extend(text.as_bytes());
            datagram.resize(datagram.len().next_multiple_of(4), 0);
        }
        let lengths: Vec<usize> = messages(&mut datagram).map(<[u8]>::len).collect();
        assert_eq!(lengths, [18, 20]);
        assert_eq!(messages(&mut [0u8; 8]).count(), 0);
        // An audit record: its length without the header; the whole datagram is the message.
        let mut record = Vec::new();
        record.extend(5u32.to_ne_bytes());
        record.extend([0u8; 12]);
        record.extend(b"hello");
        let lengths: Vec<usize> = messages(&mut record).map(<[u8]>::len).collect();
        assert_eq!(lengths, [21]);
    }
}

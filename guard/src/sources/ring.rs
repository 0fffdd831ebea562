//! One perf event and its mmap'd ring: a dummy software event for one cgroup on one CPU, whose
//! side-band task records the kernel writes into the ring and this side reads, moving the
//! tail as it goes (the kernel never overwrites unread records: a full ring drops them and
//! says how many in a PERF_RECORD_LOST).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use perf_event_open_sys::{self as sys, bindings};

use super::records::HEADER;

/// A record larger than this is not one the dummy event writes (a comm record is at most 48
/// bytes): the ring is treated as corrupt from there.
const MAX_RECORD: usize = 4096;

/// An open event with its ring mapped.
pub(super) struct Ring {
    fd: OwnedFd,
    base: NonNull<u8>,
    /// The whole mapping: the metadata page and the data pages.
    len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by the ring and only touched through `&mut self` (or its
// atomics); nothing else refers to it.
unsafe impl Send for Ring {}

impl Ring {
    /// Opens the dummy event for the cgroup whose directory is open as `cgroup` on `cpu`, with
    /// `pages` data pages (a power of two), and maps its ring.
    pub fn open(cgroup: RawFd, cpu: u32, pages: usize) -> Result<Self, (io::Error, bool)> {
        // SAFETY: an all-zero perf_event_attr is the documented starting point.
        let mut attr: bindings::perf_event_attr = unsafe { std::mem::zeroed() };
        attr.type_ = bindings::PERF_TYPE_SOFTWARE;
        attr.size = std::mem::size_of::<bindings::perf_event_attr>() as u32;
        attr.config = u64::from(bindings::PERF_COUNT_SW_DUMMY);
        attr.sample_type = u64::from(bindings::PERF_SAMPLE_TIME);
        attr.set_sample_id_all(1);
        attr.set_task(1);
        attr.set_comm(1);
        attr.set_comm_exec(1);
        // The same clock as the BPF programs' and guard's own events: they order together.
        attr.set_use_clockid(1);
        attr.clockid = libc::CLOCK_MONOTONIC;
        let page = page_size();
        // Wake the reader when a quarter of the ring is full; a timer drains the rest.
        attr.set_watermark(1);
        attr.__bindgen_anon_2.wakeup_watermark = (pages * page / 4) as u32;
        // SAFETY: attr is initialised; pid is a cgroup fd as PERF_FLAG_PID_CGROUP says.
        let fd = unsafe {
            sys::perf_event_open(
                &mut attr,
                cgroup,
                cpu as i32,
                -1,
                u64::from(bindings::PERF_FLAG_PID_CGROUP | bindings::PERF_FLAG_FD_CLOEXEC) as _,
            )
        };
        if fd < 0 {
            return Err((io::Error::last_os_error(), false));
        }
        // SAFETY: a fresh descriptor the syscall returned, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = (pages + 1) * page;
        // SAFETY: mapping a perf fd's ring read-write (the tail is written back) as the
        // man page describes; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err((io::Error::last_os_error(), true));
        }
        let base = NonNull::new(base.cast::<u8>()).expect("mmap returned a mapping");
        // SAFETY: the first page is the kernel's perf_event_mmap_page.
        let meta = unsafe { &*base.as_ptr().cast::<bindings::perf_event_mmap_page>() };
        // Kernels before 4.1 leave these 0: the data then starts at the second page.
        let (data_offset, data_size) = match (meta.data_offset, meta.data_size) {
            (0, _) | (_, 0) => (page, pages * page),
            (offset, size) => (offset as usize, size as usize),
        };
        Ok(Self {
            fd,
            base,
            len,
            data_offset,
            data_size,
        })
    }

    /// The event's descriptor (polled for the watermark's wakeups).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn head_and_tail(&self) -> (&AtomicU64, &AtomicU64) {
        // SAFETY: data_head and data_tail are aligned u64 fields of the mapped metadata page,
        // shared with the kernel: accessed atomically only.
        unsafe {
            let meta = self.base.as_ptr().cast::<bindings::perf_event_mmap_page>();
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_tail)),
            )
        }
    }

    /// Copies `out.len()` bytes from ring position `at`, wrapping at the end.
    fn copy_out(&self, at: u64, out: &mut [u8]) {
        let start = (at % self.data_size as u64) as usize;
        let first = out.len().min(self.data_size - start);
        // SAFETY: both ranges lie in the data area of the mapping (start < data_size, the
        // lengths are bounded by it).
        unsafe {
            let data = self.base.as_ptr().add(self.data_offset);
            std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, out[first..].as_mut_ptr(), out.len() - first);
        }
    }

    /// Hands every unread record to `each` (whole, header included), then frees its space.
    /// Returns false when a record's size is impossible: the rest of the ring is skipped
    /// (counted by the caller as undecodable).
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> bool {
        let (head, tail) = self.head_and_tail();
        // Acquire: the records up to head are written before head is.
        let head_now = head.load(Ordering::Acquire);
        let mut at = tail.load(Ordering::Relaxed);
        let mut record = [0u8; MAX_RECORD];
        let mut sane = true;
        while at < head_now {
            let mut header = [0u8; HEADER];
            self.copy_out(at, &mut header);
            let size = usize::from(u16::from_ne_bytes([header[6], header[7]]));
            if !(HEADER..=MAX_RECORD).contains(&size) || at + size as u64 > head_now {
                sane = false;
                at = head_now;
                break;
            }
            self.copy_out(at, &mut record[..size]);
            each(&record[..size]);
            at += size as u64;
        }
        // Release: the kernel may reuse the space only once it is read.
        tail.store(at, Ordering::Release);
        sane
    }

    /// Bytes of memory the ring maps (its metadata page and data pages).
    pub fn mapped_bytes(&self) -> usize {
        self.len
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open, unmapped once; the fd closes after.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

//! The guard's background tasks, supervised: one that dies (panics, or ends with an error
//! while the guard still needs it) is recorded in the hub's health, with its error, and
//! published in-band, so an agent never mistakes a dead pipeline for a quiet one.
use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, task::JoinHandle};

use super::{hub::Hub, lock};

/// Spawns `task` as `name` (`the event reader`, …). It ends with `Ok` when the guard went
/// away (or it recorded its own end), with `Err(reason)` when it can no longer do its work.
pub(crate) fn spawn<F>(name: &'static str, hub: Arc<Mutex<Hub>>, task: F) -> JoinHandle<()>
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(async move {
        let died = match (CatchUnwind { inner: task }).await {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        tracing::error!(task = name, reason = %died, "a guard task stopped: live events stop");
        lock(&hub).record_fault(&format!("{name} stopped: {died}"), true);
    })
}

/// A panic's message, as far as it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Polls a future, catching a panic of its poll as the result.
struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is structurally pinned: never moved out of the pinned `self`.
        let inner = unsafe { self.map_unchecked_mut(|this| &mut this.inner) };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Why the current tokio runtime cannot carry the guard's tasks: none at all, or no IO
/// driver (the ring buffer and inotify are polled), or no time driver (the reader's ticks).
/// tokio panics, rather than failing, where a driver is missing: the panic is caught here,
/// once, at start (the default panic hook still prints it), instead of killing every task.
pub(crate) fn check_runtime() -> Result<(), String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("Guard::start was not called inside a tokio runtime".to_string());
    }
    let enable = |driver: &str| {
        format!(
            "the tokio runtime has no {driver} driver (build it with enable_{driver}() or \
             enable_all())"
        )
    };
    let timers = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
    if timers.is_err() {
        return Err(enable("time"));
    }
    // SAFETY: eventfd takes flags only; a non-negative result is a new fd we own.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(format!(
            "creating an eventfd to test the runtime's IO driver: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: the OwnedFd stays open for as long as the AsyncFd holds it.
    let register = || unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    match std::panic::catch_unwind(AssertUnwindSafe(register)) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!(
            "the tokio runtime cannot poll a descriptor: {}",
            error.into_parts().1
        )),
        Err(_) => Err(enable("io")),
    }
}

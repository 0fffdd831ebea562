//! A guard's end, kept off the caller's thread and the runtime's workers: detaching the
//! programs waits on the kernel (about 0.7 s measured in a runtime worker) and stopping the
//! kernel-log reader joins its thread (about 100 ms). [`Guard::shutdown`] does both on a
//! blocking thread and returns once they are done; dropping a guard hands them to a thread of
//! their own and returns at once.
use std::sync::{Arc, Mutex, atomic::Ordering};

use tracing::warn;

use super::{Guard, LOADED_GUARDS};
use crate::{bpf::Programs, kmsg::KmsgWatch, pipeline::lock};

/// What is slow to close.
struct Teardown {
    probes: Option<Arc<Mutex<Programs>>>,
    kernel_log: Option<KmsgWatch>,
}

impl Guard {
    /// Ends the guard: stops its tasks (every subscription ends), then detaches the programs,
    /// closes their maps and stops the kernel-log reader on a blocking thread, and returns
    /// once all of that is done: the programs are gone from the kernel. Unwatch every
    /// container first (their final reports need the guard).
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // Cancelled, or ended before: either way its resources are released.
            let _ = task.await;
        }
        let teardown = self.release();
        if let Err(error) = tokio::task::spawn_blocking(move || drop(teardown)).await {
            warn!(%error, "the guard's teardown failed");
        }
    }

    /// Says which containers lose their final reports, and takes what is slow to close
    /// (nothing the second time).
    fn release(&mut self) -> Teardown {
        let watched = self.watched();
        if !watched.is_empty() {
            // Their final reports can no longer be taken: say so rather than lose them quietly.
            warn!(
                containers = %watched.join(", "),
                "the guard ends while it still watches {} container(s): their final reports \
                 are lost (call unwatch for each first)",
                watched.len()
            );
            lock(&self.registry).by_id.clear();
        }
        if self.probes.is_some() {
            LOADED_GUARDS.fetch_sub(1, Ordering::Relaxed);
        }
        Teardown {
            probes: self.probes.take(),
            kernel_log: self.kernel_log.take(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let teardown = self.release();
        if teardown.probes.is_none() && teardown.kernel_log.is_none() {
            return;
        }
        // Should the thread not start, the closure (and the teardown) is dropped right here.
        let _ = std::thread::Builder::new()
            .name("guard-teardown".to_string())
            .spawn(move || drop(teardown));
    }
}

//! The store's threads: a fixed few, made at the collector's start, that check and write the
//! copies (and read a copy from disk the first time its guest connects), so that disk work
//! never holds the threads serving connections, and no connection ever needs a thread of its
//! own: a process limit reached later costs the collector nothing.
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::pipeline::lock;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one queue.
pub(super) struct StorePool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl StorePool {
    /// Starts `threads` threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("guard-store-{index}"))
                .spawn(move || {
                    loop {
                        let job = lock(&receiver).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs: Mutex::new(Some(sender)),
        })
    }

    /// Runs `job` on a store thread; its result, or None when the pool has stopped (or the job
    /// panicked: one connection's loss, never the collector's).
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            if let Ok(value) = outcome {
                let _ = answer.send(value);
            }
        });
        lock(&self.jobs).as_ref()?.send(job).ok()?;
        result.await.ok()
    }

    /// Lets the threads end once the queue is empty.
    pub fn stop(&self) {
        lock(&self.jobs).take();
    }
}

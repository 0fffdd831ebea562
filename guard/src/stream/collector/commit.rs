//! Group commit: a record is acknowledged only once it is on stable storage. One thread runs
//! rounds; a round takes every request made since the last one, fdatasyncs each file once
//! (and fsyncs each directory a file was created in), then answers them all. Rounds start at
//! most every `interval`, so that under load one round covers many records and many guests.
use std::{
    collections::HashSet,
    os::fd::AsFd,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::pipeline::lock;
use crate::stream::store::Durable;

type Answer = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Queue {
    requests: Vec<(Durable, Answer)>,
    stopped: bool,
}

/// The group commit thread's mailbox.
pub(super) struct Committer {
    queue: Mutex<Queue>,
    wake: Condvar,
    interval: Duration,
}

impl Committer {
    /// Starts the commit thread.
    pub fn start(interval: Duration) -> std::io::Result<Arc<Self>> {
        let committer = Arc::new(Self {
            queue: Mutex::default(),
            wake: Condvar::new(),
            interval,
        });
        let running = committer.clone();
        std::thread::Builder::new()
            .name("guard-commit".into())
            .spawn(move || running.run())?;
        Ok(committer)
    }

    /// Asks for `durable` to reach stable storage; the answer comes after the round that
    /// synced it (an error names the file that failed).
    pub fn request(&self, durable: Durable) -> oneshot::Receiver<Result<(), String>> {
        let (answer, receiver) = oneshot::channel();
        lock(&self.queue).requests.push((durable, answer));
        self.wake.notify_one();
        receiver
    }

    /// Ends the thread after its current round.
    pub fn stop(&self) {
        lock(&self.queue).stopped = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut last_round = Instant::now() - self.interval;
        loop {
            let mut queue = lock(&self.queue);
            while queue.requests.is_empty() && !queue.stopped {
                queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.stopped {
                return;
            }
            drop(queue);
            let wait = self.interval.saturating_sub(last_round.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            last_round = Instant::now();
            let round = std::mem::take(&mut lock(&self.queue).requests);
            let results = sync_round(&round);
            for ((durable, answer), result) in round.into_iter().zip(results) {
                drop(durable);
                let _ = answer.send(result);
            }
        }
    }
}

/// Syncs every file and directory of `round` once; each request gets its file's result.
fn sync_round(round: &[(Durable, Answer)]) -> Vec<Result<(), String>> {
    let mut dirs_synced: HashSet<usize> = HashSet::new();
    let mut files_synced: std::collections::HashMap<usize, Result<(), String>> = Default::default();
    // Directories first: a new file's entry must be durable before its lines are acknowledged.
    let mut dir_results: std::collections::HashMap<usize, Result<(), String>> = Default::default();
    for (durable, _) in round {
        if let Some(dir) = &durable.dir {
            let key = Arc::as_ptr(dir) as usize;
            if dirs_synced.insert(key) {
                let result = rustix::fs::fsync(dir.as_fd())
                    .map_err(|e| format!("syncing a guest directory: {e}"));
                dir_results.insert(key, result);
            }
        }
    }
    round
        .iter()
        .map(|(durable, _)| {
            if let Some(dir) = &durable.dir
                && let Some(Err(error)) = dir_results.get(&(Arc::as_ptr(dir) as usize))
            {
                return Err(error.clone());
            }
            let key = Arc::as_ptr(&durable.file) as usize;
            files_synced
                .entry(key)
                .or_insert_with(|| {
                    durable
                        .file
                        .sync_data()
                        .map_err(|e| format!("syncing a copy's file: {e}"))
                })
                .clone()
        })
        .collect()
}

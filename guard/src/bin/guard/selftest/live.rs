//! The live console: what happens, as it happens, readable during a bomb (storms summed).
use std::{collections::BTreeMap, io::Write as _, time::Duration};

use guard::{EventDetail, GuardEvent};
use tokio::sync::{mpsc, oneshot};

/// A console for live lines (the guest's serial console), else stderr.
pub fn console() -> Box<dyn std::io::Write + Send> {
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(file) => Box::new(file),
        Err(_) => Box::new(std::io::stderr()),
    }
}

/// The printer's handle: [`Live::flush`] prints what is summed so far, so that a wave's
/// events appear under its own heading and not under the next one's.
pub struct Live {
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Live {
    /// Prints `events` on the console as they happen: every OOM kill and loss at once, the
    /// storms (denials, reclaims, throttling) summed four times a second, so a bomb stays
    /// readable.
    pub fn start(events: mpsc::Receiver<GuardEvent>) -> Self {
        let (flushes, requests) = mpsc::channel(1);
        let task = tokio::spawn(print_live(events, requests));
        Self { flushes, task }
    }

    /// Prints every event already queued and the sums so far, then returns. Call it after the
    /// guard has drained its pending events (a report does) and before the next heading.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = flushed.await;
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Sums of the storms since the last print.
#[derive(Default)]
struct Printer {
    denied: BTreeMap<String, u64>,
    reclaims: u64,
    reclaim_us: u64,
    throttled: u64,
    kills_in_tick: u64,
    kills_unshown: u64,
}

/// OOM kills shown one by one per tick, the rest of a storm summed.
const KILLS_SHOWN: u64 = 3;

impl Printer {
    fn event(&mut self, out: &mut dyn std::io::Write, event: &GuardEvent) {
        let container = event.container.as_deref().unwrap_or("-");
        match &event.detail {
            EventDetail::ForkDenied(denial) => {
                *self
                    .denied
                    .entry(format!("{:?}", denial.cause))
                    .or_default() += 1;
            }
            EventDetail::Reclaim(reclaim) => {
                self.reclaims += 1;
                self.reclaim_us += reclaim.duration_ns / 1000;
            }
            EventDetail::Throttle(throttle) => self.throttled += throttle.suppressed,
            EventDetail::OomVictim(victim) => {
                self.kills_in_tick += 1;
                if self.kills_in_tick > KILLS_SHOWN && !victim.outside_containers {
                    self.kills_unshown += 1;
                    return;
                }
                let scope = if victim.outside_containers {
                    "OUTSIDE every container: GLOBAL OOM"
                } else {
                    "in its container"
                };
                let _ = writeln!(
                    out,
                    "[guard] {container}: OOM kill of pid {} ({}) {scope}{} [{}]",
                    victim.victim_pid,
                    victim.comm,
                    victim
                        .scope
                        .map(|scope| format!(", {scope} killer"))
                        .unwrap_or_default(),
                    event.source().name()
                );
            }
            EventDetail::Lost(lost) => {
                let _ = writeln!(
                    out,
                    "[guard] LOST {} {} events [{}]",
                    lost.count,
                    lost.event_kind,
                    event.source().lost_at()
                );
            }
            // Forks, kernel file snapshots, reader faults, and kinds added later.
            _ => {}
        }
    }

    fn print_sums(&mut self, out: &mut dyn std::io::Write) {
        for (cause, count) in std::mem::take(&mut self.denied) {
            let _ = writeln!(out, "[guard] fork denied x{count} (cause: {cause})");
        }
        if self.reclaims > 0 {
            let _ = writeln!(
                out,
                "[guard] memcg reclaim x{} ({} µs stalled)",
                self.reclaims, self.reclaim_us
            );
            (self.reclaims, self.reclaim_us) = (0, 0);
        }
        if self.throttled > 0 {
            let _ = writeln!(
                out,
                "[guard] {} events throttled (counters stay exact)",
                self.throttled
            );
            self.throttled = 0;
        }
        if self.kills_unshown > 0 {
            let _ = writeln!(out, "[guard] ... and {} more OOM kills", self.kills_unshown);
        }
        (self.kills_in_tick, self.kills_unshown) = (0, 0);
    }
}

async fn print_live(
    mut events: mpsc::Receiver<GuardEvent>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut out = console();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut printer = Printer::default();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => printer.event(&mut out, &event),
                None => return,
            },
            _ = tick.tick() => printer.print_sums(&mut out),
            request = flushes.recv() => {
                while let Ok(event) = events.try_recv() {
                    printer.event(&mut out, &event);
                }
                printer.print_sums(&mut out);
                let _ = out.flush();
                if let Some(done) = request {
                    let _ = done.send(());
                }
            }
        }
    }
}

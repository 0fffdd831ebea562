//! The live console: what happens, as it happens, readable during a bomb (storms summed).
use std::{io::Write as _, time::Duration};

use guard::{EventDetail, GuardEvent};

/// A console for live lines (the guest's serial console), else stderr.
pub fn console() -> Box<dyn std::io::Write + Send> {
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(file) => Box::new(file),
        Err(_) => Box::new(std::io::stderr()),
    }
}

/// Prints the events on the console as they happen: every OOM kill and loss at once, the
/// storms (denials, reclaims, throttling) summed once a second, so a bomb stays readable.
pub async fn print_live(mut events: tokio::sync::mpsc::Receiver<GuardEvent>) {
    let mut out = console();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut denied = std::collections::BTreeMap::<String, u64>::new();
    let (mut reclaims, mut reclaim_us, mut throttled) = (0u64, 0u64, 0u64);
    // OOM kills shown one by one per tick, the rest of a storm summed.
    const KILLS_SHOWN: u64 = 3;
    let (mut kills_in_tick, mut kills_unshown) = (0u64, 0u64);
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = tick.tick() => {
                for (cause, count) in std::mem::take(&mut denied) {
                    let _ = writeln!(out, "[guard] fork denied x{count} (cause: {cause})");
                }
                if reclaims > 0 {
                    let _ = writeln!(out, "[guard] memcg reclaim x{reclaims} ({reclaim_us} µs stalled)");
                    (reclaims, reclaim_us) = (0, 0);
                }
                if throttled > 0 {
                    let _ = writeln!(out, "[guard] {throttled} events throttled (counters stay exact)");
                    throttled = 0;
                }
                if kills_unshown > 0 {
                    let _ = writeln!(out, "[guard] ... and {kills_unshown} more OOM kills");
                }
                (kills_in_tick, kills_unshown) = (0, 0);
                continue;
            }
        };
        let container = event.container.as_deref().unwrap_or("-");
        match &event.detail {
            EventDetail::ForkDenied(denial) => {
                *denied.entry(format!("{:?}", denial.cause)).or_default() += 1;
            }
            EventDetail::Reclaim(reclaim) => {
                reclaims += 1;
                reclaim_us += reclaim.duration_ns / 1000;
            }
            EventDetail::Throttle(throttle) => throttled += throttle.suppressed,
            EventDetail::OomVictim(victim) => {
                kills_in_tick += 1;
                if kills_in_tick > KILLS_SHOWN && !victim.outside_containers {
                    kills_unshown += 1;
                    continue;
                }
                let scope = if victim.outside_containers {
                    "OUTSIDE every container: GLOBAL OOM"
                } else {
                    "in its container"
                };
                let _ = writeln!(
                    out,
                    "[guard] {container}: OOM kill of pid {} ({}) {scope}",
                    victim.victim_pid, victim.comm
                );
            }
            EventDetail::Lost(lost) => {
                let _ = writeln!(
                    out,
                    "[guard] LOST {} {} events",
                    lost.count, lost.event_kind
                );
            }
            EventDetail::Fork(_) | EventDetail::KernelFile(_) | EventDetail::ReaderFault(_) => {}
        }
    }
}

//! Progress of long steps (kernel builds, guest boots, bench rounds): a bar redrawn in place on
//! a terminal, plain lines now and then when not, so CI logs stay readable.
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How often a plain line is printed when the output is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(30);
/// How often the bar is redrawn on a terminal.
const BAR_EVERY: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 28;

/// One long step's progress, on stderr.
pub struct Progress {
    label: String,
    started: Instant,
    /// The usual length (kernel build: minutes) or the number of units (bench rounds).
    total: Total,
    terminal: bool,
    last_drawn: Option<Instant>,
    plain_every: Duration,
}

/// What "done" means for the bar.
#[derive(Clone, Copy, Debug)]
pub enum Total {
    /// A step of about this length: the bar fills with time and waits at 99% past it.
    Expected(Duration),
    /// A number of units, e.g. rounds.
    Count(u64),
    /// Unknown: a spinner-like bar with elapsed time.
    Unknown,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: Total) -> Self {
        Self::with_plain_every(label, total, PLAIN_EVERY)
    }

    /// Plain lines every `plain_every` instead of the default 30 s.
    pub fn with_plain_every(label: impl Into<String>, total: Total, plain_every: Duration) -> Self {
        Self {
            label: label.into(),
            started: Instant::now(),
            total,
            terminal: std::io::stderr().is_terminal() && std::env::var_os("CI").is_none(),
            last_drawn: None,
            plain_every,
        }
    }

    /// Notes progress: `done` units (for [`Total::Count`]) and what is happening now.
    pub fn update(&mut self, done: u64, now: &str) {
        // A bar is drawn at once and redrawn often; plain lines come every `plain_every`.
        let since = self.last_drawn.unwrap_or(self.started);
        let due = if self.terminal {
            self.last_drawn.is_none() || since.elapsed() >= BAR_EVERY
        } else {
            since.elapsed() >= self.plain_every
        };
        if !due {
            return;
        }
        self.last_drawn = Some(Instant::now());
        let elapsed = self.started.elapsed().as_secs_f64();
        if self.terminal {
            let mut now = now.trim().to_string();
            now.truncate(60);
            let shown = match self.total {
                Total::Unknown => {
                    // No end to measure against: a marker that moves, and the time.
                    let at = (elapsed * 4.0) as usize % BAR_WIDTH;
                    let bar: String = (0..BAR_WIDTH)
                        .map(|i| if i == at { '#' } else { ' ' })
                        .collect();
                    format!("[{bar}]     ")
                }
                _ => {
                    let fraction = self.fraction(done);
                    let filled = (fraction * BAR_WIDTH as f64) as usize;
                    let bar: String = (0..BAR_WIDTH)
                        .map(|i| if i < filled { '=' } else { ' ' })
                        .collect();
                    format!("[{bar}] {:>3.0}%", fraction * 100.0)
                }
            };
            eprint!("\r\x1b[2K{} {shown} {elapsed:>5.0} s  {now}", self.label);
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{}: {:.0} s, {}", self.label, elapsed, now.trim());
        }
    }

    fn fraction(&self, done: u64) -> f64 {
        match self.total {
            Total::Expected(expected) => {
                (self.started.elapsed().as_secs_f64() / expected.as_secs_f64().max(0.001)).min(0.99)
            }
            Total::Count(total) => (done as f64 / total.max(1) as f64).min(1.0),
            Total::Unknown => 0.0,
        }
    }

    /// Ends the bar's line (on a terminal) and says how it ended.
    pub fn finish(self, outcome: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{}: {outcome} in {elapsed:.1} s", self.label);
    }

    /// Removes the bar (on a terminal) without a closing line: the caller says how it ended.
    pub fn clear(self) {
        if self.terminal && self.last_drawn.is_some() {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    /// Prints a line of its own: on a terminal the bar makes way and comes back at the next
    /// update.
    pub fn say(&mut self, line: &str) {
        if self.terminal && self.last_drawn.is_some() {
            eprint!("\r\x1b[2K");
            self.last_drawn = None;
        }
        eprintln!("{line}");
    }
}

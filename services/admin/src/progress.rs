//! Progress of a long command on stderr: records done, records/s and, when the total is known,
//! the ETA, redrawn in place at most four times a second. Only on a terminal: when stderr is a
//! file or a pipe nothing is drawn (the command prints its own final summary), so logs and CI
//! output stay clean. Drawing never fails a command (a write error is ignored).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress line for one phase.
pub struct Progress {
    label: &'static str,
    tty: bool,
    started: Instant,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// A phase called `label`; drawn only when stderr is a terminal.
    pub fn new(label: &'static str) -> Self {
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_draw: None,
            drawn: false,
        }
    }

    /// `done` records so far, of `total` if known.
    pub fn tick(&mut self, done: u64, total: Option<u64>) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(250))
        {
            return;
        }
        self.last_draw = Some(now);
        self.drawn = true;
        let line = render(self.label, done, total, now.duration_since(self.started));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }

    /// The phase ended: the line is cleared so the summary that follows stands alone.
    pub fn done(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// `label: done[/total] records, rate/s[, ETA m:ss]`.
pub fn render(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    match total {
        Some(total) => {
            let eta = if rate > 0.0 && total >= done {
                let left = ((total - done) as f64 / rate).round() as u64;
                format!("ETA {}:{:02}", left / 60, left % 60)
            } else {
                "ETA ?".to_string()
            };
            format!("{label}: {done}/{total} records, {rate:.0}/s, {eta}")
        }
        None => format!("{label}: {done} records, {rate:.0}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rate_and_eta() {
        assert_eq!(
            render("replaying", 500, Some(2000), Duration::from_secs(5)),
            "replaying: 500/2000 records, 100/s, ETA 0:15"
        );
        assert_eq!(
            render("reading", 30, None, Duration::from_secs(3)),
            "reading: 30 records, 10/s"
        );
        assert_eq!(
            render("replaying", 0, Some(10), Duration::ZERO),
            "replaying: 0/10 records, 0/s, ETA ?"
        );
    }
}

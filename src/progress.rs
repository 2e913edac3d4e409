//! Progress of the long maintenance commands (gc, fsck, export, import): one line on
//! stderr that redraws in place when stderr is a terminal (at most ten times a
//! second), and nothing at all when it is not, so scripts and logs see only the
//! summary each command prints at the end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    bytes: u64,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// A new phase called `label`, with `total` items when known.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            bytes: 0,
            started: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// `items` more done, `bytes` more bytes handled.
    pub fn advance(&mut self, items: u64, bytes: u64) {
        self.done += items;
        self.bytes += bytes;
        if self.terminal && self.drawn.is_none_or(|at| at.elapsed() >= REDRAW_EVERY) {
            self.drawn = Some(Instant::now());
            let line = status_line(&self.label, self.done, self.total, self.bytes);
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
        }
    }

    /// Time since the phase began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Clears the line, so the summary that follows starts clean.
    pub fn finish(&mut self) {
        if self.terminal && self.drawn.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        self.drawn = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `fsck: 1200/5000 blobs (24%), 310.2 MiB`
fn status_line(label: &str, done: u64, total: Option<u64>, bytes: u64) -> String {
    let mut line = format!("{label}: {done}");
    if let Some(total) = total.filter(|&t| t > 0) {
        line.push_str(&format!("/{total} ({}%)", done.min(total) * 100 / total));
    }
    if bytes > 0 {
        line.push_str(&format!(", {}", human_bytes(bytes)));
    }
    line
}

/// Bytes for people: `512 B`, `3.1 KiB`, `20.0 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn status_line_shows_share_when_the_total_is_known() {
        assert_eq!(status_line("fsck", 3, Some(12), 0), "fsck: 3/12 (25%)");
        assert_eq!(status_line("gc", 7, None, 2048), "gc: 7, 2.0 KiB");
        assert_eq!(status_line("x", 5, Some(0), 0), "x: 5");
    }
}

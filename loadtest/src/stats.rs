//! Counting what happened: per-worker [`Samples`], merged after a run, and the
//! percentile arithmetic.

use std::time::Duration;

/// How many distinct error messages a run keeps for its report.
const KEPT_ERRORS: usize = 8;

/// What one worker (or a merged run) observed.
#[derive(Default, Debug)]
pub struct Samples {
    /// Latency of every successful operation, in microseconds.
    latencies_us: Vec<u32>,
    pub ops: u64,
    pub errors: u64,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    /// The first few distinct error messages.
    pub error_messages: Vec<String>,
}

impl Samples {
    pub fn ok(&mut self, took: Duration, bytes: u64) {
        self.ops += 1;
        self.bytes += bytes;
        self.latencies_us
            .push(took.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let message = message.into();
        if self.error_messages.len() < KEPT_ERRORS && !self.error_messages.contains(&message) {
            self.error_messages.push(message);
        }
    }

    /// Records `result` of an operation that started `took` ago.
    pub fn record(&mut self, took: Duration, result: Result<u64, String>) {
        match result {
            Ok(bytes) => self.ok(took, bytes),
            Err(e) => self.error(e),
        }
    }

    pub fn merge(&mut self, other: Samples) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
        for m in other.error_messages {
            if self.error_messages.len() < KEPT_ERRORS && !self.error_messages.contains(&m) {
                self.error_messages.push(m);
            }
        }
    }

    /// The summed latency of all successful operations.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.latencies_us.iter().map(|&us| us as u64).sum())
    }

    /// Latency percentiles in milliseconds: (p50, p99, max).
    pub fn latency_ms(&mut self) -> (f64, f64, f64) {
        self.latencies_us.sort_unstable();
        let ms = |us: u32| us as f64 / 1000.0;
        match self.latencies_us.last() {
            None => (0.0, 0.0, 0.0),
            Some(&max) => (
                ms(percentile(&self.latencies_us, 50.0)),
                ms(percentile(&self.latencies_us, 99.0)),
                ms(max),
            ),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `values`.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn merge_keeps_counts_and_distinct_errors() {
        let mut a = Samples::default();
        a.ok(Duration::from_millis(2), 10);
        a.error("boom");
        let mut b = Samples::default();
        b.ok(Duration::from_millis(4), 5);
        b.error("boom");
        b.error("bang");
        a.merge(b);
        assert_eq!((a.ops, a.errors, a.bytes), (2, 3, 15));
        assert_eq!(a.error_messages, vec!["boom", "bang"]);
        assert_eq!(a.latency_ms(), (2.0, 4.0, 4.0));
    }
}

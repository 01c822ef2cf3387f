//! The run's clock and the arithmetic of the figures: rates and latency percentiles.

use std::time::{Duration, Instant};

/// Monotonic nanoseconds since the start of the run. The load generator stamps
/// events with it and the receiver reads it on arrival: one clock, one process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now_nanos(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

/// A duration in whole nanoseconds (saturating; a run lasts minutes).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `count` per second over `span_nanos` (0 for an empty span).
pub fn rate(count: u64, span_nanos: u64) -> f64 {
    if span_nanos == 0 {
        return 0.0;
    }
    count as f64 / (span_nanos as f64 / 1e9)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (nanoseconds; sorted in place), `None` without any.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |n: u64| n as f64 / 1e6;
        Some(Self {
            samples: samples.len(),
            p50_ms: ms(percentile(samples, 50.0)),
            p90_ms: ms(percentile(samples, 90.0)),
            p99_ms: ms(percentile(samples, 99.0)),
            max_ms: ms(samples[samples.len() - 1]),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty `sorted`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Delivery rate over the first and the last tenth of `arrivals` (nanoseconds,
/// sorted in place): tenth / time from its first to its last arrival.
pub fn first_last_tenth(arrivals: &mut [u64]) -> Option<(f64, f64)> {
    let n = arrivals.len();
    if n < 20 {
        return None;
    }
    arrivals.sort_unstable();
    let tenth = n / 10;
    let first = rate(tenth as u64, arrivals[tenth] - arrivals[0]);
    let last = rate(tenth as u64, arrivals[n - 1] - arrivals[n - 1 - tenth]);
    Some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|ms| ms * 1_000_000).collect();
        let l = Latency::of(&mut samples).unwrap();
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p90_ms, 90.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let l = Latency::of(&mut [2_000_000]).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (2.0, 2.0, 2.0));
    }

    #[test]
    fn no_samples_no_latency() {
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn rate_is_per_second() {
        assert_eq!(rate(500, 250_000_000), 2000.0);
        assert_eq!(rate(5, 0), 0.0);
    }

    #[test]
    fn tenths_compare_start_and_end_of_a_drain() {
        // 100 arrivals: the first 10 one ms apart, the last 10 two ms apart.
        let mut arrivals: Vec<u64> = (0..100u64)
            .map(|i| {
                if i < 50 {
                    i * 1_000_000
                } else {
                    50_000_000 + (i - 50) * 2_000_000
                }
            })
            .collect();
        let (first, last) = first_last_tenth(&mut arrivals).unwrap();
        assert_eq!(first, 1000.0);
        assert_eq!(last, 500.0);
    }
}

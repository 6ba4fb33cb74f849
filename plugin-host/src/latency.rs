//! Latency histograms with fixed, Prometheus-style buckets: one relaxed atomic add per
//! observation, cumulative counts on read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::ser::SerializeStruct;

/// Upper bounds of the latency buckets, in seconds; a last bucket, `+Inf`, takes the rest.
pub const LATENCY_BOUNDS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// `d` in nanoseconds, saturating (at 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// Buckets of a histogram, `+Inf` included.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

/// A latency histogram with the fixed buckets of [`LATENCY_BOUNDS_SECONDS`]: one atomic count per
/// bucket and the sum in nanoseconds. Recording is two relaxed atomic adds; the cumulative counts
/// Prometheus wants are computed when read.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> LatencyHistogram {
        LatencyHistogram::default()
    }

    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_nanos(nanos(elapsed));
    }

    /// Counts one observation of `nanos` nanoseconds.
    pub fn observe_nanos(&self, nanos: u64) {
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Read while calls go on, the sum may be a few calls ahead of or behind the
    /// counts; the counts agree with each other.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
///
/// Serialized as `{"count", "sum_seconds", "buckets": [{"le": "0.0001", "count": cumulative}, ...,
/// {"le": "+Inf", "count": count}]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative), in the order of [`LATENCY_BOUNDS_SECONDS`], then
    /// `+Inf`.
    pub counts: [u64; LATENCY_BUCKETS],
    /// The sum of all observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of all observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(upper bound in seconds, observations in that bucket)`, the last bound `f64::INFINITY`:
    /// the shape `prometheus_client`'s `encode_histogram` takes (it accumulates itself).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
    }

    /// `(upper bound in seconds, observations at or below it)`, Prometheus style; the last bound
    /// is `f64::INFINITY` and its count is [`count`](Self::count).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets().scan(0, |total, (bound, count)| {
            *total += count;
            Some((bound, *total))
        })
    }
}

impl Serialize for HistogramSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Bucket {
            le: String,
            count: u64,
        }
        let buckets: Vec<Bucket> = self
            .cumulative()
            .map(|(bound, count)| Bucket {
                le: if bound.is_finite() {
                    bound.to_string()
                } else {
                    "+Inf".to_owned()
                },
                count,
            })
            .collect();
        let mut s = serializer.serialize_struct("HistogramSnapshot", 3)?;
        s.serialize_field("count", &self.count())?;
        s.serialize_field("sum_seconds", &self.sum_seconds())?;
        s.serialize_field("buckets", &buckets)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative_on_read() {
        let h = LatencyHistogram::new();
        h.observe(Duration::from_nanos(300)); // 0.0001
        h.observe(Duration::from_micros(100)); // 0.0001: a bound is inclusive
        h.observe(Duration::from_micros(101)); // 0.00025
        h.observe(Duration::from_millis(30)); // 0.05
        h.observe(Duration::from_secs(11)); // +Inf
        let snap = h.snapshot();
        assert_eq!(snap.count(), 5);
        assert_eq!(snap.counts[0], 2);
        assert_eq!(snap.counts[1], 1);
        assert_eq!(snap.counts[8], 1);
        assert_eq!(snap.counts[LATENCY_BUCKETS - 1], 1);
        let cumulative: Vec<_> = snap.cumulative().collect();
        assert_eq!(cumulative[0], (0.0001, 2));
        assert_eq!(cumulative[1], (0.00025, 3));
        assert_eq!(cumulative[7], (0.025, 3));
        assert_eq!(cumulative[8], (0.05, 4));
        assert_eq!(cumulative[15], (10.0, 4));
        assert_eq!(cumulative[16], (f64::INFINITY, 5));
        let expected_sum = 300 + 100_000 + 101_000 + 30_000_000 + 11_000_000_000u64;
        assert_eq!(snap.sum_nanos, expected_sum);
        assert!((snap.sum_seconds() - expected_sum as f64 / 1e9).abs() < 1e-12);
    }

    #[test]
    fn histogram_serializes_prometheus_style() {
        let h = LatencyHistogram::new();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(20));
        let json = serde_json::to_value(h.snapshot()).unwrap();
        assert_eq!(json["count"], 2);
        assert_eq!(json["sum_seconds"], 20.001);
        let buckets = json["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), LATENCY_BUCKETS);
        assert_eq!(buckets[2], serde_json::json!({"le": "0.0005", "count": 0}));
        assert_eq!(buckets[3], serde_json::json!({"le": "0.001", "count": 1}));
        assert_eq!(buckets[12], serde_json::json!({"le": "1", "count": 1}));
        assert_eq!(buckets[16], serde_json::json!({"le": "+Inf", "count": 2}));
    }
}

//! Per-plugin call counters and latency histograms: relaxed atomic adds on the call path, plain
//! numbers ([`StatsSnapshot`]) for the admin API and the Prometheus collector.
//!
//! Nothing here takes a lock or allocates while counting: a successful call costs four relaxed
//! atomic adds here (in flight up and down, a latency bucket and the latency sum).
//!
//! Also here, for the circuit breaker: `CallWindow`, calls and failures over a sliding window in
//! ten buckets, counted the same lock-free way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::CallError;
use crate::call_error::{
    CANCELLED_INDEX as CANCELLED, CIRCUIT_OPEN_INDEX as CIRCUIT_OPEN, KIND_COUNT,
    OVERLOADED_INDEX as OVERLOADED,
};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct};

/// The kinds a call can fail with, in the order of [`CallError::kind_index`]: derived from the
/// SDK's and the host's kind tables.
pub fn error_kinds() -> [&'static str; KIND_COUNT] {
    let mut kinds = [""; KIND_COUNT];
    for (slot, kind) in kinds.iter_mut().zip(CallError::kinds()) {
        *slot = kind;
    }
    kinds
}

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
fn nanos(d: Duration) -> u64 {
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

/// Errors by kind, indexed like [`error_kinds`]. Serialized as a map from kind to count, every
/// kind present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorCounts(pub [u64; KIND_COUNT]);

impl ErrorCounts {
    /// The count of one kind (`"timeout"`, ...); 0 for an unknown kind.
    pub fn get(&self, kind: &str) -> u64 {
        error_kinds()
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.0[i])
    }

    /// Every kind with its count.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        error_kinds().into_iter().zip(self.0.iter().copied())
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for ErrorCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(KIND_COUNT))?;
        for (kind, count) in self.iter() {
            map.serialize_entry(kind, &count)?;
        }
        map.end()
    }
}

/// One plugin's counters, shared by its calls and read by the admin API and `/metrics`.
///
/// A call either reached the plugin and ended (`record_call`: its latency,
/// and its error if any), or was shed, refused by the breaker, or dropped by its caller before it
/// ended. `calls` is the sum of those, so it never goes backwards; `successes` is derived as
/// `calls` minus errors (export `calls` and `errors` as the counters, not `successes`). There is no
/// success counter to bump: a successful call costs five relaxed atomic adds in all (in flight up
/// and down, a latency bucket and the latency sum, the breaker's window).
#[derive(Debug, Default)]
pub struct PluginStats {
    errors: [AtomicU64; KIND_COUNT],
    timeouts: AtomicU64,
    overruns: AtomicU64,
    shed: AtomicU64,
    breaker_rejected: AtomicU64,
    dropped: AtomicU64,
    in_flight: AtomicU64,
    latency: LatencyHistogram,
}

impl PluginStats {
    /// All zero.
    pub(crate) fn new() -> PluginStats {
        PluginStats::default()
    }

    /// Counts a call in flight unless `limit` calls already are; `false` means shed it (nothing
    /// was counted). Every `true` must be followed by one [`exit`](Self::exit).
    pub(crate) fn try_enter(&self, limit: Option<usize>) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        match limit {
            Some(limit) if before >= limit as u64 => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    /// A call counted by [`try_enter`](Self::try_enter) is no longer in flight.
    pub(crate) fn exit(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A call that reached the plugin ended after `took`, with `error` or successfully.
    pub(crate) fn record_call(&self, took: Duration, error: Option<&CallError>) {
        if let Some(error) = error {
            self.errors[error.kind_index()].fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(took);
    }

    /// A call passed its deadline (its `timeout` error is counted by `record_call`).
    pub(crate) fn record_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A call blocked its thread past its deadline, so the timeout could not fire (also a timeout).
    pub(crate) fn record_overrun(&self) {
        self.overruns.fetch_add(1, Ordering::Relaxed);
    }

    /// A call was shed at the concurrency limit (an `overloaded` error).
    pub(crate) fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.errors[OVERLOADED].fetch_add(1, Ordering::Relaxed);
    }

    /// A call was refused by the circuit breaker (a `circuit_open` error).
    pub(crate) fn record_breaker_rejected(&self) {
        self.breaker_rejected.fetch_add(1, Ordering::Relaxed);
        self.errors[CIRCUIT_OPEN].fetch_add(1, Ordering::Relaxed);
    }

    /// A call was dropped by its caller before it ended (a `cancelled` error).
    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.errors[CANCELLED].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency histogram of calls that reached the plugin and ended.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The counters now. Read while calls go on, `successes` may be off by the calls ending at
    /// that moment; every counter but `successes` and `in_flight` only goes up.
    pub fn snapshot(&self) -> StatsSnapshot {
        let latency = self.latency.snapshot();
        let shed = self.shed.load(Ordering::Relaxed);
        let breaker_rejected = self.breaker_rejected.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        let errors = ErrorCounts(std::array::from_fn(|i| {
            self.errors[i].load(Ordering::Relaxed)
        }));
        let calls = latency.count() + shed + breaker_rejected + dropped;
        StatsSnapshot {
            calls,
            successes: calls.saturating_sub(errors.total()),
            errors,
            timeouts: self.timeouts.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            shed,
            breaker_rejected,
            dropped,
            in_flight: self.in_flight(),
            latency,
        }
    }
}

/// A plugin's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Calls that ended, one way or another (reached the plugin, shed, refused, or dropped).
    pub calls: u64,
    /// Calls that returned a response, whatever its status: `calls` minus errors.
    pub successes: u64,
    /// Calls that ended in an error, by kind (shed, refused and dropped calls included).
    pub errors: ErrorCounts,
    /// Calls answered 504 because they passed their deadline (overruns included).
    pub timeouts: u64,
    /// Calls that blocked their thread past the deadline: in-process code cannot be pre-empted,
    /// so these ran to their end before being answered 504.
    pub overruns: u64,
    /// Calls shed at the concurrency limit (503).
    pub shed: u64,
    /// Calls refused by the open circuit breaker (503).
    pub breaker_rejected: u64,
    /// Calls dropped by their caller before they ended (the client went away).
    pub dropped: u64,
    /// Calls in flight when the snapshot was taken.
    pub in_flight: u64,
    /// Latency of the calls that reached the plugin and ended.
    pub latency: HistogramSnapshot,
}

/// How many buckets a [`CallWindow`] is cut into.
const WINDOW_BUCKETS: usize = 10;
/// A window slot that holds no bucket.
const EMPTY: u64 = u64::MAX;
/// A window slot being reset for a new bucket.
const ROTATING: u64 = u64::MAX - 1;

/// Calls and failures over the last `window` (the circuit breaker's failure rate), in
/// [`WINDOW_BUCKETS`] buckets: constant memory, and a call lands in its bucket with one atomic add.
/// The window covers the current bucket and the nine before it, so it spans between nine and ten
/// tenths of `window`.
#[derive(Debug)]
pub(crate) struct CallWindow {
    /// `u64::MAX / bucket width in ns`: a fixed-point reciprocal of the bucket width.
    per_bucket: u64,
    slots: [Slot; WINDOW_BUCKETS],
}

#[derive(Debug)]
struct Slot {
    /// The bucket number this slot holds, [`EMPTY`] or [`ROTATING`].
    bucket: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl CallWindow {
    pub(crate) fn new(window: Duration) -> CallWindow {
        let bucket_nanos = (nanos(window) / WINDOW_BUCKETS as u64).max(1);
        CallWindow {
            per_bucket: u64::MAX / bucket_nanos,
            slots: std::array::from_fn(|_| Slot {
                bucket: AtomicU64::new(EMPTY),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// The bucket number of `now` (time since the caller's epoch). A multiplication by the
    /// reciprocal instead of a division: it may put a call a nanosecond early into the bucket
    /// before, and it never goes backwards.
    pub(crate) fn index(&self, now: Duration) -> u64 {
        ((u128::from(nanos(now)) * u128::from(self.per_bucket)) >> 64) as u64
    }

    /// Counts a call in bucket `index`. The first call of a new bucket resets its slot; a call
    /// racing with that reset, or one for a bucket already gone, is not counted (a rare, harmless
    /// loss that keeps this wait-free).
    pub(crate) fn add(&self, index: u64, failed: bool) {
        let slot = &self.slots[(index % WINDOW_BUCKETS as u64) as usize];
        let held = slot.bucket.load(Ordering::Acquire);
        if held != index {
            if held == ROTATING || (held != EMPTY && held > index) {
                return;
            }
            if slot
                .bucket
                .compare_exchange(held, ROTATING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            slot.calls.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
            slot.bucket.store(index, Ordering::Release);
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls and failures in the window ending with bucket `index`.
    pub(crate) fn totals(&self, index: u64) -> (u64, u64) {
        let oldest = index.saturating_sub(WINDOW_BUCKETS as u64 - 1);
        self.slots
            .iter()
            .filter(|slot| {
                let held = slot.bucket.load(Ordering::Acquire);
                held != EMPTY && held != ROTATING && (oldest..=index).contains(&held)
            })
            .fold((0, 0), |(calls, failures), slot| {
                (
                    calls + slot.calls.load(Ordering::Relaxed),
                    failures + slot.failures.load(Ordering::Relaxed),
                )
            })
    }

    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.bucket.store(EMPTY, Ordering::Release);
        }
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

    #[test]
    fn concurrency_limit_counts_and_undoes() {
        let s = PluginStats::new();
        assert!(s.try_enter(Some(2)));
        assert!(s.try_enter(Some(2)));
        assert!(!s.try_enter(Some(2)));
        assert_eq!(s.in_flight(), 2);
        s.exit();
        assert!(s.try_enter(Some(2)));
        assert!(s.try_enter(None)); // no limit: always in
        assert_eq!(s.in_flight(), 3);
    }

    #[test]
    fn snapshot_adds_up_and_serializes_errors_by_kind() {
        let s = PluginStats::new();
        let ms = Duration::from_millis;
        s.record_call(ms(1), None);
        s.record_call(ms(2), None);
        s.record_call(ms(30), Some(&CallError::Timeout("slow".into())));
        s.record_timeout();
        s.record_overrun();
        s.record_shed();
        s.record_breaker_rejected();
        s.record_dropped();
        let snap = s.snapshot();
        assert_eq!((snap.calls, snap.successes), (6, 2));
        assert_eq!(snap.errors.get("timeout"), 1);
        assert_eq!(snap.errors.get("overloaded"), 1);
        assert_eq!(snap.errors.get("circuit_open"), 1);
        assert_eq!(snap.errors.get("cancelled"), 1);
        assert_eq!(snap.errors.get("no_such_kind"), 0);
        assert_eq!(snap.errors.total(), 4);
        assert_eq!((snap.timeouts, snap.overruns, snap.shed), (1, 1, 1));
        assert_eq!((snap.breaker_rejected, snap.dropped), (1, 1));
        assert_eq!(snap.latency.count(), 3);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["errors"]["timeout"], 1);
        assert_eq!(json["errors"]["panic"], 0);
        assert_eq!(json["errors"].as_object().unwrap().len(), KIND_COUNT);
        assert_eq!(
            (json["calls"].as_u64(), json["successes"].as_u64()),
            (Some(6), Some(2))
        );
    }

    #[test]
    fn window_buckets_reset_when_reused() {
        let w = CallWindow::new(Duration::from_secs(10));
        assert_eq!(w.index(Duration::from_millis(2_500)), 2);
        assert_eq!(w.index(Duration::from_millis(999)), 0);
        assert_eq!(w.index(Duration::from_millis(1_001)), 1);
        w.add(2, true);
        w.add(2, false);
        assert_eq!(w.totals(2), (2, 1));
        assert_eq!(w.totals(11), (2, 1)); // bucket 2 is the oldest of 2..=11
        assert_eq!(w.totals(12), (0, 0)); // and gone one bucket later
        // Bucket 12 reuses slot 2: its old counts are dropped, not added to.
        w.add(12, false);
        assert_eq!(w.totals(12), (1, 0));
        // A late call for bucket 2 does not land in bucket 12.
        w.add(2, true);
        assert_eq!(w.totals(12), (1, 0));
    }
}

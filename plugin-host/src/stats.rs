//! Per-plugin call counters: relaxed atomic adds on the call path, plain numbers
//! ([`StatsSnapshot`]) for the admin API and the Prometheus collector.
//!
//! Nothing here takes a lock or allocates while counting: a successful call costs four relaxed
//! atomic adds here (in flight up and down, a latency bucket and the latency sum). The latency
//! histogram is [`LatencyHistogram`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::CallError;
use crate::call_error::{
    CANCELLED_INDEX as CANCELLED, CIRCUIT_OPEN_INDEX as CIRCUIT_OPEN, KIND_COUNT,
    OVERLOADED_INDEX as OVERLOADED,
};
use crate::latency::{HistogramSnapshot, LatencyHistogram};
use serde::Serialize;
use serde::ser::SerializeMap;

/// The kinds a call can fail with, in the order of [`CallError::kind_index`]: derived from the
/// SDK's and the host's kind tables.
pub fn error_kinds() -> [&'static str; KIND_COUNT] {
    let mut kinds = [""; KIND_COUNT];
    for (slot, kind) in kinds.iter_mut().zip(CallError::kinds()) {
        *slot = kind;
    }
    kinds
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

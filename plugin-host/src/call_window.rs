//! The circuit breaker's failure window: calls and failures over a sliding window in ten buckets,
//! counted lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::latency::nanos;

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

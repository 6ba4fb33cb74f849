//! A plugin's circuit breaker: a pure state machine with no clock of its own.
//!
//! ```text
//!            N failures in a row, or the failure rate
//!            over the window above the limit
//!   Closed ───────────────────────────────────────▶ Open ◀──────────┐
//!     ▲                                              │              │ a probe fails
//!     │ every probe succeeds                         │ cool-down    │
//!     │                                              ▼ over         │
//!     └─────────────────────────────────────────── HalfOpen ────────┘
//! ```
//!
//! The breaker never reads a clock: every method that needs the time takes `now`, the time elapsed
//! since an epoch of the caller's choosing (the call guard uses its own creation). The tests drive
//! time by hand, and the caller reads the clock once per call for everything (the guard already
//! reads it for the timeout and the latency).
//!
//! A call asks [`CircuitBreaker::try_acquire`] first and gets a [`Permit`] or a [`Refusal`]; when it
//! ends, its permit goes back with [`CircuitBreaker::on_result`] (success or failure) or, if the
//! call was dropped, with [`CircuitBreaker::release`] (which counts nothing). Both the admission and
//! the result may move the breaker; the [`Transition`] is returned so the caller can record it.
//!
//! The hot path is lock-free while Closed: admission is one atomic load, a success is two loads and
//! one atomic add into the current bucket of the sliding window. The mutex is taken only to record
//! a failure, to admit or settle a probe, and to refuse a call while Open. The failure rate is
//! therefore judged when a failure is recorded: a success never opens the breaker.
//!
//! Every state change bumps a generation number kept in the same atomic word as the state, and a
//! permit remembers the generation it was issued in: the result of a call admitted before the
//! breaker moved on (a slow call that ends after the breaker opened) is ignored.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::call_window::CallWindow;
use crate::policy::BreakerSettings;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the cool-down is over.
    Open,
    /// A bounded number of probe calls go through; the rest are refused.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The state as a number for a gauge: closed 0, open 1, half-open 2.
    pub fn as_gauge(self) -> u8 {
        self as u8
    }

    fn from_word(word: u64) -> BreakerState {
        match word & 0b11 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// How a call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call counts as a success.
    Success,
    /// The call counts as a failure.
    Failure,
}

/// A change of state, for the caller to log and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why, for the operator: "5 failures in a row", "12 of 20 calls failed in 30s", ...
    pub detail: String,
}

/// The right to make one call; hand it back with [`CircuitBreaker::on_result`] or
/// [`CircuitBreaker::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must go back to the breaker with on_result or release"]
pub struct Permit {
    generation: u64,
    probe: bool,
}

impl Permit {
    /// Whether this is one of the half-open breaker's probe calls.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

/// A call the breaker lets through.
#[derive(Debug)]
pub struct Admission {
    /// The call's permit.
    pub permit: Permit,
    /// Set when letting this call through moved the breaker (Open → HalfOpen).
    pub transition: Option<Transition>,
}

/// A call the breaker refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Open, or HalfOpen with every probe slot taken.
    pub state: BreakerState,
    /// Why it is refusing: the reason it opened, or the probes it waits for.
    pub reason: String,
    /// Whole seconds until a call may go through again (rounded up, at least 1): `Retry-After`.
    pub retry_after_secs: u64,
}

/// A breaker's state and counters, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    /// The current state. An Open breaker whose cool-down is over stays Open until the next call,
    /// which becomes the first probe.
    pub state: BreakerState,
    /// Failures in a row so far (reset when the breaker closes or a call succeeds).
    pub consecutive_failures: u32,
    /// How many times the breaker has opened (reopening after a failed probe included).
    pub times_opened: u64,
    /// While Open: whole seconds until the next call is let through as a probe (0 when the
    /// cool-down is over).
    pub retry_after_secs: Option<u64>,
    /// Why it last opened, if it ever did.
    pub last_opened_because: Option<String>,
    /// Calls that ended in the sliding window (counted while Closed).
    pub window_calls: u64,
    /// Failures among them.
    pub window_failures: u64,
}

/// One plugin's circuit breaker, shared by all its concurrent calls.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    /// `generation << 2 | state`; written only under `inner`'s lock.
    word: AtomicU64,
    consecutive: AtomicU32,
    window: CallWindow,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    opened_at: Duration,
    reason: Option<String>,
    probes_admitted: u32,
    probes_succeeded: u32,
    times_opened: u64,
}

impl CircuitBreaker {
    /// A Closed breaker with these settings.
    ///
    /// `consecutive_failures: 0` turns the in-a-row trigger off; `half_open_probes: 0` is taken as 1.
    pub fn new(settings: &BreakerSettings) -> CircuitBreaker {
        CircuitBreaker {
            settings: settings.clone(),
            word: AtomicU64::new(BreakerState::Closed as u64),
            consecutive: AtomicU32::new(0),
            window: CallWindow::new(settings.window),
            inner: Mutex::new(Inner {
                opened_at: Duration::ZERO,
                reason: None,
                probes_admitted: 0,
                probes_succeeded: 0,
                times_opened: 0,
            }),
        }
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> BreakerState {
        BreakerState::from_word(self.word.load(Ordering::Acquire))
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Lets a call through, or refuses it. Closed (or disabled): one atomic load, no lock.
    /// Open with the cool-down over: moves to HalfOpen and admits the call as the first probe.
    pub fn try_acquire(&self, now: Duration) -> Result<Admission, Refusal> {
        let word = self.word.load(Ordering::Acquire);
        if !self.settings.enabled || BreakerState::from_word(word) == BreakerState::Closed {
            return admit(word >> 2, false, None);
        }
        self.acquire_slow(now)
    }

    fn acquire_slow(&self, now: Duration) -> Result<Admission, Refusal> {
        let mut inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        let probes = self.probe_limit();
        match BreakerState::from_word(word) {
            BreakerState::Closed => admit(word >> 2, false, None),
            BreakerState::Open => {
                let reopens = inner.opened_at.saturating_add(self.settings.cooldown);
                if now < reopens {
                    return Err(Refusal {
                        state: BreakerState::Open,
                        reason: inner.reason.clone().unwrap_or_default(),
                        retry_after_secs: retry_after_secs(reopens - now),
                    });
                }
                let generation = self.set_state(word, BreakerState::HalfOpen);
                inner.probes_admitted = 1;
                inner.probes_succeeded = 0;
                let detail = format!(
                    "cool-down of {:?} over; letting {probes} probe call{} through",
                    self.settings.cooldown,
                    plural(probes)
                );
                let moved = Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    detail,
                };
                admit(generation, true, Some(moved))
            }
            BreakerState::HalfOpen => {
                if inner.probes_admitted < probes {
                    inner.probes_admitted += 1;
                    return admit(word >> 2, true, None);
                }
                Err(Refusal {
                    state: BreakerState::HalfOpen,
                    reason: format!(
                        "waiting for {} probe call{} in flight",
                        inner.probes_admitted - inner.probes_succeeded,
                        plural(inner.probes_admitted - inner.probes_succeeded)
                    ),
                    retry_after_secs: 1,
                })
            }
        }
    }

    /// Settles a call that ended. Returns the transition it caused, if any. A success while
    /// Closed takes no lock.
    pub fn on_result(&self, permit: Permit, outcome: Outcome, now: Duration) -> Option<Transition> {
        if !self.settings.enabled {
            return None;
        }
        let word = self.word.load(Ordering::Acquire);
        if word >> 2 != permit.generation {
            return None; // admitted before the breaker moved on: its result says nothing now
        }
        match (BreakerState::from_word(word), outcome, permit.probe) {
            (BreakerState::Closed, Outcome::Success, _) => {
                self.window.add(self.window.index(now), false);
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                None
            }
            (BreakerState::Closed, Outcome::Failure, _) => self.closed_failure(permit, now),
            (BreakerState::HalfOpen, outcome, true) => self.probe_result(permit, outcome, now),
            _ => None,
        }
    }

    /// Hands back the permit of a call that was dropped before it ended: counts nothing, but frees
    /// a probe slot.
    pub fn release(&self, permit: Permit) {
        if !self.settings.enabled || !permit.probe {
            return;
        }
        let mut inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if word >> 2 == permit.generation && BreakerState::from_word(word) == BreakerState::HalfOpen
        {
            inner.probes_admitted = inner.probes_admitted.saturating_sub(1);
        }
    }

    /// The state and counters at `now`.
    pub fn snapshot(&self, now: Duration) -> BreakerSnapshot {
        let inner = self.lock();
        let state = self.state();
        let (window_calls, window_failures) = self.window.totals(self.window.index(now));
        let retry_after_secs = (state == BreakerState::Open).then(|| {
            let reopens = inner.opened_at.saturating_add(self.settings.cooldown);
            let left = reopens.saturating_sub(now);
            if left.is_zero() {
                0
            } else {
                retry_after_secs(left)
            }
        });
        BreakerSnapshot {
            state,
            consecutive_failures: self.consecutive_failures(),
            times_opened: inner.times_opened,
            retry_after_secs,
            last_opened_because: inner.reason.clone(),
            window_calls,
            window_failures,
        }
    }

    fn closed_failure(&self, permit: Permit, now: Duration) -> Option<Transition> {
        let mut inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if word >> 2 != permit.generation {
            return None;
        }
        let index = self.window.index(now);
        self.window.add(index, true);
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.settings.consecutive_failures;
        let reason = if limit > 0 && in_a_row >= limit {
            format!("{in_a_row} failures in a row")
        } else {
            let (calls, failures) = self.window.totals(index);
            let over_rate = failures as f64 > self.settings.failure_rate * calls as f64;
            if calls < u64::from(self.settings.min_calls) || !over_rate {
                return None;
            }
            format!(
                "{failures} of {calls} calls failed in {:?}",
                self.settings.window
            )
        };
        Some(self.open(&mut inner, word, reason, now))
    }

    fn probe_result(&self, permit: Permit, outcome: Outcome, now: Duration) -> Option<Transition> {
        let mut inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if word >> 2 != permit.generation {
            return None;
        }
        if outcome == Outcome::Failure {
            return Some(self.open(&mut inner, word, "a probe call failed".to_owned(), now));
        }
        inner.probes_succeeded += 1;
        let probes = self.probe_limit();
        if inner.probes_succeeded < probes {
            return None;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.clear();
        self.set_state(word, BreakerState::Closed);
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            detail: format!("{probes} probe call{} succeeded", plural(probes)),
        })
    }

    fn open(&self, inner: &mut Inner, word: u64, reason: String, now: Duration) -> Transition {
        inner.opened_at = now;
        inner.reason = Some(reason.clone());
        inner.times_opened += 1;
        self.window.clear();
        self.set_state(word, BreakerState::Open);
        Transition {
            from: BreakerState::from_word(word),
            to: BreakerState::Open,
            detail: reason,
        }
    }

    /// Stores `state` with the next generation; returns that generation. Called under the lock.
    fn set_state(&self, word: u64, state: BreakerState) -> u64 {
        let generation = (word >> 2).wrapping_add(1);
        self.word
            .store(generation << 2 | state as u64, Ordering::Release);
        generation
    }

    fn probe_limit(&self) -> u32 {
        self.settings.half_open_probes.max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn admit(
    generation: u64,
    probe: bool,
    transition: Option<Transition>,
) -> Result<Admission, Refusal> {
    Ok(Admission {
        permit: Permit { generation, probe },
        transition,
    })
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
fn retry_after_secs(left: Duration) -> u64 {
    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 6,
            cooldown: Duration::from_secs(5),
            half_open_probes: 1,
            count_5xx: true,
        }
    }

    /// Runs one call to its end; returns the transitions it caused (admission and result).
    fn call(b: &CircuitBreaker, at: Duration, outcome: Outcome) -> Vec<Transition> {
        let admission = b.try_acquire(at).expect("admitted");
        let mut moves: Vec<_> = admission.transition.into_iter().collect();
        moves.extend(b.on_result(admission.permit, outcome, at));
        moves
    }

    fn refusal(b: &CircuitBreaker, at: Duration) -> Refusal {
        b.try_acquire(at).map(|a| a.permit).expect_err("refused")
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        assert!(call(&b, t0, Outcome::Failure).is_empty());
        assert!(call(&b, t0, Outcome::Failure).is_empty());
        assert_eq!(b.consecutive_failures(), 2);
        assert!(call(&b, t0, Outcome::Success).is_empty());
        assert_eq!(b.consecutive_failures(), 0);
        assert!(call(&b, t0, Outcome::Failure).is_empty());
        assert!(call(&b, t0, Outcome::Failure).is_empty());
        let moves = call(&b, t0, Outcome::Failure);
        assert_eq!(
            moves,
            [Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                detail: "3 failures in a row".into(),
            }]
        );
        assert_eq!(moves[0].to, BreakerState::Open);
        assert_eq!(b.state(), BreakerState::Open);
        let r = refusal(&b, t0 + Duration::from_secs(1));
        assert_eq!(r.state, BreakerState::Open);
        assert_eq!(r.reason, "3 failures in a row");
        assert_eq!(r.retry_after_secs, 4);
    }

    #[test]
    fn opens_on_failure_rate_once_min_calls_is_reached() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        // Alternate so the in-a-row trigger (3) never fires: F S F S F = 3 of 5, under min_calls.
        for outcome in [
            Outcome::Failure,
            Outcome::Success,
            Outcome::Failure,
            Outcome::Success,
            Outcome::Failure,
        ] {
            assert!(call(&b, t0, outcome).is_empty());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // The 6th call reaches min_calls, but a success is not where the rate is judged.
        assert!(call(&b, t0, Outcome::Success).is_empty());
        // 4 of 7 > 0.5.
        let moves = call(&b, t0 + Duration::from_secs(2), Outcome::Failure);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].detail, "4 of 7 calls failed in 10s");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn rate_at_the_limit_does_not_open() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        // F S F S F S: 3 of 6 is exactly 0.5, not above it.
        for i in 0..6 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert!(call(&b, t0, outcome).is_empty());
        }
        assert_eq!(b.snapshot(t0).window_calls, 6);
        assert_eq!(b.snapshot(t0).window_failures, 3);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let t0 = Duration::from_secs(1_000);
        let s = BreakerSettings {
            consecutive_failures: 0, // only the rate
            min_calls: 4,
            ..settings()
        };
        let b = CircuitBreaker::new(&s);
        for _ in 0..3 {
            assert!(call(&b, t0, Outcome::Failure).is_empty());
        }
        // 11 s later the three failures are gone: 1 of 2 calls is not over min_calls.
        let later = t0 + Duration::from_secs(11);
        assert!(call(&b, later, Outcome::Success).is_empty());
        assert!(call(&b, later, Outcome::Failure).is_empty());
        assert_eq!(b.snapshot(later).window_calls, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        // Whereas within the window they count: a fresh breaker, same calls 5 s apart, opens.
        let b = CircuitBreaker::new(&s);
        for _ in 0..3 {
            assert!(call(&b, t0, Outcome::Failure).is_empty());
        }
        let soon = t0 + Duration::from_secs(5);
        assert!(call(&b, soon, Outcome::Success).is_empty());
        let moves = call(&b, soon, Outcome::Failure);
        assert_eq!(moves[0].detail, "4 of 5 calls failed in 10s");
    }

    #[test]
    fn min_calls_holds_the_rate_back() {
        let t0 = Duration::from_secs(1_000);
        let s = BreakerSettings {
            consecutive_failures: 0,
            min_calls: 20,
            ..settings()
        };
        let b = CircuitBreaker::new(&s);
        for _ in 0..19 {
            assert!(call(&b, t0, Outcome::Failure).is_empty());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            call(&b, t0, Outcome::Failure)[0].detail,
            "20 of 20 calls failed in 10s"
        );
    }

    #[test]
    fn half_open_after_cooldown_then_a_probe_success_closes() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        assert_eq!(
            refusal(&b, t0 + Duration::from_millis(4_999)).retry_after_secs,
            1
        );
        let after = t0 + Duration::from_secs(5);
        let admission = b.try_acquire(after).expect("probe admitted");
        assert!(admission.permit.is_probe());
        let moved = admission.transition.expect("to half-open");
        assert_eq!(
            (moved.from, moved.to),
            (BreakerState::Open, BreakerState::HalfOpen)
        );
        assert_eq!(moved.to, BreakerState::HalfOpen);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe limit is 1: a second call is refused while the probe runs.
        let r = refusal(&b, after);
        assert_eq!(r.state, BreakerState::HalfOpen);
        assert_eq!(r.retry_after_secs, 1);
        assert_eq!(r.reason, "waiting for 1 probe call in flight");
        let closed = b
            .on_result(admission.permit, Outcome::Success, after)
            .expect("closes");
        assert_eq!(closed.to, BreakerState::Closed);
        assert_eq!(closed.detail, "1 probe call succeeded");
        assert_eq!(closed.to, BreakerState::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        // The window starts afresh: two failures do not open it.
        assert!(call(&b, after, Outcome::Failure).is_empty());
        assert!(call(&b, after, Outcome::Failure).is_empty());
        assert_eq!(b.snapshot(after).times_opened, 1);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_fresh_cooldown() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        let probe_at = t0 + Duration::from_secs(6);
        let moves = call(&b, probe_at, Outcome::Failure);
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[0].to, BreakerState::HalfOpen);
        assert_eq!(
            (moves[1].from, moves[1].to, moves[1].detail.as_str()),
            (
                BreakerState::HalfOpen,
                BreakerState::Open,
                "a probe call failed"
            )
        );
        // The cool-down counts from the failed probe, not from the first opening.
        let r = refusal(&b, probe_at + Duration::from_secs(2));
        assert_eq!(
            (r.retry_after_secs, r.reason.as_str()),
            (3, "a probe call failed")
        );
        let snap = b.snapshot(probe_at);
        assert_eq!(snap.times_opened, 2);
        assert_eq!(snap.retry_after_secs, Some(5));
        assert_eq!(
            snap.last_opened_because.as_deref(),
            Some("a probe call failed")
        );
    }

    #[test]
    fn several_probes_must_all_succeed() {
        let t0 = Duration::from_secs(1_000);
        let s = BreakerSettings {
            half_open_probes: 2,
            ..settings()
        };
        let b = CircuitBreaker::new(&s);
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        let at = t0 + Duration::from_secs(5);
        let first = b.try_acquire(at).expect("probe 1");
        let second = b.try_acquire(at).expect("probe 2");
        assert!(second.transition.is_none() && second.permit.is_probe());
        assert_eq!(refusal(&b, at).state, BreakerState::HalfOpen);
        assert!(b.on_result(first.permit, Outcome::Success, at).is_none());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let closed = b
            .on_result(second.permit, Outcome::Success, at)
            .expect("closes");
        assert_eq!(closed.detail, "2 probe calls succeeded");
    }

    #[test]
    fn a_dropped_probe_frees_its_slot_and_counts_nothing() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        let at = t0 + Duration::from_secs(5);
        let probe = b.try_acquire(at).expect("probe");
        assert!(b.try_acquire(at).is_err());
        b.release(probe.permit);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let again = b.try_acquire(at).expect("slot free again");
        assert!(again.permit.is_probe() && again.transition.is_none());
        assert!(b.on_result(again.permit, Outcome::Success, at).is_some());
    }

    #[test]
    fn results_of_calls_admitted_before_a_transition_are_ignored() {
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        let slow = b.try_acquire(t0).expect("admitted while closed").permit;
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        // The slow call fails after the breaker opened: no new opening, cool-down unchanged.
        assert!(
            b.on_result(slow, Outcome::Failure, t0 + Duration::from_secs(3))
                .is_none()
        );
        assert_eq!(refusal(&b, t0 + Duration::from_secs(3)).retry_after_secs, 2);
        assert_eq!(b.snapshot(t0).times_opened, 1);
        // Nor does a stale success close a half-open breaker.
        let at = t0 + Duration::from_secs(5);
        let first_probe = b.try_acquire(at).expect("probe").permit;
        let stale_generation = first_probe.generation;
        assert!(b.on_result(first_probe, Outcome::Failure, at).is_some());
        let late = b
            .try_acquire(at + Duration::from_secs(5))
            .expect("new probe");
        assert!(late.transition.is_some());
        let old_probe = Permit {
            generation: stale_generation,
            probe: true,
        };
        assert!(b.on_result(old_probe, Outcome::Success, at).is_none());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.release(late.permit);
    }

    #[test]
    fn disabled_always_admits_and_never_opens() {
        let t0 = Duration::from_secs(1_000);
        let s = BreakerSettings {
            enabled: false,
            ..settings()
        };
        let b = CircuitBreaker::new(&s);
        for _ in 0..50 {
            assert!(call(&b, t0, Outcome::Failure).is_empty());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        let t0 = Duration::from_secs(1_000);
        let b = CircuitBreaker::new(&settings());
        for _ in 0..3 {
            let _ = call(&b, t0, Outcome::Failure);
        }
        assert_eq!(refusal(&b, t0).retry_after_secs, 5);
        assert_eq!(
            refusal(&b, t0 + Duration::from_millis(100)).retry_after_secs,
            5
        );
        assert_eq!(
            refusal(&b, t0 + Duration::from_millis(4_100)).retry_after_secs,
            1
        );
        assert_eq!(
            b.snapshot(t0 + Duration::from_secs(9)).retry_after_secs,
            Some(0)
        );
    }
}

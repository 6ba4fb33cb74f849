//! Reading that keeps polling for a moment after each message instead of sleeping at once, when
//! that makes round trips faster.
//!
//! A process plugin's round trip is two wake-ups: the child wakes for the request, the host for
//! the answer. On a virtual machine whose idle CPUs halt, each wake-up of a sleeping thread costs
//! tens of microseconds (measured here: ~50 µs for a pipe round trip between two processes whose
//! threads sleep, ~5 µs when the CPUs are busy; see BENCHMARKS.md). [`SpinRead`] trades a bounded
//! amount of CPU for that latency: while messages come close together, for `budget` after each
//! one a read that finds nothing wakes its own task again instead of letting it sleep, so the
//! runtime keeps polling (its I/O driver included) and the next message is picked up as soon as it
//! lands. Once the budget has passed with nothing to read, the task sleeps as usual; after a long
//! gap it does not spin at all, so sparse traffic and an idle connection cost nothing.
//!
//! Spinning only pays while the CPUs have time to spare. On a machine whose cores are all busy,
//! the wake-up is cheap and the polling thread takes CPU time from the peer it waits for: the
//! round trip gets *slower* (on the benchmark machine under load, p50 68 µs spinning against
//! 17 µs sleeping). So [`SpinPolicy`] measures instead of guessing: it times the gaps between
//! messages that come close together, in rounds of [`ROUND`] messages, spinning in some rounds and
//! sleeping in others, and keeps to whichever gave the shorter mean gap (spinning must win by an
//! eighth: when both are alike, as under many concurrent calls whose pace the caller sets,
//! sleeping costs less). It tries the other way again every [`RETRY_EVERY`] rounds, as the load of
//! the machine changes.
//!
//! The task returns `Pending` on every spin, so other tasks on the same runtime keep running
//! (a call in the child, the host's other work); it only keeps the thread from going to sleep.
//!
//! On by default ([`DEFAULT_SPIN`], [`ProcessSettings::spin`](crate::policy::ProcessSettings::spin)):
//! the rules above make it adaptive, so it costs CPU only while calls come close together and
//! spinning makes them faster, and an idle plugin costs none (BENCHMARKS.md measures both).
//! `spin_us: 0` turns it off.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

/// The spin budget of a process plugin that does not set `spin_us`: 50 µs. It covers a round
/// trip of a no-op call with room to spare (about 15 µs while both sides poll) and makes "close
/// together" mean under 100 µs apart.
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Messages per round: [`SpinPolicy`] compares the mean gap of whole rounds.
pub(crate) const ROUND: u32 = 32;

/// Every this many rounds, [`SpinPolicy`] spends one round the other way, to see whether it has
/// become the faster one.
pub(crate) const RETRY_EVERY: u32 = 16;

/// When to spin: a pure state machine over the times messages arrive (the caller passes the
/// clock's readings), so it is tested without sleeping.
#[derive(Debug, Clone)]
pub(crate) struct SpinPolicy {
    budget: Duration,
    /// When the last message arrived; `None` before the first.
    last: Option<quanta::Instant>,
    /// Whether messages come close enough together for spinning to pay: the gap before the last
    /// one was under twice the budget.
    dense: bool,
    /// Whether this round spins.
    spin: bool,
    /// Close-together gaps in this round, and their sum.
    count: u32,
    sum: Duration,
    /// The mean gap of the last round that spun, and of the last that slept.
    spun: Option<Duration>,
    slept: Option<Duration>,
    /// Rounds since the other way was last tried.
    rounds: u32,
}

impl SpinPolicy {
    /// A policy that spins up to `budget` after a message; a zero budget never spins. It starts
    /// by spinning.
    pub(crate) fn new(budget: Duration) -> SpinPolicy {
        SpinPolicy {
            budget,
            last: None,
            dense: false,
            spin: true,
            count: 0,
            sum: Duration::ZERO,
            spun: None,
            slept: None,
            rounds: 0,
        }
    }

    /// Whether a read that finds nothing at `now` should spin rather than sleep: this round
    /// spins, messages have been coming close together, and the budget since the last one is not
    /// used up.
    pub(crate) fn spinning(&self, now: quanta::Instant) -> bool {
        self.spin
            && self.dense
            && self
                .last
                .is_some_and(|at| now.saturating_duration_since(at) < self.budget)
    }

    /// Notes that a message arrived at `now`. Spinning pays only when the next message comes
    /// within the budget; that is judged by the gap before this one, against twice the budget (a
    /// gap measured without spinning includes the wake-up that spinning would save). Such gaps
    /// are what the rounds compare.
    pub(crate) fn arrived(&mut self, now: quanta::Instant) {
        if self.budget.is_zero() {
            return;
        }
        let gap = self
            .last
            .map(|before| now.saturating_duration_since(before));
        self.last = Some(now);
        self.dense = gap.is_some_and(|gap| gap < 2 * self.budget);
        if let Some(gap) = gap.filter(|_| self.dense) {
            self.count += 1;
            self.sum += gap;
            if self.count == ROUND {
                self.end_round();
            }
        }
    }

    /// Records the round's mean gap and picks the way of the next one.
    fn end_round(&mut self) {
        let mean = self.sum / self.count;
        if self.spin {
            self.spun = Some(mean);
        } else {
            self.slept = Some(mean);
        }
        (self.count, self.sum) = (0, Duration::ZERO);
        self.rounds += 1;
        let best = match (self.spun, self.slept) {
            (_, None) => false,
            (None, _) => true,
            // Spinning must win by an eighth to be worth its CPU.
            (Some(spun), Some(slept)) => spun + spun / 8 < slept,
        };
        let retry = self.rounds >= RETRY_EVERY;
        if retry {
            self.rounds = 0;
        }
        self.spin = best != retry;
    }
}

/// An [`AsyncRead`] that, while its [`SpinPolicy`] says so, wakes its task again when a read
/// finds nothing, instead of letting it sleep. A zero budget reads as `inner` does.
///
/// The host wraps the reader of each process plugin's output in one
/// ([`ProcessSettings::spin`](crate::policy::ProcessSettings::spin)), and so does the runner for
/// the host's input.
#[derive(Debug)]
pub struct SpinRead<R> {
    inner: R,
    policy: SpinPolicy,
}

impl<R> SpinRead<R> {
    /// Reads `inner`, spinning for up to `budget` after each message while that pays.
    pub fn new(inner: R, budget: Duration) -> SpinRead<R> {
        SpinRead {
            inner,
            policy: SpinPolicy::new(budget),
        }
    }

    #[cfg(test)]
    fn spinning(&self) -> bool {
        self.policy.spinning(quanta::Instant::now())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SpinRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before && !self.policy.budget.is_zero() {
                    self.policy.arrived(quanta::Instant::now());
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                // `inner` has registered the waker for when data comes; waking it now as well
                // only makes the runtime poll this task again soon instead of sleeping.
                if self.policy.spinning(quanta::Instant::now()) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Counts how often it is polled.
    struct Polls {
        inner: DuplexStream,
        count: Arc<AtomicUsize>,
    }

    impl AsyncRead for Polls {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.count.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// Reads a byte, waits `gap`, reads another, then waits 50 ms for a third that comes late;
    /// returns how often the reader was polled while it waited for the third.
    async fn polls_waiting(budget: Duration, gap: Duration) -> usize {
        let (mut to_reader, from_writer) = tokio::io::duplex(64);
        let count = Arc::new(AtomicUsize::new(0));
        let mut reader = SpinRead::new(
            Polls {
                inner: from_writer,
                count: count.clone(),
            },
            budget,
        );
        let mut byte = [0u8; 1];
        for b in [b'a', b'b'] {
            to_reader.write_all(&[b]).await.unwrap();
            reader.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte[0], b);
            tokio::time::sleep(gap).await;
        }
        let before = count.load(Ordering::Relaxed);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            to_reader.write_all(b"c").await.unwrap();
            to_reader
        });
        reader.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"c", "every byte arrives, spinning or not");
        drop(late.await.unwrap());
        count.load(Ordering::Relaxed) - before
    }

    #[tokio::test]
    async fn spins_while_messages_come_close_together() {
        // Two messages well within twice the budget: waiting for the third, the task keeps
        // polling.
        let spinning = polls_waiting(Duration::from_secs(10), Duration::ZERO).await;
        assert!(spinning > 100, "dense messages spin: {spinning} polls");
    }

    #[tokio::test]
    async fn sleeps_without_a_budget_or_after_a_long_gap() {
        // No budget: polled once, then woken by the data.
        let off = polls_waiting(Duration::ZERO, Duration::ZERO).await;
        assert!(off <= 4, "no budget, no spinning: {off} polls");
        // A gap of 20 ms against a 1 ms budget: spinning would not have caught the message.
        let sparse = polls_waiting(Duration::from_millis(1), Duration::from_millis(20)).await;
        assert!(sparse <= 4, "sparse messages do not spin: {sparse} polls");
    }

    /// Feeds `policy` `rounds` rounds of messages whose gap depends on whether it spins (as a
    /// machine would answer), from `*now` on; returns the share of messages that came while it
    /// spun.
    fn drive(
        policy: &mut SpinPolicy,
        now: &mut quanta::Instant,
        rounds: u32,
        gap: impl Fn(bool) -> u64,
    ) -> f64 {
        let mut spun = 0;
        let total = rounds * ROUND;
        for _ in 0..total {
            let spin = policy.spin;
            spun += u32::from(spin);
            *now += Duration::from_micros(gap(spin));
            policy.arrived(*now);
            assert_eq!(
                policy.spinning(*now),
                policy.spin,
                "right after a close message, it spins exactly in a spinning round"
            );
        }
        f64::from(spun) / f64::from(total)
    }

    #[test]
    fn keeps_spinning_where_it_shortens_the_round_trip() {
        // An idle machine: 15 µs between messages while spinning, 50 µs while sleeping.
        let mut policy = SpinPolicy::new(Duration::from_micros(50));
        let mut now = quanta::Instant::now();
        policy.arrived(now);
        let share = drive(&mut policy, &mut now, 10 * RETRY_EVERY, |spin| {
            if spin { 15 } else { 50 }
        });
        assert!(share > 0.85, "spun for {share:.2} of the messages");
        assert!(policy.spinning(now + Duration::from_micros(49)) == policy.spin);
        assert!(
            !policy.spinning(now + Duration::from_micros(50)),
            "budget used up"
        );
    }

    #[test]
    fn stops_spinning_where_it_slows_the_round_trip_or_gains_nothing() {
        // A busy machine: spinning takes CPU from the peer, 68 µs against 17 µs.
        let mut policy = SpinPolicy::new(Duration::from_micros(50));
        let mut now = quanta::Instant::now();
        policy.arrived(now);
        let share = drive(&mut policy, &mut now, 10 * RETRY_EVERY, |spin| {
            if spin { 68 } else { 17 }
        });
        assert!(share < 0.15, "spun for {share:.2} of the messages");
        // Many concurrent calls: the caller sets the pace, 30 µs either way; sleeping is cheaper.
        let share = drive(&mut policy, &mut now, 10 * RETRY_EVERY, |_| 30);
        assert!(share < 0.15, "spun for {share:.2} of the messages");
    }

    #[test]
    fn follows_the_machine_when_its_load_changes() {
        let mut policy = SpinPolicy::new(Duration::from_micros(50));
        let mut now = quanta::Instant::now();
        policy.arrived(now);
        let busy = |spin: bool| if spin { 68 } else { 17 };
        let idle = |spin: bool| if spin { 15 } else { 50 };
        drive(&mut policy, &mut now, 4 * RETRY_EVERY, busy);
        // Within two retries of the load going away, it spins again, and stays.
        drive(&mut policy, &mut now, 2 * RETRY_EVERY + 1, idle);
        assert!(drive(&mut policy, &mut now, 4 * RETRY_EVERY, idle) > 0.85);
        drive(&mut policy, &mut now, 2 * RETRY_EVERY + 1, busy);
        assert!(drive(&mut policy, &mut now, 4 * RETRY_EVERY, busy) < 0.15);
    }

    #[test]
    fn sparse_messages_never_spin_and_a_zero_budget_never_does() {
        let mut policy = SpinPolicy::new(Duration::from_micros(50));
        let mut now = quanta::Instant::now();
        for _ in 0..1000 {
            now += Duration::from_micros(100);
            policy.arrived(now);
            assert!(
                !policy.spinning(now),
                "a gap of twice the budget is not close"
            );
        }
        assert_eq!((policy.count, policy.spun, policy.slept), (0, None, None));
        let mut off = SpinPolicy::new(Duration::ZERO);
        for _ in 0..1000 {
            now += Duration::from_micros(1);
            off.arrived(now);
            assert!(!off.spinning(now));
        }
    }

    #[tokio::test]
    async fn stops_spinning_once_the_budget_has_passed() {
        let budget = Duration::from_millis(300);
        let (mut to_reader, from_writer) = tokio::io::duplex(64);
        let mut reader = SpinRead::new(from_writer, budget);
        let mut byte = [0u8; 1];
        to_reader.write_all(b"ab").await.unwrap();
        reader.read_exact(&mut byte).await.unwrap();
        assert!(
            !reader.spinning(),
            "one message says nothing about the next"
        );
        reader.read_exact(&mut byte).await.unwrap();
        assert!(reader.spinning(), "two close together do");
        tokio::time::sleep(budget + Duration::from_millis(50)).await;
        assert!(!reader.spinning(), "the budget has passed");
    }
}

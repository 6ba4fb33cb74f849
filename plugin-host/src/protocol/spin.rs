//! Reading that keeps polling for a moment after each message instead of sleeping at once.
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
//! The task returns `Pending` on every spin, so other tasks on the same runtime keep running
//! (a call in the child, the host's other work); it only keeps the thread from going to sleep.
//! Off by default ([`ProcessSettings::spin`](crate::policy::ProcessSettings::spin)): on a machine
//! without idle cores the polling competes with real work.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

/// An [`AsyncRead`] that, for `budget` after each read that returned data, wakes its task again
/// when a read finds nothing, instead of letting it sleep. A zero budget reads as `inner` does.
///
/// The host wraps the reader of each process plugin's output in one
/// ([`ProcessSettings::spin`](crate::policy::ProcessSettings::spin)), and so does the runner for
/// the host's input.
#[derive(Debug)]
pub struct SpinRead<R> {
    inner: R,
    budget: Duration,
    /// When the last read returned data; `None` before the first.
    last_data: Option<quanta::Instant>,
    /// Whether messages come close enough together for spinning to pay: the gap before the last
    /// one was under twice the budget.
    dense: bool,
}

impl<R> SpinRead<R> {
    /// Reads `inner`, spinning for `budget` after each message.
    pub fn new(inner: R, budget: Duration) -> SpinRead<R> {
        SpinRead {
            inner,
            budget,
            last_data: None,
            dense: false,
        }
    }

    /// Whether a read that found nothing now should spin rather than sleep: messages have been
    /// coming close together, and the budget since the last one is not used up.
    fn spinning(&self) -> bool {
        self.dense && self.last_data.is_some_and(|at| at.elapsed() < self.budget)
    }

    /// Notes that data arrived now. Spinning pays only when the next message comes within the
    /// budget; that is judged by the gap before this one, against twice the budget (a gap measured
    /// without spinning includes the wake-up that spinning would save).
    fn arrived(&mut self) {
        let now = quanta::Instant::now();
        self.dense = self
            .last_data
            .is_some_and(|before| now.saturating_duration_since(before) < 2 * self.budget);
        self.last_data = Some(now);
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
                if !self.budget.is_zero() && buf.filled().len() > before {
                    self.arrived();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                // `inner` has registered the waker for when data comes; waking it now as well
                // only makes the runtime poll this task again soon instead of sleeping.
                if self.spinning() {
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

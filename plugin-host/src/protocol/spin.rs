//! Reading that keeps polling for a moment after each message instead of sleeping at once.
//!
//! A process plugin's round trip is two wake-ups: the child wakes for the request, the host for
//! the answer. On a virtual machine whose idle CPUs halt, each wake-up of a sleeping thread costs
//! tens of microseconds (measured here: ~50 µs for a pipe round trip between two processes whose
//! threads sleep, ~5 µs when the CPUs are busy; see BENCHMARKS.md). [`SpinRead`] trades a bounded
//! amount of CPU for that latency: for `budget` after data arrived, a read that finds nothing
//! wakes its own task again instead of letting it sleep, so the runtime keeps polling (its I/O
//! driver included) and the next message is picked up as soon as it lands. Once the budget has
//! passed with nothing to read, the task sleeps as usual: an idle connection costs nothing.
//!
//! The task returns `Pending` on every spin, so other tasks on the same runtime keep running
//! (a call in the child, the host's other work); it only keeps the thread from going to sleep.

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
}

impl<R> SpinRead<R> {
    /// Reads `inner`, spinning for `budget` after each message.
    pub fn new(inner: R, budget: Duration) -> SpinRead<R> {
        SpinRead {
            inner,
            budget,
            last_data: None,
        }
    }

    /// Whether a read that found nothing now should spin rather than sleep.
    fn spinning(&self) -> bool {
        !self.budget.is_zero() && self.last_data.is_some_and(|at| at.elapsed() < self.budget)
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
                    self.last_data = Some(quanta::Instant::now());
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts how often its task is polled while the read waits.
    struct Polls<R> {
        inner: R,
        count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Polls<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// Reads one message, then waits `quiet` for a second one that comes late; returns how often
    /// the reader was polled in all.
    async fn polls_with(budget: Duration, quiet: Duration) -> usize {
        let (mut to_reader, from_writer) = tokio::io::duplex(64);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut reader = SpinRead::new(
            Polls {
                inner: from_writer,
                count: count.clone(),
            },
            budget,
        );
        to_reader.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");
        let late = tokio::spawn(async move {
            tokio::time::sleep(quiet).await;
            to_reader.write_all(b"two").await.unwrap();
            to_reader
        });
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two", "every byte arrives, spinning or not");
        drop(late.await.unwrap());
        count.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn spins_after_data_and_sleeps_without_a_budget() {
        // No budget: the waiting read is polled once, then woken by the data (a few polls).
        let sleeping = polls_with(Duration::ZERO, Duration::from_millis(50)).await;
        assert!(
            sleeping <= 4,
            "a reader without budget sleeps: {sleeping} polls"
        );
        // A budget longer than the wait: the task keeps polling the whole time.
        let spinning = polls_with(Duration::from_secs(10), Duration::from_millis(50)).await;
        assert!(
            spinning > 100,
            "a reader within its budget keeps polling: {spinning} polls"
        );
    }

    #[tokio::test]
    async fn stops_spinning_once_the_budget_has_passed() {
        let budget = Duration::from_millis(300);
        let (mut to_reader, from_writer) = tokio::io::duplex(64);
        let mut reader = SpinRead::new(from_writer, budget);
        assert!(!reader.spinning(), "nothing read yet");
        to_reader.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        reader.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(budget + Duration::from_millis(50)).await;
        assert!(!reader.spinning(), "the budget has passed");
        to_reader.write_all(b"y").await.unwrap();
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"y");
        assert!(reader.spinning(), "data starts the budget again");
    }
}

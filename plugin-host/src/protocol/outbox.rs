//! The sending side of a connection: any task queues whole messages without waiting, one writer
//! task writes them.
//!
//! Queuing serializes the message straight into a shared buffer under a short lock, so a message is
//! either queued whole or not at all: a caller dropped at any point can never leave half a frame
//! on the wire. The writer swaps the buffer out and writes everything queued since its last write
//! with one `write_all` and one flush, so messages queued together go out in one system call.
//!
//! The bytes waiting (queued, plus the batch the writer is still writing) are bounded: a peer that
//! stops reading cannot make the host buffer without limit. A message that would take them over
//! the bound is refused ([`PushError::Full`]), unless nothing at all is waiting, so one message up
//! to the frame limit always fits. [`Outbox::written`] counts the bytes the peer took, so a caller
//! can tell a slow reader from one that reads nothing.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::message::{JSONRPC, Outgoing};

/// A buffer larger than this is freed after its batch is written rather than kept for reuse.
const KEEP_CAPACITY: usize = 1 << 20;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Its encoding (without the newline) is this many bytes, over the frame limit.
    TooLarge(usize),
    /// The outbox is closed: the connection is finished.
    Closed,
    /// The peer is not reading: this many bytes are waiting already, and the message would take
    /// them over the bound.
    Full(usize),
}

#[derive(Debug, Default)]
struct State {
    /// Encoded messages, each ending with `\n`, not yet handed to the writer.
    queued: Vec<u8>,
    /// No more messages are accepted; the writer writes what is queued and stops.
    closed: bool,
    /// The size of the batch the writer took and has not finished writing.
    writing: usize,
    /// Bytes the writer has written since the start.
    written: u64,
}

/// Messages waiting to be written, shared by everyone who sends and the writer task.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    max_frame: usize,
    max_waiting: usize,
}

impl Outbox {
    /// An open outbox for frames of at most `max_frame` bytes, holding at most `max_waiting` bytes
    /// not yet written (or one message, whatever its size).
    pub fn new(max_frame: usize, max_waiting: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            max_frame,
            max_waiting,
        }
    }

    /// The bound on bytes waiting to be written.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Bytes written to the peer so far: when it stays the same while [`PushError::Full`] is
    /// returned, the peer reads nothing.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// The frame limit, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one message. Never waits for I/O.
    pub fn push<T: Serialize + ?Sized>(&self, message: &T) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        let start = state.queued.len();
        let encoded = serde_json::to_writer(&mut state.queued, message);
        let len = state.queued.len() - start;
        let waiting = start + state.writing;
        let refused = if encoded.is_err() || len > self.max_frame {
            // Our message types always encode; an error can only be a size problem.
            Some(PushError::TooLarge(len))
        } else if waiting > 0 && waiting + len + 1 > self.max_waiting {
            Some(PushError::Full(waiting))
        } else {
            None
        };
        if let Some(refused) = refused {
            state.queued.truncate(start);
            if state.queued.capacity() > KEEP_CAPACITY && start == 0 {
                state.queued = Vec::new();
            }
            return Err(refused);
        }
        state.queued.push(b'\n');
        drop(state);
        if start == 0 {
            // The writer has taken everything queued before: tell it there is more. When the
            // buffer was not empty, it has been told already and has not yet looked.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a notification (a message without an id); best effort.
    pub fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) {
        let _ = self.push(&Outgoing {
            jsonrpc: JSONRPC,
            id: None,
            method,
            params,
        });
    }

    /// Accepts no more messages; the writer writes what is queued, shuts the stream down and
    /// stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Whether [`close`](Outbox::close) was called.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Writes one batch and flushes, counting every byte the peer takes as it takes it, so that
    /// a slow reader is seen making progress.
    async fn write_batch<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        batch: &[u8],
    ) -> std::io::Result<()> {
        let mut done = 0;
        while done < batch.len() {
            let n = writer.write(&batch[done..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
            let mut state = self.lock();
            state.writing -= n;
            state.written += n as u64;
        }
        writer.flush().await
    }

    /// The writer: writes queued messages until the outbox is closed and empty. On an error the
    /// outbox is closed and the error returned.
    pub async fn run<W: AsyncWrite + Unpin>(&self, mut writer: W) -> std::io::Result<()> {
        let mut batch = Vec::new();
        loop {
            let closed = {
                let mut state = self.lock();
                std::mem::swap(&mut state.queued, &mut batch);
                state.writing = batch.len();
                state.closed
            };
            if !batch.is_empty() {
                if let Err(e) = self.write_batch(&mut writer, &batch).await {
                    self.close();
                    return Err(e);
                }
                batch.clear();
                if batch.capacity() > KEEP_CAPACITY {
                    batch = Vec::new();
                }
                continue;
            }
            if closed {
                // Dropping the writer after this ends the stream for the reader on the other side.
                let _ = writer.shutdown().await;
                return Ok(());
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn messages_are_written_whole_in_order_then_the_stream_ends() {
        let outbox = Arc::new(Outbox::new(1024, 1 << 20));
        let (tx, mut rx) = tokio::io::duplex(16);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run(tx).await }
        });
        for i in 0..50 {
            outbox.push(&serde_json::json!({ "n": i })).unwrap();
        }
        outbox.notify("log", &serde_json::json!({"level": "info", "message": "x"}));
        outbox.close();
        assert_eq!(outbox.push(&1), Err(PushError::Closed));
        let mut text = String::new();
        rx.read_to_string(&mut text).await.unwrap();
        writer.await.unwrap().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 51);
        assert_eq!(lines[0], r#"{"n":0}"#);
        assert_eq!(lines[49], r#"{"n":49}"#);
        assert_eq!(
            lines[50],
            r#"{"jsonrpc":"2.0","method":"log","params":{"level":"info","message":"x"}}"#
        );
    }

    #[test]
    fn an_oversized_message_is_refused_and_leaves_the_queue_as_it_was() {
        let outbox = Outbox::new(10, 1 << 20);
        outbox.push("abc").unwrap();
        assert_eq!(outbox.push("0123456789"), Err(PushError::TooLarge(12)));
        assert_eq!(outbox.lock().queued, b"\"abc\"\n");
        outbox.push("12345678").unwrap(); // exactly 10 bytes with its quotes
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_fills_the_bound_and_no_more() {
        let outbox = Arc::new(Outbox::new(1024, 100));
        // The peer holds 16 bytes, then stops reading.
        let (tx, mut rx) = tokio::io::duplex(16);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run(tx).await }
        });
        // One message always fits, however large: nothing is waiting.
        outbox.push(&"x".repeat(200)).unwrap();
        assert_eq!(outbox.push(&1), Err(PushError::Full(203)));
        // The writer takes it and writes 16 bytes; the rest of its batch still counts.
        tokio::task::yield_now().await;
        let mut refused = 0;
        for _ in 0..10 {
            if let Err(PushError::Full(waiting)) = outbox.push(&"y".repeat(10)) {
                assert!(waiting <= 203, "{waiting}");
                refused += 1;
            }
        }
        assert_eq!(refused, 10, "nothing more fits while 203 bytes wait");
        assert_eq!(outbox.written(), 16, "what the peer's buffer took");
        // The peer reads: the batch is written, and messages fit again.
        let mut all = vec![0; 203];
        rx.read_exact(&mut all).await.unwrap();
        let wait = async {
            while outbox.written() < 203 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .unwrap();
        assert_eq!(outbox.written(), 203);
        for _ in 0..5 {
            outbox.push(&"z".repeat(10)).unwrap();
        }
        assert!(matches!(
            outbox.push(&"z".repeat(60)),
            Err(PushError::Full(_))
        ));
        outbox.close();
        let mut rest = String::new();
        rx.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest.lines().count(), 5);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_write_error_closes_the_outbox() {
        let outbox = Outbox::new(1024, 1 << 20);
        let (tx, rx) = tokio::io::duplex(16);
        drop(rx);
        outbox.push(&1).unwrap();
        let err = outbox.run(tx).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        assert!(outbox.is_closed());
        assert_eq!(outbox.push(&1), Err(PushError::Closed));
    }
}

//! The sending side of a connection: any task sends whole messages without waiting. A message
//! sent while nothing else is waiting to be written is written at once by the sender itself; the
//! rest, one writer task writes.
//!
//! Sending serializes the message straight into a shared buffer under a short lock, so a message
//! is either queued whole or not at all: a caller dropped at any point can never leave half a
//! frame on the wire. While the writer task has nothing to do, the stream is lent to the senders:
//! one that finds the buffer empty writes its message straight away, under the same lock, with a
//! non-blocking write (a `poll_write` that is never left waiting), and saves the round trip
//! through the writer task: on a current-thread runtime that is one task switch, on a
//! multi-thread one a wake-up of another thread. Whatever that write could not take (the peer's
//! buffer is full) stays queued for the writer task, which waits for the stream as usual. The
//! writer swaps the buffer out and writes everything queued since its last write with one
//! `write_all` and one flush, so messages queued together go out in one system call.
//!
//! The bytes waiting (queued, plus the batch the writer is still writing) are bounded: a peer that
//! stops reading cannot make the host buffer without limit. A message that would take them over
//! the bound is refused ([`PushError::Full`]), unless nothing at all is waiting, so one message up
//! to the frame limit always fits. [`Outbox::written`] counts the bytes the peer took, so a caller
//! can tell a slow reader from one that reads nothing.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::message::{JSONRPC, Outgoing};

/// A buffer larger than this is freed after its batch is written rather than kept for reuse.
const KEEP_CAPACITY: usize = 1 << 20;

/// The stream messages are written to, whatever it is.
type Stream = Box<dyn AsyncWrite + Send + Unpin>;

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

#[derive(Default)]
struct State {
    /// Encoded messages, each ending with `\n`, not yet handed to the writer.
    queued: Vec<u8>,
    /// No more messages are accepted; the writer writes what is queued and stops.
    closed: bool,
    /// The size of the batch the writer took and has not finished writing.
    writing: usize,
    /// Bytes written since the start.
    written: u64,
    /// The stream, while the writer task waits for work: a sender that finds nothing queued
    /// writes to it directly.
    lent: Option<Stream>,
    /// A direct write could not finish its flush: the writer task must flush.
    unflushed: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queued.len())
            .field("closed", &self.closed)
            .field("writing", &self.writing)
            .field("written", &self.written)
            .field("lent", &self.lent.is_some())
            .finish_non_exhaustive()
    }
}

impl State {
    /// Writes what is queued to the lent stream without waiting: as much as the stream takes now,
    /// then a flush. Returns whether all of it went out and was flushed; what the stream did not
    /// take stays queued. An error is left for the writer task, which meets it again and closes
    /// the outbox.
    fn write_now(&mut self) -> bool {
        let State {
            queued,
            lent: Some(stream),
            written,
            unflushed,
            ..
        } = self
        else {
            return false;
        };
        // A stream that would wait registers this waker, which wakes nothing: the writer task,
        // told to take over, polls the stream again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        let mut done = 0;
        while done < queued.len() {
            match Pin::new(&mut **stream).poll_write(&mut cx, &queued[done..]) {
                Poll::Ready(Ok(n)) if n > 0 => done += n,
                _ => break,
            }
        }
        *written += done as u64;
        queued.drain(..done);
        if !queued.is_empty() {
            return false;
        }
        if let Poll::Ready(Ok(())) = Pin::new(&mut **stream).poll_flush(&mut cx) {
            true
        } else {
            *unflushed = true;
            false
        }
    }
}

/// Ends the outbox with the writer's future, however it ends (its task aborted, the runtime shut
/// down): the stream it lent must not live on in the outbox, so the peer sees its input end as it
/// would had the writer held the stream all along.
struct Reclaim<'a>(&'a Outbox);

impl Drop for Reclaim<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        let stream = state.lent.take();
        drop(state);
        drop(stream);
    }
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

    /// Sends one message: writes it at once when nothing else waits to be written and the stream
    /// takes it, queues it for the writer task otherwise. Never waits for I/O.
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
        if start > 0 {
            // The writer has been told already and has not yet looked.
            return Ok(());
        }
        // Nothing was waiting: write it now if the writer task lent us the stream; otherwise, or
        // for what the stream did not take, tell the writer there is more.
        if state.write_now() {
            return Ok(());
        }
        drop(state);
        self.wake.notify_one();
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
    async fn write_batch(&self, stream: &mut Stream, batch: &[u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < batch.len() {
            let n = stream.write(&batch[done..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
            let mut state = self.lock();
            state.writing -= n;
            state.written += n as u64;
        }
        stream.flush().await
    }

    /// The writer: writes queued messages until the outbox is closed and empty. While there is
    /// nothing to write it lends the stream to the senders (see the module's documentation). On
    /// an error the outbox is closed and the error returned.
    pub async fn run<W: AsyncWrite + Send + Unpin + 'static>(
        &self,
        writer: W,
    ) -> std::io::Result<()> {
        let _reclaim = Reclaim(self);
        let mut stream: Stream = Box::new(writer);
        let mut batch = Vec::new();
        loop {
            let (closed, unflushed, idle) = {
                let mut state = self.lock();
                std::mem::swap(&mut state.queued, &mut batch);
                state.writing = batch.len();
                let unflushed = std::mem::take(&mut state.unflushed);
                let idle = batch.is_empty() && !unflushed && !state.closed;
                (state.closed, unflushed, idle)
            };
            if idle {
                self.lock().lent = Some(stream);
                self.wake.notified().await;
                // Only this task takes the stream back, so it is there.
                let Some(back) = self.lock().lent.take() else {
                    return Ok(());
                };
                stream = back;
                continue;
            }
            if !batch.is_empty() {
                if let Err(e) = self.write_batch(&mut stream, &batch).await {
                    self.close();
                    return Err(e);
                }
                batch.clear();
                if batch.capacity() > KEEP_CAPACITY {
                    batch = Vec::new();
                }
                continue;
            }
            if unflushed {
                if let Err(e) = stream.flush().await {
                    self.close();
                    return Err(e);
                }
                continue;
            }
            if closed {
                // Dropping the stream after this ends it for the reader on the other side.
                let _ = stream.shutdown().await;
                return Ok(());
            }
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

    /// Polls the writer task until it has lent the stream (it has nothing to write).
    async fn until_lent(outbox: &Outbox) {
        while outbox.lock().lent.is_none() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_message_sent_while_the_writer_idles_is_written_by_the_sender() {
        use futures_util::FutureExt;
        let outbox = Arc::new(Outbox::new(1024, 1 << 20));
        let (tx, mut rx) = tokio::io::duplex(1024);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run(tx).await }
        });
        until_lent(&outbox).await;
        for i in 0..3 {
            outbox.push(&serde_json::json!({ "n": i })).unwrap();
            // No yield since the push: the writer task has not run, so the sender wrote it.
            let mut buf = [0u8; 64];
            let n = rx
                .read(&mut buf)
                .now_or_never()
                .expect("written before the writer task ran")
                .unwrap();
            assert_eq!(&buf[..n], format!("{{\"n\":{i}}}\n").as_bytes());
        }
        assert_eq!(outbox.written(), 24);
        outbox.close();
        writer.await.unwrap().unwrap();
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn what_a_direct_write_cannot_finish_the_writer_does_and_order_holds() {
        // The peer takes 16 bytes at a time and reads slowly; messages of many sizes come from
        // several tasks, some written directly, some partly, some queued behind a batch.
        let outbox = Arc::new(Outbox::new(1 << 16, 1 << 20));
        let (tx, mut rx) = tokio::io::duplex(16);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run(tx).await }
        });
        until_lent(&outbox).await;
        let mut senders = Vec::new();
        for task in 0..4u32 {
            let outbox = outbox.clone();
            senders.push(tokio::spawn(async move {
                for n in 0..50u32 {
                    let pad = "x".repeat(((task * 37 + n * 11) % 90) as usize);
                    outbox
                        .push(&serde_json::json!({ "task": task, "n": n, "pad": pad }))
                        .unwrap();
                    if n % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = rx.read(&mut buf).await.unwrap();
                if n == 0 {
                    break all;
                }
                all.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
        });
        for sender in senders {
            sender.await.unwrap();
        }
        outbox.close();
        writer.await.unwrap().unwrap();
        let all = reader.await.unwrap();
        let mut next = [0u64; 4];
        for line in all.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let message: serde_json::Value = serde_json::from_slice(line).expect("a whole frame");
            let task = message["task"].as_u64().unwrap() as usize;
            assert_eq!(message["n"], next[task], "each sender's messages in order");
            next[task] += 1;
        }
        assert_eq!(next, [50; 4], "every message arrived");
        assert_eq!(outbox.written(), all.len() as u64);
    }

    #[tokio::test]
    async fn dropping_the_writer_while_it_lends_the_stream_ends_the_peers_input() {
        let outbox = Arc::new(Outbox::new(1024, 1 << 20));
        let (tx, mut rx) = tokio::io::duplex(64);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.run(tx).await }
        });
        until_lent(&outbox).await;
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(outbox.push(&1), Err(PushError::Closed));
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

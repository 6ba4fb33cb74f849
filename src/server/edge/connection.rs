//! One connection: where it is in its request cycle, the deadline that follows from that, and the
//! task that drives hyper on it until it ends, times out, is shed or the server drains.
//!
//! Phases, and the deadline of each:
//!
//! | phase   | since                                  | deadline                      |
//! |---------|----------------------------------------|-------------------------------|
//! | `Fresh` | accept; no byte read yet               | since + `header_read_timeout` |
//! | `Head`  | accept, or the first byte of a later request | since + `header_read_timeout` |
//! | `Busy`  | hyper handed the request head to us    | none (the body has its own timeout) |
//! | `Idle`  | the response body was handed to hyper  | since + `idle_timeout`        |
//!
//! Every phase change happens on the connection's own task (hyper reads, calls the service and
//! drops the response body there), so the state needs no lock; the accept loop only reads it to
//! pick a connection to shed.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::service::EdgeService;
use crate::config::EdgeConfig;

/// Where a connection is in its request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Accepted, nothing read yet.
    Fresh = 0,
    /// Between requests on a kept-alive connection, nothing of the next one read yet.
    Idle = 1,
    /// Part of a request head has arrived.
    Head = 2,
    /// A request is being served.
    Busy = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Fresh,
            1 => Phase::Idle,
            2 => Phase::Head,
            _ => Phase::Busy,
        }
    }

    /// What the log calls it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Phase::Fresh => "waiting for a first request",
            Phase::Idle => "idle between requests",
            Phase::Head => "reading a request head",
            Phase::Busy => "serving a request",
        }
    }
}

/// The `since` of a request head whose start is not stamped yet (see [`Conn::saw_bytes`]).
const UNSTAMPED: u64 = u64::MAX;

/// The shared state of one open connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// The edge's clock origin; `since` counts milliseconds from it.
    epoch: Instant,
    phase: AtomicU8,
    since: AtomicU64,
    /// Set by the accept loop to make room for a new client.
    shed: AtomicBool,
    /// Set by the accept loop when the server stops.
    drain: AtomicBool,
    /// Set when the request body stalled past `body_read_timeout`; read once by the service.
    body_stalled: AtomicBool,
    /// Wakes the connection's task when it is shed or drained (phase changes happen on that task
    /// itself). Registering costs an atomic swap per poll, not a lock as a `Notify` would.
    waker: AtomicWaker,
}

impl Conn {
    pub(super) fn new(epoch: Instant) -> Conn {
        let conn = Conn {
            epoch,
            phase: AtomicU8::new(Phase::Fresh as u8),
            since: AtomicU64::new(0),
            shed: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            body_stalled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        };
        conn.since.store(conn.now(), Ordering::Relaxed);
        conn
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Milliseconds since the edge's epoch when the current phase began; [`UNSTAMPED`] (the
    /// latest of all) for a request head whose first bytes arrived in the poll of hyper that is
    /// still running.
    pub(super) fn since(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }

    fn enter(&self, phase: Phase) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Bytes arrived. The header-read clock of a fresh connection runs from accept; that of a
    /// later request from its first byte, stamped when the connection's task next looks at its
    /// deadline, at the end of the same poll (no clock read here: a request that arrives whole is
    /// served in that poll, and its head's start is then never needed).
    fn saw_bytes(&self) {
        match self.phase() {
            Phase::Fresh => self.phase.store(Phase::Head as u8, Ordering::Relaxed),
            Phase::Idle => {
                self.since.store(UNSTAMPED, Ordering::Relaxed);
                self.phase.store(Phase::Head as u8, Ordering::Relaxed);
            }
            Phase::Head | Phase::Busy => {}
        }
    }

    /// hyper parsed a request head and called the service.
    pub(super) fn request_started(&self) {
        self.body_stalled.store(false, Ordering::Relaxed);
        // No clock read: a busy connection has no deadline and is never shed.
        self.phase.store(Phase::Busy as u8, Ordering::Relaxed);
    }

    /// hyper is done with the response body: the connection waits for its next request.
    pub(super) fn request_done(&self) {
        self.enter(Phase::Idle);
    }

    pub(super) fn mark_body_stalled(&self) {
        self.body_stalled.store(true, Ordering::Relaxed);
    }

    pub(super) fn take_body_stalled(&self) -> bool {
        self.body_stalled.swap(false, Ordering::Relaxed)
    }

    /// Asks the connection to close to make room; `false` when it was asked before.
    pub(super) fn shed(&self) -> bool {
        let first = !self.shed.swap(true, Ordering::Release);
        self.waker.wake();
        first
    }

    /// Asks the connection to finish the request in progress, if any, and close.
    pub(super) fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(super) fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// When the connection must close if nothing changes, `None` while a request is served.
    /// Called by the connection's own task (the only one that changes its phase), which stamps
    /// an unstamped head's start here.
    fn deadline(&self, edge: &EdgeConfig) -> Option<Instant> {
        let timeout = match self.phase() {
            Phase::Fresh | Phase::Head => edge.header_read_timeout,
            Phase::Idle => edge.idle_timeout,
            Phase::Busy => return None,
        };
        let since = match self.since() {
            UNSTAMPED => {
                let now = self.now();
                self.since.store(now, Ordering::Relaxed);
                now
            }
            since => since,
        };
        Some(self.epoch + Duration::from_millis(since) + timeout)
    }
}

/// The TCP stream, telling its [`Conn`] when bytes arrive.
pub(super) struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.saw_bytes();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on `stream` until the client closes, a deadline passes, the connection is
/// shed, or the server drains (then the request in progress is finished first).
///
/// Phase changes happen while hyper is polled here, so the deadline is looked at right after each
/// poll, with no extra wake-up per request. The timer is only moved earlier; when it fires before
/// the deadline (the phase moved on meanwhile) it is set again, so a busy connection resets it
/// about once per timeout instead of once per request.
pub(super) async fn drive(
    stream: TcpStream,
    conn: Arc<Conn>,
    service: EdgeService,
    edge: &EdgeConfig,
) {
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    // hyper's own header-read timeout is off: it restarts as soon as a connection goes idle, so
    // it would bound idle time and header time together (see the module guide of `edge`).
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut http = pin!(http);
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    let mut closing = false;
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = http.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!("connection ended: {error}");
                }
                return Poll::Ready(());
            }
            if closing {
                break;
            }
            // Registered before the flags are read, so a shed or drain in between still wakes.
            conn.waker.register(cx.waker());
            if conn.is_shed() {
                if conn.phase() != Phase::Busy {
                    tracing::debug!(phase = conn.phase().as_str(), "connection shed");
                    return Poll::Ready(());
                }
                closing = true;
            } else if conn.drain.load(Ordering::Acquire) {
                closing = true;
            } else {
                break;
            }
            // Finish the request in progress, then close; hyper needs another poll to act.
            http.as_mut().graceful_shutdown();
        }
        // While a request is served there is no deadline; the timer may fire meanwhile and is
        // looked at again once the phase has moved on.
        while let Some(at) = conn.deadline(edge) {
            if armed.is_none_or(|armed| at < armed) {
                sleep.as_mut().reset(at);
                armed = Some(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            if Some(at) == armed {
                tracing::debug!(phase = conn.phase().as_str(), "connection timed out");
                return Poll::Ready(());
            }
            // It fired for an earlier deadline: set it for the current one.
            armed = None;
        }
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> EdgeConfig {
        EdgeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(70),
            ..EdgeConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline() {
        let epoch = Instant::now();
        let conn = Conn::new(epoch);
        let edge = edge();
        assert_eq!(conn.phase(), Phase::Fresh);
        assert_eq!(conn.deadline(&edge), Some(epoch + Duration::from_secs(10)));
        // The first bytes of the first request do not restart the header clock.
        tokio::time::advance(Duration::from_secs(4)).await;
        conn.saw_bytes();
        assert_eq!(conn.phase(), Phase::Head);
        assert_eq!(conn.deadline(&edge), Some(epoch + Duration::from_secs(10)));
        conn.request_started();
        assert_eq!(conn.deadline(&edge), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        conn.request_done();
        assert_eq!(conn.phase(), Phase::Idle);
        assert_eq!(conn.deadline(&edge), Some(epoch + Duration::from_secs(174)));
        // A later request's header clock starts at its first byte.
        tokio::time::advance(Duration::from_secs(30)).await;
        conn.saw_bytes();
        // Stamped when the task looks at the deadline (at the end of the same poll), once.
        assert_eq!(conn.since(), UNSTAMPED);
        assert_eq!(conn.deadline(&edge), Some(epoch + Duration::from_secs(144)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(conn.deadline(&edge), Some(epoch + Duration::from_secs(144)));
    }

    #[test]
    fn a_stall_is_reported_once_and_a_shed_asked_once() {
        let conn = Conn::new(Instant::now());
        assert!(!conn.take_body_stalled());
        conn.mark_body_stalled();
        assert!(conn.take_body_stalled());
        assert!(!conn.take_body_stalled());
        assert!(conn.shed());
        assert!(!conn.shed());
        assert!(conn.is_shed());
    }
}

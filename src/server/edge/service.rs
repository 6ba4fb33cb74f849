//! The hyper service of one connection: hands each request to the axum router with its body under
//! the body-read timeout, answers 408 when that body stalled, and tells the connection when the
//! response is out of its hands.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use tokio::time::{Instant, Sleep};

use super::Routes;
use super::connection::Conn;
use super::reply;
use crate::server::Served;

/// Serves one connection's requests through `router`.
#[derive(Clone, Debug)]
pub(super) struct EdgeService {
    pub(super) routes: Routes,
    pub(super) conn: Arc<Conn>,
    pub(super) body_read_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.conn.request_started();
        let conn = self.conn.clone();
        let timeout = self.body_read_timeout;
        let request = request.map(|body| TimedBody {
            inner: body,
            timeout,
            sleep: None,
            progressed: false,
            conn: conn.clone(),
        });
        let current = self.routes.load_full();
        // An endpoint's request goes to it directly; anything else through the router. The
        // call's future is stored once, in the box, with what `answered` needs beside it (an
        // `async` block would hold it twice: as a capture, and again while awaiting it).
        match current.direct(&request) {
            Some(direct) => {
                let served = direct.serve(request);
                Box::pin(served.map(move |response| Ok(answered(response, current, conn, timeout))))
            }
            None => {
                let served =
                    tower_service::Service::call(&mut Router::clone(current.router()), request);
                Box::pin(served.map(move |response| {
                    let response = match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok(answered(response, current, conn, timeout))
                }))
            }
        }
    }
}

/// The response to send for a request served by `current`: `response`, or the 408 when the
/// request's body stalled, with a body that tells `conn` when it is out of hyper's hands.
fn answered(
    response: axum::response::Response,
    current: Arc<Served>,
    conn: Arc<Conn>,
    timeout: Duration,
) -> Response<TrackedBody> {
    // The request held its router until answered (see `Routes`).
    drop(current);
    // The handler saw the body fail; whatever it answered, the client gets the 408.
    let response = if conn.take_body_stalled() {
        reply::body_stalled(timeout)
    } else {
        response
    };
    response.map(|inner| TrackedBody { inner, conn })
}

/// A request body that fails when no data arrives for `timeout` while it is being read (nginx's
/// `client_body_timeout`: the time between two reads, not the whole body).
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    /// Created on the first wait, so a body that is already buffered costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last set.
    progressed: bool,
    conn: Arc<Conn>,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("cannot read the request body: {0}")]
    Read(#[from] hyper::Error),
    #[error("no request body data arrived for {} ms (server.body_read_timeout_ms)", .0.as_millis())]
    Stalled(Duration),
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if this.progressed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => this
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.progressed = false;
        if sleep.as_mut().poll(cx).is_ready() {
            this.conn.mark_body_stalled();
            return Poll::Ready(Some(Err(BodyError::Stalled(this.timeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection when hyper drops it: the response is then written
/// (or being written from hyper's buffer) and the connection is idle.
#[derive(Debug)]
pub(super) struct TrackedBody {
    inner: axum::body::Body,
    conn: Arc<Conn>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.request_done();
    }
}

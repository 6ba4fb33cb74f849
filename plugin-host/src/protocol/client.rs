//! The host side of a connection: [`Client`] sends calls and waits for their answers, which the
//! [`routing`](super::routing) reader hands back by id.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use backworks_plugin_sdk::{Health, HookAction, PluginError, Request, Response};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};

use super::http::{ExchangeParams, HealthWire, HookResultIn, RequestParams, ResponseResultIn};
use super::log::LogRecord;
use super::message::{
    AnswerIn, Empty, Features, InitParams, JSONRPC, Manifest, ManifestParams, Outgoing,
};
use super::outbox::{Outbox, PushError};
use super::routing::{Calls, CloseReason, Shared, read_loop};
use crate::CallError;

/// Why a call over the wire failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The plugin answered with an error (its own, or one its side of the connection made, such
    /// as an invalid response of the library it runs).
    #[error(transparent)]
    Plugin(CallError),
    /// The connection died before the answer came.
    #[error("connection to the plugin lost: {0}")]
    Closed(CloseReason),
    /// The call or its answer broke the protocol (a request over the frame limit, an answer that
    /// does not fit the method, an error code that is not a plugin error). The connection lives
    /// on.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The call was not sent: the plugin is not reading its input, and the bytes already waiting
    /// for it are at the outbound bound ([`Client::with_outbound_limit`]). The connection lives
    /// on.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl From<ClientError> for CallError {
    /// A plugin error stays the plugin's; a lost connection is [`CallError::Crashed`] (502); a
    /// protocol error is [`CallError::InvalidResponse`] (502); a full outbound buffer is
    /// [`CallError::Overloaded`] (503).
    fn from(e: ClientError) -> CallError {
        match e {
            ClientError::Plugin(e) => e,
            ClientError::Closed(reason) => CallError::Crashed(reason.to_string()),
            ClientError::Protocol(m) => CallError::InvalidResponse(m),
            ClientError::Overloaded(m) => CallError::Overloaded(m),
        }
    }
}

const HANDLE: u8 = 1;
const BEFORE_REQUEST: u8 = 2;
const AFTER_RESPONSE: u8 = 4;
const HEALTH_CHECK: u8 = 8;

fn feature_bits(f: Features) -> u8 {
    (if f.handle { HANDLE } else { 0 })
        | (if f.before_request { BEFORE_REQUEST } else { 0 })
        | (if f.after_response { AFTER_RESPONSE } else { 0 })
        | (if f.health_check { HEALTH_CHECK } else { 0 })
}

/// The host side of a connection to a plugin: sends calls, routes answers back by id, hands `log`
/// notifications to a callback. Cheap to clone; all clones share the connection, which closes
/// (the plugin's input ends) when the last one is dropped.
///
/// Many calls may be in flight at once, and answers may come in any order. Dropping a call's
/// future forgets the call and sends the plugin a `cancel` notification. When the connection dies
/// (end of the plugin's output, an I/O error, a protocol violation), every call in flight returns
/// [`ClientError::Closed`] at once, and so does every later call; [`Client::closed`] says why.
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Owned by the clones of one [`Client`]; the tasks hold only [`Shared`], so the last clone's
/// drop closes the connection.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(CloseReason::ClosedByHost);
    }
}

impl Client {
    /// Starts a connection reading the plugin's messages from `reader` (its stdout) and writing
    /// to `writer` (its stdin), accepting frames of at most `max_frame` bytes either way.
    /// `on_log` gets each `log` notification; it runs on the reader task, so it must be quick.
    ///
    /// Spawns a reader task and a writer task on the current tokio runtime: call it inside one.
    ///
    /// At most [`DEFAULT_MAX_OUTBOUND`] bytes wait for the plugin to read them; see
    /// [`Client::with_outbound_limit`].
    pub fn new<R, W>(
        reader: R,
        writer: W,
        max_frame: usize,
        on_log: impl Fn(LogRecord) + Send + Sync + 'static,
    ) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Client::with_outbound_limit(reader, writer, max_frame, DEFAULT_MAX_OUTBOUND, on_log)
    }

    /// [`Client::new`] with at most `max_outbound` bytes waiting for the plugin to read them
    /// (one message may be larger when nothing else waits). A call that would go over fails at
    /// once with [`ClientError::Overloaded`] instead of being buffered: a plugin that stops reading
    /// its input costs the host no more memory than this.
    pub fn with_outbound_limit<R, W>(
        reader: R,
        writer: W,
        max_frame: usize,
        max_outbound: usize,
        on_log: impl Fn(LogRecord) + Send + Sync + 'static,
    ) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            calls: Mutex::new(Calls {
                next_id: 1,
                ..Calls::default()
            }),
            outbox: Outbox::new(max_frame, max_outbound),
            closed: watch::Sender::new(None),
            features: AtomicU8::new(feature_bits(Features::ALL)),
        });
        tokio::spawn({
            let shared = shared.clone();
            async move {
                if let Err(e) = shared.outbox.run(writer).await {
                    shared.close(CloseReason::Io(format!("writing to the plugin: {e}")));
                }
            }
        });
        tokio::spawn({
            let shared = shared.clone();
            async move {
                let reason = read_loop(&shared, reader, max_frame, &on_log).await;
                shared.close(reason);
            }
        });
        Client {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Calls `method` with `params` and returns the result as JSON (`null` if the plugin answered
    /// `"result": null`).
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let answer = self.request(method, &params).await?;
        parse_answer::<Value>(method, &answer).map(|r| r.unwrap_or(Value::Null))
    }

    /// Sends a call and waits for its answer's bytes.
    async fn request<P: Serialize>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Vec<u8>, ClientError> {
        let shared = &self.handle.shared;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut calls = shared.calls();
            if let Some(reason) = &calls.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            let id = calls.next_id;
            calls.next_id += 1;
            calls.pending.insert(id, tx);
            id
        };
        let mut guard = InFlight {
            shared,
            id,
            finished: false,
        };
        let pushed = shared.outbox.push(&Outgoing {
            jsonrpc: JSONRPC,
            id: Some(id),
            method,
            params,
        });
        match pushed {
            Ok(()) => {}
            Err(PushError::TooLarge(len)) => {
                guard.forget();
                return Err(ClientError::Protocol(format!(
                    "{method} request of {len} bytes is over the frame limit of {} bytes",
                    shared.outbox.max_frame()
                )));
            }
            Err(PushError::Full(waiting)) => {
                guard.forget();
                return Err(ClientError::Overloaded(format!(
                    "the plugin is not reading its input: {waiting} bytes are waiting for it, \
                     the limit is {}",
                    shared.outbox.max_waiting()
                )));
            }
            Err(PushError::Closed) => {
                guard.forget();
                return Err(ClientError::Closed(
                    self.close_reason().unwrap_or(CloseReason::ClosedByHost),
                ));
            }
        }
        let answer = rx.await;
        guard.finished = true;
        match answer {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(reason)) => Err(ClientError::Closed(reason)),
            Err(_) => Err(ClientError::Closed(
                self.close_reason().unwrap_or(CloseReason::ClosedByHost),
            )),
        }
    }

    /// Calls `method` and reads its result as `T`.
    async fn typed<P: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<T, ClientError> {
        let answer = self.request(method, params).await?;
        parse_answer::<T>(method, &answer)?
            .ok_or_else(|| ClientError::Protocol(format!("the answer to {method} has no result")))
    }

    fn supports(&self, bit: u8) -> bool {
        self.shared().features.load(Ordering::Relaxed) & bit != 0
    }

    /// `getmanifest`: what the plugin is and which calls it answers. The features it lists are
    /// remembered: from then on a hook it does not list passes through without a round trip
    /// (see the typed calls below). Check the result with [`Manifest::check`].
    pub async fn manifest(&self) -> Result<Manifest, ClientError> {
        let manifest: Manifest = self.typed("getmanifest", &ManifestParams::ours()).await?;
        self.shared()
            .features
            .store(feature_bits(manifest.features), Ordering::Relaxed);
        Ok(manifest)
    }

    /// `init`: hands the plugin its instance name and config.
    pub async fn init(&self, name: &str, config: Value) -> Result<(), ClientError> {
        let params = InitParams {
            name: name.into(),
            config,
        };
        self.typed::<_, IgnoredAny>("init", &params).await.map(drop)
    }

    /// `handle`: serves a request. A plugin whose manifest does not list `"handle"` is not asked:
    /// the call fails with [`PluginError::Internal`].
    pub async fn handle(&self, request: &Request) -> Result<Response, ClientError> {
        if !self.supports(HANDLE) {
            return Err(ClientError::Plugin(
                PluginError::Internal(
                    "the plugin serves no endpoints (its manifest does not list \"handle\")".into(),
                )
                .into(),
            ));
        }
        let params = RequestParams {
            request: request.into(),
        };
        let result: ResponseResultIn = self.typed("handle", &params).await?;
        Response::try_from(result.response).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `before_request`: runs the hook; [`HookAction::Continue`] without a round trip if the
    /// manifest does not list `"before_request"`.
    pub async fn before_request(&self, request: &Request) -> Result<HookAction, ClientError> {
        if !self.supports(BEFORE_REQUEST) {
            return Ok(HookAction::Continue);
        }
        let params = RequestParams {
            request: request.into(),
        };
        let result: HookResultIn = self.typed("before_request", &params).await?;
        HookAction::try_from(result).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `after_response`: runs the hook; the response unchanged without a round trip if the
    /// manifest does not list `"after_response"`.
    pub async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, ClientError> {
        if !self.supports(AFTER_RESPONSE) {
            return Ok(response.clone());
        }
        let params = ExchangeParams {
            request: request.into(),
            response: response.into(),
        };
        let result: ResponseResultIn = self.typed("after_response", &params).await?;
        Response::try_from(result.response).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `health_check`: the plugin's own view of its health; [`Health::Healthy`] without a round
    /// trip if the manifest does not list `"health_check"` (an answering plugin is alive).
    pub async fn health_check(&self) -> Result<Health, ClientError> {
        if !self.supports(HEALTH_CHECK) {
            return Ok(Health::Healthy);
        }
        let result: HealthWire<'static> = self.typed("health_check", &Empty {}).await?;
        Health::try_from(result).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `shutdown`: asks the plugin to release what it holds. Then [`close`](Client::close) the
    /// connection (or drop every clone): the plugin exits when its input ends.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.typed::<_, IgnoredAny>("shutdown", &Empty {})
            .await
            .map(drop)
    }

    /// Closes the connection from the host's side: calls in flight and later calls fail with
    /// [`CloseReason::ClosedByHost`], messages already queued are written, and the plugin's input
    /// ends.
    pub fn close(&self) {
        self.shared().close(CloseReason::ClosedByHost);
    }

    /// Resolves once the connection is dead, with the reason.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared().closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::ClosedByHost),
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => CloseReason::ClosedByHost,
        }
    }

    /// Why the connection is dead, or `None` while it lives.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared().calls().closed.clone()
    }

    /// How many calls are waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.shared().calls().pending.len()
    }

    /// Bytes the plugin has read from the host so far. A caller that got
    /// [`ClientError::Overloaded`] can watch it to tell a slow reader from one that reads nothing.
    pub fn bytes_written(&self) -> u64 {
        self.shared().outbox.written()
    }
}

/// The default bound on bytes waiting for a plugin to read them: 16 MiB.
pub const DEFAULT_MAX_OUTBOUND: usize = 16 * 1024 * 1024;

/// A call waiting for its answer. Dropped before the answer came (the caller gave up), it forgets
/// the call and tells the plugin with a `cancel` notification.
struct InFlight<'a> {
    shared: &'a Shared,
    id: u64,
    finished: bool,
}

#[derive(Serialize)]
struct CancelParams {
    id: u64,
}

impl InFlight<'_> {
    /// Forgets the call without telling the plugin (it was never sent).
    fn forget(&mut self) {
        self.shared.calls().pending.remove(&self.id);
        self.finished = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let removed = self.shared.calls().pending.remove(&self.id).is_some();
        if removed {
            self.shared
                .outbox
                .notify("cancel", &CancelParams { id: self.id });
        }
    }
}

/// Reads an answer: its result as `T` (`None` if it has none), or the error it carries.
fn parse_answer<T: DeserializeOwned>(
    method: &str,
    answer: &[u8],
) -> Result<Option<T>, ClientError> {
    let answer: AnswerIn<T> = serde_json::from_slice(answer)
        .map_err(|e| ClientError::Protocol(format!("invalid answer to {method}: {e}")))?;
    match answer.error {
        Some(error) => Err(match error.to_error() {
            Some(e) => ClientError::Plugin(e),
            None => ClientError::Protocol(format!(
                "the plugin answered {method} with error {}: {}",
                error.code, error.message
            )),
        }),
        None => Ok(answer.result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::routing::tests::peer;

    #[tokio::test]
    async fn a_call_is_sent_as_documented_and_its_answer_returned() {
        let mut p = peer(1024);
        let client = p.client.clone();
        let call = tokio::spawn(async move { client.call("echo", serde_json::json!([1])).await });
        let sent = p.next_message().await;
        assert_eq!(
            sent,
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]})
        );
        p.send(r#"{"jsonrpc":"2.0","id":1,"result":{"ok":true}}"#)
            .await;
        assert_eq!(call.await.unwrap(), Ok(serde_json::json!({"ok": true})));
        assert_eq!(p.client.in_flight(), 0);
    }

    #[tokio::test]
    async fn error_answers_become_plugin_or_protocol_errors() {
        let mut p = peer(1024);
        let c = p.client.clone();
        let calls = tokio::spawn(async move {
            let a = c.call("a", Value::Null).await;
            let b = c.call("b", Value::Null).await;
            let d = c.call("d", Value::Null).await;
            (a, b, d)
        });
        p.next_message().await;
        p.send(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no key","data":{"kind":"unauthorized","status":401}}}"#).await;
        p.next_message().await;
        p.send(r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not found"}}"#)
            .await;
        p.next_message().await;
        p.send(r#"{"jsonrpc":"2.0","id":3,"result":null}"#).await;
        let (a, b, d) = calls.await.unwrap();
        assert_eq!(
            a,
            Err(ClientError::Plugin(
                PluginError::Unauthorized("no key".into()).into()
            ))
        );
        let b = b.unwrap_err();
        assert_eq!(
            b,
            ClientError::Protocol(
                "the plugin answered b with error -32601: method not found".into()
            )
        );
        assert_eq!(crate::CallError::from(b).status(), 502);
        assert_eq!(d, Ok(Value::Null));
        assert_eq!(p.client.close_reason(), None);
    }

    #[tokio::test]
    async fn a_dropped_call_sends_cancel_and_a_late_answer_is_ignored() {
        let mut p = peer(1024);
        let c = p.client.clone();
        let call = tokio::spawn(async move { c.call("slow", Value::Null).await });
        let sent = p.next_message().await;
        assert_eq!(sent["id"], 1);
        call.abort();
        let _ = call.await;
        let cancel = p.next_message().await;
        assert_eq!(
            cancel,
            serde_json::json!({"jsonrpc": "2.0", "method": "cancel", "params": {"id": 1}})
        );
        assert_eq!(p.client.in_flight(), 0);
        // The plugin answers anyway: ignored, the connection lives.
        p.send(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).await;
        let c = p.client.clone();
        let next = tokio::spawn(async move { c.call("next", Value::Null).await });
        assert_eq!(p.next_message().await["id"], 2);
        p.send(r#"{"jsonrpc":"2.0","id":2,"result":7}"#).await;
        assert_eq!(next.await.unwrap(), Ok(serde_json::json!(7)));
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_sending_and_the_connection_lives() {
        let mut p = peer(100);
        let err = p.client.call("big", Value::String("x".repeat(200))).await;
        let Err(ClientError::Protocol(m)) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.starts_with("big request of 2") && m.ends_with("over the frame limit of 100 bytes"),
            "{m}"
        );
        assert_eq!(p.client.in_flight(), 0);
        let c = p.client.clone();
        let small = tokio::spawn(async move { c.call("small", Value::Null).await });
        assert_eq!(p.next_message().await["method"], "small");
        p.send(r#"{"jsonrpc":"2.0","id":2,"result":1}"#).await;
        assert_eq!(small.await.unwrap(), Ok(serde_json::json!(1)));
    }

    #[tokio::test]
    async fn a_plugin_that_reads_nothing_gets_calls_refused_as_overloaded() {
        // The plugin's input holds 64 bytes and nobody reads it.
        let (host_in, _plugin_out) = tokio::io::duplex(64);
        let (_plugin_in, host_out) = tokio::io::duplex(64);
        let client = Client::with_outbound_limit(host_in, host_out, 4096, 1000, |_| {});
        let mut calls = Vec::new();
        let mut overloaded = None;
        for _ in 0..100 {
            let c = client.clone();
            let call =
                tokio::spawn(async move { c.call("x", Value::String("y".repeat(90))).await });
            tokio::task::yield_now().await;
            if call.is_finished() {
                overloaded = Some(call.await.unwrap());
                break;
            }
            calls.push(call);
        }
        let Some(Err(ClientError::Overloaded(message))) = overloaded else {
            panic!("no call was refused: {overloaded:?}");
        };
        assert!(
            message.starts_with("the plugin is not reading its input: ")
                && message.ends_with("bytes are waiting for it, the limit is 1000"),
            "{message}"
        );
        assert!(calls.len() <= 10, "{} calls were queued", calls.len());
        assert_eq!(
            crate::CallError::from(ClientError::Overloaded(message)).status(),
            503
        );
        assert_eq!(client.close_reason(), None, "the connection lives on");
        assert_eq!(
            client.bytes_written(),
            64,
            "what the pipe took before it filled"
        );
    }

    #[tokio::test]
    async fn closing_fails_calls_and_ends_the_plugins_input() {
        let mut p = peer(1024);
        let c = p.client.clone();
        let call = tokio::spawn(async move { c.call("x", Value::Null).await });
        p.next_message().await;
        p.client.close();
        assert_eq!(
            call.await.unwrap(),
            Err(ClientError::Closed(CloseReason::ClosedByHost))
        );
        assert_eq!(p.input.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn dropping_the_last_clone_ends_the_plugins_input() {
        let mut p = peer(1024);
        let extra = p.client.clone();
        drop(p.client);
        assert_eq!(extra.close_reason(), None);
        drop(extra);
        assert_eq!(p.input.next_line().await.unwrap(), None);
    }
}

//! The host side's shared state: the calls waiting for answers, by id; reading the plugin's
//! output and routing each answer to its caller and each `log` to the callback; and closing the
//! connection, which fails every waiting call at once with the reason.

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Mutex, MutexGuard};

use serde::de::IgnoredAny;
use serde_json::Value;
use tokio::io::AsyncRead;
use tokio::sync::{oneshot, watch};

use super::frame::{Frame, LineReader};
use super::log::LogRecord;
use super::message::{
    AnswerIn, ErrorAnswer, JSONRPC, Kind, METHOD_NOT_FOUND, ParamsIn, RpcError, classify,
};
use super::outbox::Outbox;

/// Why a connection is dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The plugin closed its output (it exited, or closed stdout).
    Eof,
    /// Reading from or writing to the plugin failed.
    Io(String),
    /// The plugin broke the protocol; the message says how.
    Violation(String),
    /// The host closed the connection ([`Client::close`](super::Client::close), or every
    /// [`Client`](super::Client) was dropped).
    ClosedByHost,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("the plugin closed its output"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Violation(m) => write!(f, "protocol violation: {m}"),
            CloseReason::ClosedByHost => f.write_str("the host closed the connection"),
        }
    }
}

pub(super) type Answer = Result<Vec<u8>, CloseReason>;

#[derive(Debug, Default)]
pub(super) struct Calls {
    /// Callers waiting for an answer, by id.
    pub pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// The id of the next call; ids start at 1.
    pub next_id: u64,
    /// Set once, when the connection dies.
    pub closed: Option<CloseReason>,
}

/// What the caller side, the reader task and the writer task share.
#[derive(Debug)]
pub(super) struct Shared {
    pub calls: Mutex<Calls>,
    pub outbox: Outbox,
    pub closed: watch::Sender<Option<CloseReason>>,
    /// The plugin's [`Features`] as bits, all set until its manifest is read.
    pub features: AtomicU8,
}

impl Shared {
    pub fn calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead (the first reason wins), fails every waiting call with the
    /// reason, and stops the writer.
    pub fn close(&self, reason: CloseReason) {
        let waiting = {
            let mut calls = self.calls();
            if calls.closed.is_some() {
                return;
            }
            calls.closed = Some(reason.clone());
            std::mem::take(&mut calls.pending)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(reason.clone()));
        }
        self.outbox.close();
        self.closed.send_replace(Some(reason));
    }

    /// Handles one line from the plugin; an error is the protocol violation that closes the
    /// connection.
    fn dispatch(
        &self,
        line: &[u8],
        on_log: &(dyn Fn(LogRecord) + Send + Sync),
    ) -> Result<(), CloseReason> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let violation = CloseReason::Violation;
        match classify(line).map_err(|e| violation(e.message))? {
            Kind::Answer { id, error } => {
                let Some(n) = id.as_ref().and_then(Value::as_u64) else {
                    return Err(violation(answer_without_id(line, id.as_ref(), error)));
                };
                let mut calls = self.calls();
                if let Some(tx) = calls.pending.remove(&n) {
                    drop(calls);
                    // The caller may have gone in the meantime; then nobody wants the answer.
                    let _ = tx.send(Ok(line.to_vec()));
                } else if n == 0 || n >= calls.next_id {
                    return Err(violation(format!("answer to unknown id {n}")));
                }
                // Otherwise: a late answer to a call the host gave up on (cancelled); dropped.
                Ok(())
            }
            Kind::Notification { method } if method == "log" => {
                match serde_json::from_slice::<ParamsIn<LogRecord>>(line) {
                    Ok(ParamsIn {
                        params: Some(record),
                    }) => {
                        // A panicking callback must not take the reader, and with it every
                        // waiting call, down.
                        let logged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            on_log(record)
                        }));
                        if logged.is_err() {
                            tracing::error!("the plugin log callback panicked");
                        }
                        Ok(())
                    }
                    Ok(ParamsIn { params: None }) => Err(violation(
                        "invalid log notification: missing params".to_owned(),
                    )),
                    Err(e) => Err(violation(format!("invalid log notification: {e}"))),
                }
            }
            Kind::Notification { method } => {
                tracing::debug!(%method, "ignoring a notification the host does not know");
                Ok(())
            }
            Kind::Call { id, method } => {
                // The host offers no methods to plugins (yet): say so, and go on.
                let error = RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("method not found: the host has no method {method:?}"),
                );
                let _ = self.outbox.push(&ErrorAnswer {
                    jsonrpc: JSONRPC,
                    id: &id,
                    error: &error,
                });
                Ok(())
            }
        }
    }
}

/// The violation message of an answer whose id is missing, `null` or not a number.
fn answer_without_id(line: &[u8], id: Option<&Value>, error: bool) -> String {
    if error && matches!(id, None | Some(Value::Null)) {
        let detail = serde_json::from_slice::<AnswerIn<IgnoredAny>>(line)
            .ok()
            .and_then(|a| a.error)
            .map_or_else(String::new, |e| {
                format!(" (code {}): {}", e.code, e.message)
            });
        return format!("the plugin reported an error without an id{detail}");
    }
    match id {
        Some(id) => format!("answer to unknown id {id}"),
        None => "answer without an id".to_owned(),
    }
}

/// Reads the plugin's output until it ends or breaks the protocol; returns why it stopped.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: R,
    max_frame: usize,
    on_log: &(dyn Fn(LogRecord) + Send + Sync),
) -> CloseReason {
    let mut lines = LineReader::new(reader, max_frame);
    loop {
        let line = match lines.next().await {
            Ok(Some(Frame::Line(line))) => line,
            Ok(None) => return CloseReason::Eof,
            Ok(Some(Frame::TooLong { limit, .. })) => {
                return CloseReason::Violation(format!("frame of over {limit} bytes"));
            }
            Ok(Some(Frame::Unterminated(rest))) => {
                return CloseReason::Violation(format!(
                    "output ended inside a frame ({} bytes without a newline)",
                    rest.len()
                ));
            }
            Err(e) => return CloseReason::Io(format!("reading from the plugin: {e}")),
        };
        if let Err(violation) = shared.dispatch(line, on_log) {
            return violation;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::{Client, ClientError};
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    /// A client and the other ends of its pipes, driven by hand.
    pub(in crate::protocol) struct Peer {
        pub client: Client,
        /// What the client writes, line by line.
        pub input: tokio::io::Lines<BufReader<DuplexStream>>,
        /// What the client reads.
        pub output: DuplexStream,
        pub logs: Arc<Mutex<Vec<LogRecord>>>,
    }

    pub(in crate::protocol) fn peer(max_frame: usize) -> Peer {
        let (client_out, peer_in) = tokio::io::duplex(1 << 16);
        let (peer_out, client_in) = tokio::io::duplex(1 << 16);
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let client = Client::new(client_in, client_out, max_frame, move |r| {
            sink.lock().unwrap().push(r)
        });
        Peer {
            client,
            input: BufReader::new(peer_in).lines(),
            output: peer_out,
            logs,
        }
    }

    impl Peer {
        pub async fn next_message(&mut self) -> Value {
            let line = self.input.next_line().await.unwrap().expect("a message");
            serde_json::from_str(&line).unwrap()
        }

        pub async fn send(&mut self, line: &str) {
            self.output.write_all(line.as_bytes()).await.unwrap();
            self.output.write_all(b"\n").await.unwrap();
        }
    }

    /// Sends `line` as the plugin and returns how the connection died; a call in flight must
    /// fail with the same reason.
    async fn violation(line: &[u8], max_frame: usize) -> CloseReason {
        let mut p = peer(max_frame);
        let c = p.client.clone();
        let call = tokio::spawn(async move { c.call("x", Value::Null).await });
        p.next_message().await;
        p.output.write_all(line).await.unwrap();
        p.output.shutdown().await.unwrap();
        let reason = p.client.closed().await;
        assert_eq!(
            call.await.unwrap(),
            Err(ClientError::Closed(reason.clone()))
        );
        assert_eq!(
            p.client.call("later", Value::Null).await,
            Err(ClientError::Closed(reason.clone()))
        );
        reason
    }

    #[tokio::test]
    async fn log_notifications_reach_the_callback_and_plugin_calls_are_refused() {
        let mut p = peer(1024);
        p.send(r#"{"jsonrpc":"2.0","method":"log","params":{"level":"warn","message":"low disk","fields":{"free_mb":12}}}"#).await;
        p.send(r#"{"jsonrpc":"2.0","method":"future_thing","params":{}}"#)
            .await;
        p.send(r#"{"jsonrpc":"2.0","id":"q1","method":"getconfig","params":{}}"#)
            .await;
        let refusal = p.next_message().await;
        assert_eq!(refusal["id"], "q1");
        assert_eq!(refusal["error"]["code"], METHOD_NOT_FOUND);
        let logs = p.logs.lock().unwrap().clone();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].to_string(), "WARN: low disk free_mb=12");
        assert_eq!(p.client.close_reason(), None);
    }

    #[tokio::test]
    async fn protocol_violations_close_the_connection_with_a_clear_reason() {
        let v = |m: &str| CloseReason::Violation(m.to_owned());
        let mut long = vec![b' '; 3000];
        long.push(b'\n');
        assert_eq!(violation(&long, 1024).await, v("frame of over 1024 bytes"));
        assert_eq!(
            violation(br#"{"jsonrpc":"2.0","id":17,"result":{}}"#.as_slice(), 1024).await,
            v("output ended inside a frame (37 bytes without a newline)")
        );
        assert_eq!(
            violation(b"{\"jsonrpc\":\"2.0\",\"id\":17,\"result\":{}}\n", 1024).await,
            v("answer to unknown id 17")
        );
        assert_eq!(
            violation(b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}}\n", 1024).await,
            v("answer to unknown id \"a\"")
        );
        assert_eq!(
            violation(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"parse error\"}}\n", 1024).await,
            v("the plugin reported an error without an id (code -32700): parse error")
        );
        let garbage = violation(b"Segmentation fault\n", 1024).await;
        let CloseReason::Violation(m) = garbage else {
            panic!("{garbage:?}")
        };
        assert!(
            m.starts_with("invalid JSON: expected value at line 1 column 1"),
            "{m}"
        );
        let bad_log = violation(b"{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"level\":\"loud\",\"message\":\"x\"}}\n", 1024).await;
        let CloseReason::Violation(m) = bad_log else {
            panic!("{bad_log:?}")
        };
        assert!(
            m.starts_with("invalid log notification: unknown variant `loud`"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn end_of_output_fails_every_call_in_flight_at_once() {
        let mut p = peer(1024);
        let mut calls = Vec::new();
        for _ in 0..20 {
            let c = p.client.clone();
            calls.push(tokio::spawn(async move { c.call("x", Value::Null).await }));
        }
        for _ in 0..20 {
            p.next_message().await;
        }
        assert_eq!(p.client.in_flight(), 20);
        drop(p.output);
        for call in calls {
            assert_eq!(
                call.await.unwrap(),
                Err(ClientError::Closed(CloseReason::Eof))
            );
        }
        assert_eq!(p.client.closed().await, CloseReason::Eof);
        let err = crate::CallError::from(ClientError::Closed(CloseReason::Eof));
        assert_eq!(
            err,
            crate::CallError::Crashed("the plugin closed its output".into())
        );
        assert_eq!(err.status(), 502);
    }

    #[tokio::test]
    async fn a_panicking_log_callback_does_not_break_the_connection() {
        let (client_out, peer_in) = tokio::io::duplex(1 << 16);
        let (mut peer_out, client_in) = tokio::io::duplex(1 << 16);
        let client = Client::new(client_in, client_out, 1024, |_| panic!("callback bug"));
        let mut input = BufReader::new(peer_in).lines();
        let c = client.clone();
        let call = tokio::spawn(async move { c.call("x", Value::Null).await });
        assert!(input.next_line().await.unwrap().is_some());
        let lines = concat!(
            r#"{"jsonrpc":"2.0","method":"log","params":{"level":"info","message":"hi"}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":1,"result":"fine"}"#,
            "\n"
        );
        peer_out.write_all(lines.as_bytes()).await.unwrap();
        assert_eq!(call.await.unwrap(), Ok(Value::from("fine")));
        assert_eq!(client.close_reason(), None);
    }
}

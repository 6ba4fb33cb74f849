//! The plugin side of a connection: reads the host's calls and answers them with a [`Plugin`].
//!
//! `getmanifest` is answered at once from [`Plugin::info`]; every other call runs as its own
//! task, so many are in flight at once and answers go out as they finish. A `cancel` aborts the
//! call's task. Malformed input is answered with a JSON-RPC error and serving goes on: it is the
//! host's job to judge the connection. Serving ends when the input ends.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use backworks_plugin_sdk::{Health, HookAction, PluginError, Response};
use futures_util::FutureExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;

use super::frame::{Frame, LineReader};
use super::http::{ExchangeParamsIn, HealthWire, HookResultOut, RequestParamsIn, ResponseResult};
#[cfg(test)]
use super::log::LogSink;
use super::message::{
    Answer, Empty, ErrorAnswer, Features, INVALID_PARAMS, INVALID_REQUEST, InitParams, JSONRPC,
    Kind, METHOD_NOT_FOUND, Manifest, ParamsIn, RpcError, classify,
};
use super::outbox::{Outbox, PushError};
use crate::CallError;
use crate::Plugin;

/// Serves `plugin` over `reader` (the process's stdin) and `writer` (its stdout) until the input
/// ends, with frames of at most `max_frame` bytes. The manifest lists `handle`, `health_check` and
/// the hooks the plugin's metadata declares (every hook when it declares none). See [`Server`] to
/// list other features or to send logs.
pub async fn serve<R, W>(
    plugin: Arc<dyn Plugin>,
    reader: R,
    writer: W,
    max_frame: usize,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let features = match plugin.info().metadata.hooks {
        Some(hooks) => Features {
            before_request: hooks.before_request(),
            after_response: hooks.after_response(),
            ..Features::ALL
        },
        None => Features::ALL,
    };
    Server::new(reader, writer, max_frame)
        .with_features(features)
        .run(plugin)
        .await
}

/// The plugin side of a connection, before it runs: [`serve`] with other features listed, or
/// (in tests) with a [`LogSink`] taken before it runs.
#[derive(Debug)]
pub struct Server<R, W> {
    reader: R,
    writer: W,
    outbox: Arc<Outbox>,
    features: Features,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Send + Unpin + 'static> Server<R, W> {
    /// A server reading calls from `reader` and writing answers to `writer`, with frames of at
    /// most `max_frame` bytes.
    pub fn new(reader: R, writer: W, max_frame: usize) -> Server<R, W> {
        Server {
            reader,
            writer,
            // The host reads everything a plugin writes (its frame limit bounds each message), so
            // the plugin's side needs no bound of its own.
            outbox: Arc::new(Outbox::new(max_frame, usize::MAX)),
            features: Features::ALL,
        }
    }

    /// The features the manifest lists (default: all). The host then skips the hooks not listed.
    pub fn with_features(mut self, features: Features) -> Server<R, W> {
        self.features = features;
        self
    }

    #[cfg(test)]
    /// A handle that sends `log` notifications over this connection, from any thread. Records
    /// sent before [`run`](Server::run) are queued; after it returns, they are dropped.
    pub fn log_sink(&self) -> LogSink {
        LogSink {
            outbox: self.outbox.clone(),
        }
    }

    /// Answers the host's calls with `plugin` until the input ends; then drops the calls still
    /// running, writes what is queued, and returns. The error is a read or write error.
    pub async fn run(self, plugin: Arc<dyn Plugin>) -> std::io::Result<()> {
        let Server {
            reader,
            writer,
            outbox,
            features,
        } = self;
        let calls = Calls {
            plugin,
            outbox: outbox.clone(),
            running: Arc::new(Mutex::new(HashMap::new())),
            features,
        };
        let read = async {
            let mut lines = LineReader::new(reader, outbox.max_frame());
            let result = loop {
                match lines.next().await {
                    Ok(Some(Frame::Line(line))) => calls.dispatch(line),
                    Ok(Some(Frame::TooLong { limit, .. })) => calls.error(
                        &Value::Null,
                        &RpcError::new(INVALID_REQUEST, format!("frame of over {limit} bytes")),
                    ),
                    Ok(Some(Frame::Unterminated(_)) | None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            calls.abort_all();
            outbox.close();
            result
        };
        let (read, write) = tokio::join!(read, outbox.run(writer));
        read.and(write)
    }
}

/// What a call returns when it succeeds.
enum Reply {
    Empty,
    Response(Response),
    Hook(HookAction),
    Health(Health),
}

#[derive(Deserialize)]
struct CancelParams {
    id: u64,
}

/// The calls of one connection.
struct Calls {
    plugin: Arc<dyn Plugin>,
    outbox: Arc<Outbox>,
    /// The tasks of calls in flight, by id, for `cancel`.
    running: Arc<Mutex<HashMap<u64, AbortHandle>>>,
    features: Features,
}

fn lock(running: &Mutex<HashMap<u64, AbortHandle>>) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
    running.lock().unwrap_or_else(|e| e.into_inner())
}

impl Calls {
    fn dispatch(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match classify(line) {
            Err(invalid) => self.error(&Value::Null, &RpcError::new(invalid.code, invalid.message)),
            Ok(Kind::Call { id, method }) => self.call(id, &method, line),
            Ok(Kind::Notification { method }) if method == "cancel" => {
                if let Ok(ParamsIn {
                    params: Some(CancelParams { id }),
                }) = serde_json::from_slice(line)
                    && let Some(task) = lock(&self.running).remove(&id)
                {
                    task.abort();
                }
            }
            // Unknown notifications are ignored; the plugin side makes no calls, so it expects
            // no answers.
            Ok(Kind::Notification { .. } | Kind::Answer { .. }) => {}
        }
    }

    fn call(&self, id: Value, method: &str, line: &[u8]) {
        let plugin = self.plugin.clone();
        match method {
            "getmanifest" => {
                let metadata = &self.plugin.info().metadata;
                let manifest = Manifest {
                    protocol: super::PROTOCOL_VERSION.to_owned(),
                    name: metadata.name.clone(),
                    version: metadata.version.clone(),
                    description: metadata.description.clone(),
                    features: self.features,
                    config_schema: self.plugin.config_schema().cloned(),
                };
                self.answer(&id, Ok(&manifest));
            }
            "init" => match params::<InitParams<'static>>(line) {
                Ok(p) => self.spawn(id, async move {
                    plugin.initialize(&p.config).await.map(|()| Reply::Empty)
                }),
                Err(e) => self.error(&id, &e),
            },
            "handle" => match params::<RequestParamsIn>(line) {
                Ok(p) => self.spawn(id, async move {
                    // The same entry the host would call in process: at once when the endpoint
                    // never waits (a library's `handle_now`), else awaited.
                    let request = p.request.into();
                    let answer = match plugin.handle_now(&request) {
                        Some(answer) => answer,
                        None => plugin.handle(request).await,
                    };
                    answer.map(Reply::Response)
                }),
                Err(e) => self.error(&id, &e),
            },
            "before_request" => match params::<RequestParamsIn>(line) {
                Ok(p) => self.spawn(id, async move {
                    plugin
                        .before_request(&p.request.into())
                        .await
                        .map(Reply::Hook)
                }),
                Err(e) => self.error(&id, &e),
            },
            "after_response" => match params::<ExchangeParamsIn>(line) {
                Ok(p) => match Response::try_from(p.response) {
                    Ok(response) => self.spawn(id, async move {
                        let request = p.request.into();
                        plugin
                            .after_response(&request, &response)
                            .await
                            .map(Reply::Response)
                    }),
                    Err(e) => self.error(&id, &RpcError::new(INVALID_PARAMS, e.to_string())),
                },
                Err(e) => self.error(&id, &e),
            },
            "health_check" => {
                self.spawn(
                    id,
                    async move { Ok(Reply::Health(plugin.health_check().await)) },
                )
            }
            "shutdown" => self.spawn(
                id,
                async move { plugin.shutdown().await.map(|()| Reply::Empty) },
            ),
            other => self.error(
                &id,
                &RpcError::new(METHOD_NOT_FOUND, format!("method not found: {other:?}")),
            ),
        }
    }

    /// Runs a call, panics caught, and answers it. The call is polled once right here: most
    /// calls finish without waiting, and then cost no task. One that waits goes on as its own
    /// task, cancellable by id.
    fn spawn(
        &self,
        id: Value,
        work: impl Future<Output = Result<Reply, CallError>> + Send + 'static,
    ) {
        let mut work = Box::pin(AssertUnwindSafe(work).catch_unwind());
        // A future must not rely on the waker of a poll that returned Pending being woken: the
        // spawned task polls it again at once and registers its own.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = work.as_mut().poll(&mut cx) {
            send_reply(&self.outbox, &id, caught(result));
            return;
        }
        let outbox = self.outbox.clone();
        let running = self.running.clone();
        let key = id.as_u64();
        // Held across the spawn so the task cannot remove its entry before it is inserted.
        let mut tasks = lock(&self.running);
        let task = tokio::spawn(async move {
            let result = caught(work.await);
            if let Some(key) = key {
                lock(&running).remove(&key);
            }
            send_reply(&outbox, &id, result);
        });
        if let Some(key) = key {
            tasks.insert(key, task.abort_handle());
        }
    }

    fn answer(&self, id: &Value, result: Result<&Manifest, CallError>) {
        match result {
            Ok(manifest) => push_answer(&self.outbox, id, manifest),
            Err(e) => self.error(id, &RpcError::from_error(&e)),
        }
    }

    fn error(&self, id: &Value, error: &RpcError) {
        let _ = self.outbox.push(&ErrorAnswer {
            jsonrpc: JSONRPC,
            id,
            error,
        });
    }

    fn abort_all(&self) {
        for (_, task) in lock(&self.running).drain() {
            task.abort();
        }
    }
}

/// A call's result, with a panic turned into [`PluginError::Panic`].
fn caught(
    result: Result<Result<Reply, CallError>, Box<dyn std::any::Any + Send>>,
) -> Result<Reply, CallError> {
    result.unwrap_or_else(|panic| Err(PluginError::from_panic(panic.as_ref()).into()))
}

/// The params of a call as `P`, or the error to answer with.
fn params<P: DeserializeOwned>(line: &[u8]) -> Result<P, RpcError> {
    match serde_json::from_slice::<ParamsIn<P>>(line) {
        Ok(ParamsIn { params: Some(p) }) => Ok(p),
        Ok(ParamsIn { params: None }) => Err(RpcError::new(INVALID_PARAMS, "missing params")),
        Err(e) => Err(RpcError::new(
            INVALID_PARAMS,
            format!("invalid params: {e}"),
        )),
    }
}

fn send_reply(outbox: &Outbox, id: &Value, result: Result<Reply, CallError>) {
    match result {
        Ok(Reply::Empty) => push_answer(outbox, id, &Empty {}),
        Ok(Reply::Response(r)) => push_answer(
            outbox,
            id,
            &ResponseResult {
                response: (&r).into(),
            },
        ),
        Ok(Reply::Hook(action)) => push_answer(outbox, id, &HookResultOut::from(&action)),
        Ok(Reply::Health(health)) => push_answer(outbox, id, &HealthWire::from(&health)),
        Err(e) => {
            let _ = outbox.push(&ErrorAnswer {
                jsonrpc: JSONRPC,
                id,
                error: &RpcError::from_error(&e),
            });
        }
    }
}

/// Queues a successful answer; one over the frame limit is replaced by an `invalid_response`
/// error saying so.
fn push_answer<T: serde::Serialize>(outbox: &Outbox, id: &Value, result: &T) {
    let pushed = outbox.push(&Answer {
        jsonrpc: JSONRPC,
        id,
        result,
    });
    if let Err(PushError::TooLarge(len)) = pushed {
        let error = CallError::InvalidResponse(format!(
            "answer of {len} bytes is over the frame limit of {} bytes",
            outbox.max_frame()
        ));
        let _ = outbox.push(&ErrorAnswer {
            jsonrpc: JSONRPC,
            id,
            error: &RpcError::from_error(&error),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BuiltinPlugin;
    use crate::protocol::LogLevel;
    use backworks_plugin_sdk::{BackworksPlugin, PluginResult, Request};
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};

    #[derive(Default)]
    struct Echo;

    #[async_trait::async_trait]
    impl BackworksPlugin for Echo {
        async fn handle(&self, request: Request) -> PluginResult<Response> {
            match request.path.as_str() {
                "/panic" => panic!("boom"),
                "/big" => Ok(Response::new(200).with_body(vec![b'x'; 4096])),
                _ => Ok(Response::new(200).with_body(request.body)),
            }
        }
    }

    /// A server for `Echo` and the host's ends of its pipes.
    struct Host {
        to_plugin: DuplexStream,
        from_plugin: Lines<BufReader<DuplexStream>>,
        served: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    fn start(max_frame: usize, features: Features, log: bool) -> Host {
        let (to_plugin, plugin_in) = tokio::io::duplex(1 << 16);
        let (plugin_out, from_plugin) = tokio::io::duplex(1 << 16);
        let plugin: Arc<dyn Plugin> =
            Arc::new(BuiltinPlugin::new("echo-1", "0.3.0", "echoes", Echo));
        let server = Server::new(plugin_in, plugin_out, max_frame).with_features(features);
        if log {
            server
                .log_sink()
                .log(LogLevel::Debug, "hello from the plugin");
        }
        Host {
            to_plugin,
            from_plugin: BufReader::new(from_plugin).lines(),
            served: tokio::spawn(server.run(plugin)),
        }
    }

    impl Host {
        async fn ask(&mut self, line: &str) -> Value {
            self.to_plugin.write_all(line.as_bytes()).await.unwrap();
            self.to_plugin.write_all(b"\n").await.unwrap();
            self.next().await
        }

        async fn next(&mut self) -> Value {
            let line = self
                .from_plugin
                .next_line()
                .await
                .unwrap()
                .expect("an answer");
            serde_json::from_str(&line).unwrap()
        }
    }

    #[tokio::test]
    async fn the_manifest_describes_the_plugin_and_its_features() {
        let features = Features {
            before_request: false,
            ..Features::ALL
        };
        let mut host = start(1024, features, true);
        let log = host.next().await;
        assert_eq!(
            log,
            json!({"jsonrpc": "2.0", "method": "log",
                   "params": {"level": "debug", "message": "hello from the plugin"}})
        );
        let answer = host
            .ask(r#"{"jsonrpc":"2.0","id":1,"method":"getmanifest","params":{"protocol":"1.0","host":{"name":"backworks","version":"0.1.0"}}}"#)
            .await;
        assert_eq!(
            answer,
            json!({"jsonrpc": "2.0", "id": 1, "result": {
                "protocol": "1.0", "name": "echo-1", "version": "0.3.0", "description": "echoes",
                "features": ["handle", "after_response", "health_check"]}})
        );
        let init = host
            .ask(r#"{"jsonrpc":"2.0","id":2,"method":"init","params":{"name":"e","config":{}}}"#)
            .await;
        assert_eq!(init, json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
        drop(host.to_plugin);
        host.served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn malformed_calls_are_answered_with_errors_and_serving_goes_on() {
        let mut host = start(200, Features::ALL, false);
        let code = |v: &Value| v["error"]["code"].as_i64().unwrap();
        let garbage = host.ask("not json").await;
        assert_eq!((code(&garbage), &garbage["id"]), (-32700, &Value::Null));
        let not_rpc = host.ask(r#"{"id":1,"method":"handle"}"#).await;
        assert_eq!(code(&not_rpc), -32600);
        let long = host.ask(&"x".repeat(500)).await;
        assert_eq!(code(&long), -32600);
        assert_eq!(long["error"]["message"], "frame of over 200 bytes");
        let unknown = host
            .ask(r#"{"jsonrpc":"2.0","id":"u","method":"fly","params":{}}"#)
            .await;
        assert_eq!((code(&unknown), &unknown["id"]), (-32601, &json!("u")));
        let no_params = host
            .ask(r#"{"jsonrpc":"2.0","id":3,"method":"handle"}"#)
            .await;
        assert_eq!(code(&no_params), -32602);
        let bad = host
            .ask(r#"{"jsonrpc":"2.0","id":4,"method":"handle","params":{"request":{"path":"/"}}}"#)
            .await;
        assert_eq!(code(&bad), -32602);
        assert!(
            bad["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing field `method`")
        );
        // Still serving.
        let ok = host
            .ask(r#"{"jsonrpc":"2.0","id":5,"method":"handle","params":{"request":{"method":"GET","path":"/","body":"aGk="}}}"#)
            .await;
        assert_eq!(
            ok["result"]["response"],
            json!({"status": 200, "headers": [], "body": "aGk="})
        );
    }

    #[tokio::test]
    async fn panics_and_oversized_answers_become_plugin_errors() {
        let mut host = start(1024, Features::ALL, false);
        let panic = host
            .ask(r#"{"jsonrpc":"2.0","id":1,"method":"handle","params":{"request":{"method":"GET","path":"/panic"}}}"#)
            .await;
        assert_eq!(
            panic["error"],
            json!({"code": -32000, "message": "boom", "data": {"kind": "panic", "status": 500}})
        );
        let big = host
            .ask(r#"{"jsonrpc":"2.0","id":2,"method":"handle","params":{"request":{"method":"GET","path":"/big"}}}"#)
            .await;
        assert_eq!(big["error"]["data"]["kind"], "invalid_response");
        let message = big["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with("over the frame limit of 1024 bytes"),
            "{message}"
        );
    }
}

//! The host's [`Client`] talking to the plugin side's [`Server`] over in-memory pipes, with a
//! fake plugin: every call kind, binary bodies, errors, concurrency, cancel, a dying connection,
//! and frame limits; and the examples of `docs/protocol.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backworks_plugin_sdk::{Health, HookAction, PluginError, PluginMetadata, Request, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::CallError;

use super::log::LogSink;
use super::serve::Server;
use super::*;
use crate::{Plugin, PluginInfo, PluginKind};

/// A generous deadline for things that must happen; never a measure of speed.
const LIVENESS: Duration = Duration::from_secs(20);

async fn eventually<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIVENESS, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not happen within {LIVENESS:?}"),
    }
}

/// Reports its own drop: a call future of the fake plugin that was cancelled.
struct DropReport(mpsc::UnboundedSender<String>, String);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send(self.1.clone());
    }
}

#[derive(Debug)]
struct Fake {
    info: PluginInfo,
    config: Mutex<Option<Value>>,
    /// Calls of `/wait` and `/order/*` that have started.
    started: watch::Sender<usize>,
    /// The `/order/{i}` call whose turn it is to answer.
    turn: watch::Sender<i64>,
    /// How many `/order/*` calls there are.
    order_total: AtomicUsize,
    dropped: mpsc::UnboundedSender<String>,
    hook_calls: AtomicUsize,
    shut_down: AtomicUsize,
}

impl Fake {
    fn new(dropped: mpsc::UnboundedSender<String>) -> Fake {
        Fake {
            info: PluginInfo {
                name: "fake-1".into(),
                kind: PluginKind::Builtin,
                metadata: PluginMetadata {
                    abi_major: 1,
                    abi_minor: 0,
                    sdk_version: "0.1.0".into(),
                    name: "fake".into(),
                    version: "2.3.4".into(),
                    description: "a fake for the tests".into(),
                    panic_unwind: true,
                    hooks: Some(backworks_plugin_sdk::Hooks::ALL),
                    config_schema: None,
                },
                config_schema: Some(Arc::new(serde_json::json!({"type": "object"}))),
            },
            config: Mutex::new(None),
            started: watch::Sender::new(0),
            turn: watch::Sender::new(-1),
            order_total: AtomicUsize::new(0),
            dropped,
            hook_calls: AtomicUsize::new(0),
            shut_down: AtomicUsize::new(0),
        }
    }

    fn start(&self) -> usize {
        let mut n = 0;
        self.started.send_modify(|s| {
            *s += 1;
            n = *s;
        });
        n
    }
}

#[async_trait]
impl Plugin for Fake {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn initialize(&self, config: &Value) -> Result<(), CallError> {
        if config.get("fail") == Some(&Value::Bool(true)) {
            return Err(PluginError::Config("`fail` is set".into()).into());
        }
        *self.config.lock().unwrap() = Some(config.clone());
        Ok(())
    }

    async fn handle(&self, request: Request) -> Result<Response, CallError> {
        let path = request.path.to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["echo"] => {
                let mut response = Response::new(200).with_body(request.body);
                for (k, v) in request.headers.iter() {
                    response.headers.append(k, v);
                }
                response.headers.insert("x-method", request.method);
                Ok(response)
            }
            ["order", i] => {
                let i: i64 = i.parse().unwrap();
                let total = self.order_total.load(Ordering::SeqCst);
                if self.start() == total {
                    // Everyone is in: release them last to first.
                    self.turn.send_replace(total as i64 - 1);
                }
                let mut turn = self.turn.subscribe();
                let _ = turn.wait_for(|t| *t == i).await;
                self.turn.send_replace(i - 1);
                Ok(Response::new(200).with_body(i.to_string()))
            }
            ["wait"] => {
                let _report = DropReport(self.dropped.clone(), request.path.to_string());
                self.start();
                std::future::pending::<()>().await;
                unreachable!()
            }
            ["error", kind] => Err(match *kind {
                "bad_request" => PluginError::BadRequest("no name".into()),
                "not_found" => PluginError::NotFound("no such report".into()),
                "teapot" => PluginError::Status {
                    status: 418,
                    message: "short and stout".into(),
                },
                "unavailable" => PluginError::Unavailable("database down".into()),
                _ => PluginError::Internal("unknown error kind".into()),
            }
            .into()),
            ["big", n] => Ok(Response::new(200).with_body(vec![b'b'; n.parse().unwrap()])),
            ["panic"] => panic!("the fake plugin panicked"),
            ["panic-later"] => {
                // Panics after waiting, in the call's own task rather than in the first poll.
                tokio::task::yield_now().await;
                panic!("the fake plugin panicked later")
            }
            _ => Err(PluginError::NotFound(path.to_string()).into()),
        }
    }

    async fn before_request(&self, request: &Request) -> Result<HookAction, CallError> {
        self.hook_calls.fetch_add(1, Ordering::SeqCst);
        if request.header("x-block").is_some() {
            return Ok(HookAction::Respond(Response::new(401).with_body("blocked")));
        }
        if request.header("x-rewrite").is_some() {
            let mut rewritten = request.clone();
            rewritten.headers.insert("x-rewritten", "yes");
            return Ok(HookAction::ContinueWith(rewritten));
        }
        Ok(HookAction::Continue)
    }

    async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, CallError> {
        self.hook_calls.fetch_add(1, Ordering::SeqCst);
        if request.header("x-fail-after").is_some() {
            return Err(PluginError::Unavailable("later".into()).into());
        }
        Ok(response
            .clone()
            .with_header("x-after", request.path.clone()))
    }

    async fn health_check(&self) -> Health {
        self.hook_calls.fetch_add(1, Ordering::SeqCst);
        Health::Degraded("warming up".into())
    }

    async fn shutdown(&self) -> Result<(), CallError> {
        self.shut_down.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A client and a server for a [`Fake`], joined by in-memory pipes.
struct Pair {
    client: Client,
    fake: Arc<Fake>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    logs: Arc<Mutex<Vec<LogRecord>>>,
    dropped: mpsc::UnboundedReceiver<String>,
    sink: LogSink,
}

fn pair(host_max: usize, plugin_max: usize, features: Features) -> Pair {
    let (host_out, plugin_in) = tokio::io::duplex(1 << 16);
    let (plugin_out, host_in) = tokio::io::duplex(1 << 16);
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let fake = Arc::new(Fake::new(dropped_tx));
    let server = Server::new(plugin_in, plugin_out, plugin_max).with_features(features);
    let sink = server.log_sink();
    let served = tokio::spawn(server.run(fake.clone()));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let client = Client::new(host_in, host_out, host_max, {
        let logs = logs.clone();
        move |r| logs.lock().unwrap().push(r)
    });
    Pair {
        client,
        fake,
        served,
        logs,
        dropped,
        sink,
    }
}

fn plain_pair() -> Pair {
    pair(1 << 20, 1 << 20, Features::ALL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_every_call_kind_and_an_orderly_shutdown() {
    let p = plain_pair();
    let c = &p.client;
    let manifest = c.manifest().await.unwrap();
    assert_eq!(
        manifest,
        Manifest {
            protocol: "1.0".into(),
            name: "fake".into(),
            version: "2.3.4".into(),
            description: "a fake for the tests".into(),
            features: Features::ALL,
            // The served plugin's schema crosses in the manifest.
            config_schema: Some(json!({"type": "object"})),
        }
    );
    assert_eq!(manifest.check(), Ok(()));

    let refused = c.init("fake-1", json!({"fail": true})).await;
    assert_eq!(
        refused,
        Err(ClientError::Plugin(
            PluginError::Config("`fail` is set".into()).into()
        ))
    );
    c.init("fake-1", json!({"greeting": "hi"})).await.unwrap();
    assert_eq!(
        *p.fake.config.lock().unwrap(),
        Some(json!({"greeting": "hi"}))
    );

    let mut request = Request::new("PUT", "/echo");
    request.headers.append("X-Trace", "t-1");
    request.query.push(("q".into(), "1".into()));
    request.body = b"payload".to_vec();
    let response = c.handle(&request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"payload");
    assert_eq!(response.headers.get("x-trace"), Some("t-1"));
    assert_eq!(response.headers.get("x-method"), Some("PUT"));

    assert_eq!(c.before_request(&request).await, Ok(HookAction::Continue));
    let mut blocked = request.clone();
    blocked.headers.insert("x-block", "1");
    assert_eq!(
        c.before_request(&blocked).await,
        Ok(HookAction::Respond(Response::new(401).with_body("blocked")))
    );
    let mut rewrite = request.clone();
    rewrite.headers.insert("x-rewrite", "1");
    let Ok(HookAction::ContinueWith(rewritten)) = c.before_request(&rewrite).await else {
        panic!("expected ContinueWith")
    };
    assert_eq!(rewritten.header("x-rewritten"), Some("yes"));
    assert_eq!(rewritten.body, b"payload");

    let after = c
        .after_response(&request, &Response::new(201))
        .await
        .unwrap();
    assert_eq!(
        (after.status, after.headers.get("x-after")),
        (201, Some("/echo"))
    );
    let mut failing = request.clone();
    failing.headers.insert("x-fail-after", "1");
    assert_eq!(
        c.after_response(&failing, &Response::new(200)).await,
        Err(ClientError::Plugin(
            PluginError::Unavailable("later".into()).into()
        ))
    );

    assert_eq!(
        c.health_check().await,
        Ok(Health::Degraded("warming up".into()))
    );
    assert_eq!(
        c.call("health_check", json!({})).await,
        Ok(json!({"status": "degraded", "message": "warming up"}))
    );

    c.shutdown().await.unwrap();
    assert_eq!(p.fake.shut_down.load(Ordering::SeqCst), 1);
    c.close();
    eventually("the server's return", p.served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_round_trip_both_ways() {
    let p = plain_pair();
    let mut request = Request::new("POST", "/echo");
    request.body = (0..=255u8).chain((0..=255u8).rev()).collect();
    request
        .headers
        .append("x-unicode", "żółw \u{1F422} \"quoted\"\t");
    let response = p.client.handle(&request).await.unwrap();
    assert_eq!(response.body, request.body);
    assert_eq!(
        response.headers.get("x-unicode"),
        Some("żółw \u{1F422} \"quoted\"\t")
    );
    let empty = p
        .client
        .handle(&Request::new("GET", "/echo"))
        .await
        .unwrap();
    assert!(empty.body.is_empty());
}

/// Counts how often the reader under it is polled.
struct CountPolls<R> {
    inner: R,
    polls: Arc<AtomicUsize>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountPolls<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[tokio::test]
async fn the_default_spin_sleeps_when_calls_stop_and_still_answers_after() {
    // Both readers spin as they do by default, and count their polls.
    let (host_out, plugin_in) = tokio::io::duplex(1 << 16);
    let (plugin_out, host_in) = tokio::io::duplex(1 << 16);
    let (host_polls, plugin_polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counted = |inner, polls: &Arc<AtomicUsize>| {
        SpinRead::new(
            CountPolls {
                inner,
                polls: polls.clone(),
            },
            DEFAULT_SPIN,
        )
    };
    let (dropped, _dropped) = mpsc::unbounded_channel();
    let fake = Arc::new(Fake::new(dropped));
    let server = Server::new(counted(plugin_in, &plugin_polls), plugin_out, 1 << 20);
    let served = tokio::spawn(server.run(fake));
    let client = Client::new(counted(host_in, &host_polls), host_out, 1 << 20, |_| {});
    let mut request = Request::new("POST", "/echo");
    request.body = (0..=255u8).collect();
    // Calls back to back: messages come close together, so both sides spin between them.
    for _ in 0..200 {
        assert_eq!(client.handle(&request).await.unwrap().body, request.body);
    }
    // The budget (50 µs) runs out early in this pause; after it, neither reader is polled again
    // until something arrives: an idle connection costs no CPU.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (host_before, plugin_before) = (
        host_polls.load(Ordering::Relaxed),
        plugin_polls.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let host_idle = host_polls.load(Ordering::Relaxed) - host_before;
    let plugin_idle = plugin_polls.load(Ordering::Relaxed) - plugin_before;
    assert!(
        host_idle <= 1 && plugin_idle <= 1,
        "polled while idle: host {host_idle}, plugin {plugin_idle} times"
    );
    // A call after the pause wakes both sides from sleep and is answered.
    let after = eventually("an answer after the pause", client.handle(&request)).await;
    assert_eq!(after.unwrap().body, request.body);
    assert!(host_polls.load(Ordering::Relaxed) > host_before);
    drop(client);
    eventually("the end of serving", served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_at_once_each_get_their_own_answer() {
    const N: usize = 64;
    let p = plain_pair();
    p.fake.order_total.store(N, Ordering::SeqCst);
    let mut calls = Vec::new();
    for i in 0..N {
        let c = p.client.clone();
        calls.push(tokio::spawn(async move {
            c.handle(&Request::new("GET", format!("/order/{i}"))).await
        }));
    }
    // The plugin only answers once all N calls have reached it, and then last to first: this
    // finishes only if they were all in flight together and every answer found its caller.
    for (i, call) in calls.into_iter().enumerate() {
        let response = eventually("an answer", call).await.unwrap().unwrap();
        assert_eq!(response.body, i.to_string().as_bytes());
    }
    assert_eq!(*p.fake.started.borrow(), N);
    assert_eq!(p.client.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_keep_their_kind_message_and_status() {
    let p = plain_pair();
    let cases = [
        (
            "bad_request",
            PluginError::BadRequest("no name".into()),
            400,
        ),
        (
            "not_found",
            PluginError::NotFound("no such report".into()),
            404,
        ),
        (
            "teapot",
            PluginError::Status {
                status: 418,
                message: "short and stout".into(),
            },
            418,
        ),
        (
            "unavailable",
            PluginError::Unavailable("database down".into()),
            503,
        ),
    ];
    for (kind, expected, status) in cases {
        let got = p
            .client
            .handle(&Request::new("GET", format!("/error/{kind}")))
            .await
            .unwrap_err();
        let got = CallError::from(got);
        assert_eq!((&got, got.status()), (&CallError::Plugin(expected), status));
    }
    let panic = p.client.handle(&Request::new("GET", "/panic")).await;
    assert_eq!(
        panic,
        Err(ClientError::Plugin(
            PluginError::Panic("the fake plugin panicked".into()).into()
        ))
    );
    let later = p.client.handle(&Request::new("GET", "/panic-later")).await;
    assert_eq!(
        later,
        Err(ClientError::Plugin(
            PluginError::Panic("the fake plugin panicked later".into()).into()
        ))
    );
    // The connection survives all of them.
    assert!(p.client.handle(&Request::new("GET", "/echo")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_is_cancelled_in_the_plugin() {
    let mut p = plain_pair();
    let c = p.client.clone();
    let call = tokio::spawn(async move { c.handle(&Request::new("GET", "/wait")).await });
    let mut started = p.fake.started.subscribe();
    eventually("the call's start", started.wait_for(|n| *n == 1))
        .await
        .unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(p.client.in_flight(), 0);
    let dropped = eventually("the plugin task's end", p.dropped.recv()).await;
    assert_eq!(dropped.as_deref(), Some("/wait"));
    // The connection goes on.
    let ok = p
        .client
        .handle(&Request::new("GET", "/echo"))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(p.client.close_reason(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_plugin_dies_every_call_in_flight_fails_at_once() {
    let p = plain_pair();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let c = p.client.clone();
        calls.push(tokio::spawn(async move {
            c.handle(&Request::new("GET", "/wait")).await
        }));
    }
    let mut started = p.fake.started.subscribe();
    eventually("ten calls' start", started.wait_for(|n| *n == 10))
        .await
        .unwrap();
    assert_eq!(p.client.in_flight(), 10);
    // The plugin process "dies": its side of the pipes goes away.
    p.served.abort();
    for call in calls {
        let result = eventually("a failed call", call).await.unwrap();
        assert_eq!(result, Err(ClientError::Closed(CloseReason::Eof)));
        assert_eq!(CallError::from(result.unwrap_err()).status(), 502);
    }
    assert_eq!(p.client.closed().await, CloseReason::Eof);
    assert_eq!(
        p.client.handle(&Request::new("GET", "/echo")).await,
        Err(ClientError::Closed(CloseReason::Eof))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_hosts_frame_limit_is_a_violation() {
    let p = pair(1024, 1 << 20, Features::ALL);
    let mut request = Request::new("POST", "/echo");
    request.body = vec![7; 2048];
    // The request itself is over the host's limit: refused before sending.
    let refused = p.client.handle(&request).await.unwrap_err();
    assert!(matches!(refused, ClientError::Protocol(_)), "{refused:?}");
    // A small request whose answer is too big: the plugin answers, the host refuses the frame.
    let result = p.client.handle(&Request::new("GET", "/big/2048")).await;
    let reason = CloseReason::Violation("frame of over 1024 bytes".into());
    assert_eq!(result, Err(ClientError::Closed(reason.clone())));
    assert_eq!(p.client.closed().await, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_features_are_not_called() {
    let p = pair(
        1 << 20,
        1 << 20,
        Features {
            handle: true,
            ..Features::default()
        },
    );
    let manifest = p.client.manifest().await.unwrap();
    assert_eq!(manifest.features.names(), vec!["handle"]);
    let request = Request::new("GET", "/echo");
    assert_eq!(
        p.client.before_request(&request).await,
        Ok(HookAction::Continue)
    );
    let unchanged = p
        .client
        .after_response(&request, &Response::new(204))
        .await
        .unwrap();
    assert_eq!(unchanged, Response::new(204));
    assert_eq!(p.client.health_check().await, Ok(Health::Healthy));
    assert_eq!(p.fake.hook_calls.load(Ordering::SeqCst), 0);
    assert!(p.client.handle(&request).await.is_ok());

    let no_handle = pair(1 << 20, 1 << 20, Features::default());
    no_handle.client.manifest().await.unwrap();
    let err = no_handle.client.handle(&request).await.unwrap_err();
    assert_eq!(CallError::from(err).status(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_reach_the_host() {
    let p = plain_pair();
    p.sink.log(LogLevel::Warn, "cache cold");
    let mut record = LogRecord::new(LogLevel::Info, "loaded");
    record.fields = Some(
        json!({"reports": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    p.sink.send(&record);
    // A round trip after the logs: the plugin side writes in order, so they have arrived.
    p.client.manifest().await.unwrap();
    let logs = p.logs.lock().unwrap().clone();
    assert_eq!(
        logs,
        vec![LogRecord::new(LogLevel::Warn, "cache cold"), record]
    );
}

/// Every message in `docs/protocol.md` is one the two sides here accept, so the document and the
/// code cannot drift apart.
#[test]
fn the_protocol_documents_examples_are_valid() {
    use super::http::{ExchangeParamsIn, RequestParamsIn, request_from_json, response_from_json};
    use super::message::{InitParams, ParamsIn, classify};

    let doc = include_str!("../../../docs/protocol.md");
    let mut checked = 0;
    for raw in doc.lines() {
        let line = raw
            .strip_prefix("> ")
            .or_else(|| raw.strip_prefix("< "))
            .unwrap_or(raw);
        if line.starts_with("{\"method\"") {
            request_from_json(serde_json::from_str(line).unwrap()).unwrap();
            checked += 1;
            continue;
        }
        if line.starts_with("{\"status\"") {
            response_from_json(serde_json::from_str(line).unwrap()).unwrap();
            checked += 1;
            continue;
        }
        if !line.starts_with("{\"jsonrpc\"") {
            continue;
        }
        let kind = classify(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        let bytes = line.as_bytes();
        let typed = match kind {
            message::Kind::Call { method, .. } => match &*method {
                "init" => serde_json::from_slice::<ParamsIn<InitParams<'static>>>(bytes).map(drop),
                "handle" | "before_request" => {
                    serde_json::from_slice::<ParamsIn<RequestParamsIn>>(bytes).map(drop)
                }
                "after_response" => {
                    serde_json::from_slice::<ParamsIn<ExchangeParamsIn>>(bytes).map(drop)
                }
                "getmanifest" | "health_check" | "shutdown" => Ok(()),
                other => panic!("{line}: unknown method {other}"),
            },
            message::Kind::Notification { method } if method == "log" => {
                serde_json::from_slice::<ParamsIn<LogRecord>>(bytes).map(drop)
            }
            message::Kind::Notification { method } => {
                assert_eq!(method, "cancel", "{line}");
                Ok(())
            }
            message::Kind::Answer { error, .. } => {
                let value: Value = serde_json::from_str(line).unwrap();
                if error {
                    serde_json::from_value::<message::RpcError>(value["error"].clone()).map(drop)
                } else if value["result"].get("protocol").is_some() {
                    serde_json::from_value::<Manifest>(value["result"].clone()).map(drop)
                } else {
                    Ok(())
                }
            }
        };
        typed.unwrap_or_else(|e| panic!("{line}: {e}"));
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} examples found");
}

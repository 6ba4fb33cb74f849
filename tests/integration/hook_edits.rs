//! ABI 1.2's lent hooks: a library hook reads the host's request and response in place and sends
//! back only the headers it sets; the chain applies them exactly as it applied a whole new request
//! or response, and a lent hook call dropped while it waits is cancelled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backworks_plugin_host::{
    BreakerState, CallError, CallPolicy, DynamicPlugin, Guarded, Hook, HookChain, Lifecycle,
    OnFailure, Plugin, PluginState, load_library,
};
use backworks_plugin_sdk::{PluginError, Request, RequestEdit, Response};
use serde_json::{Value, json};

use crate::support::rust_plugin;

/// The request-id plugin as a before + after hook, lending (ABI 1.2) or, with `lending: false`,
/// through the copying entries of the same library.
async fn request_id_chain(config: Value, lending: bool) -> HookChain {
    let library = load_library(&rust_plugin("request_id")).unwrap();
    assert!(library.vtable().before_request_lent.is_some());
    assert!(library.vtable().after_response_lent.is_some());
    let mut plugin = DynamicPlugin::new(library, "request-id").unwrap();
    if !lending {
        plugin = plugin.without_lending();
    }
    plugin.initialize(&config).await.unwrap();
    let guarded = Guarded::new(
        Arc::new(plugin),
        CallPolicy::default(),
        Arc::new(Lifecycle::new("request-id", PluginState::Active)),
    );
    HookChain::new(vec![Hook {
        plugin: Arc::new(guarded),
        before_request: Some(OnFailure::Reject),
        after_response: Some(OnFailure::Skip),
        observer: None,
        counts: Arc::default(),
    }])
}

/// Runs `request` through `chain` around an endpoint that records the request it got and answers
/// 200 `ok` with its own `x-request-id` and `x-endpoint` headers.
async fn through(chain: &HookChain, request: Request) -> (Option<Request>, Response) {
    let seen = Mutex::new(None);
    let response = chain
        .run(request, |request| {
            *seen.lock().unwrap() = Some(Request::clone(&request));
            async {
                Response::text("ok")
                    .with_header("x-request-id", "the endpoint's")
                    .with_header("x-endpoint", "1")
            }
        })
        .await;
    (seen.into_inner().unwrap(), response)
}

fn get(headers: &[(&str, &str)]) -> Request {
    let mut request = Request::new("GET", "/hello/ana");
    request.params.push(("name".into(), "ana".into()));
    for (name, value) in headers {
        request.headers.append(*name, *value);
    }
    request.body = b"payload".to_vec();
    request
}

#[tokio::test]
async fn a_lent_hook_sets_the_header_the_endpoint_sees_and_the_client_gets() {
    for lending in [true, false] {
        let chain = request_id_chain(Value::Null, lending).await;
        let (seen, response) = through(&chain, get(&[("x-other", "1")])).await;
        let seen = seen.expect("the endpoint ran");
        let id = seen.header("x-request-id").expect("an id").to_owned();
        assert_eq!(id.len(), 23, "lending {lending}: {id}");
        // Everything else of the request is as the client sent it.
        assert_eq!(seen.header("x-other"), Some("1"));
        assert_eq!(seen.headers.len(), 2, "{:?}", seen.headers);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("GET", "/hello/ana")
        );
        assert_eq!(seen.param("name"), Some("ana"));
        assert_eq!(seen.body, b"payload");
        // The response keeps its status, body and other headers; the id replaces the endpoint's.
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        assert_eq!(response.headers.get("x-endpoint"), Some("1"));
        let ids: Vec<_> = response
            .headers
            .iter()
            .filter(|(name, _)| *name == "x-request-id")
            .collect();
        assert_eq!(ids, [("x-request-id", id.as_str())], "lending {lending}");

        // A request that has an id goes on unchanged, and the client gets its own id back.
        let (seen, response) = through(&chain, get(&[("X-Request-Id", "mine-123")])).await;
        assert_eq!(seen.unwrap().headers.len(), 1);
        assert_eq!(response.headers.get("x-request-id"), Some("mine-123"));
    }
}

#[tokio::test]
async fn a_lent_hook_that_answers_early_stops_the_chain() {
    let chain = request_id_chain(json!({"require_api_key": "s3cret"}), true).await;
    let (seen, response) = through(&chain, get(&[("x-request-id", "r-1")])).await;
    assert!(seen.is_none(), "the endpoint ran");
    assert_eq!(response.status, 401);
    assert_eq!(response.headers.get("x-request-id"), Some("r-1"));
    assert_eq!(
        serde_json::from_slice::<Value>(&response.body).unwrap(),
        json!({"error": "missing or invalid API key"})
    );
    let (seen, response) = through(&chain, get(&[("x-api-key", "s3cret")])).await;
    assert!(seen.is_some());
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn a_plugin_with_lent_hooks_still_answers_the_copying_calls() {
    let library = load_library(&rust_plugin("request_id")).unwrap();
    let plugin = DynamicPlugin::new(library, "request-id").unwrap();
    plugin.initialize(&Value::Null).await.unwrap();
    // `before_request` (as an observer or an older caller makes it) gets a whole new request...
    let action = plugin.before_request(&get(&[])).await.unwrap();
    let backworks_plugin_sdk::HookAction::ContinueWith(changed) = action else {
        panic!("expected a changed request, got {action:?}");
    };
    assert_eq!(changed.header("x-request-id").map(str::len), Some(23));
    assert_eq!(changed.body, b"payload");
    // ...and `before_request_shared` only the header.
    let edit = plugin
        .before_request_shared(Arc::new(get(&[])))
        .await
        .unwrap();
    let RequestEdit::SetHeaders(headers) = edit else {
        panic!("expected a header edit, got {edit:?}");
    };
    assert_eq!(headers.len(), 1);
    let answered = plugin
        .after_response(&changed, &Response::text("x"))
        .await
        .unwrap();
    assert_eq!(
        answered.headers.get("x-request-id"),
        changed.header("x-request-id")
    );
    assert_eq!(answered.body, b"x");
}

/// A lent hook call that waits holds the request and the response the chain shares; dropping it
/// cancels the plugin's task before they go, and the plugin serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_hook_call_dropped_while_it_waits_is_cancelled_and_the_plugin_serves_on() {
    let faulty = rust_plugin("faulty");
    let library = load_library(&faulty).unwrap();
    assert!(library.vtable().before_request_lent.is_some());
    let plugin = DynamicPlugin::new(library, "faulty").unwrap();
    let config = json!({
        "sleep_ms": 60_000,
        "only_path_suffix": "/slow",
        "apply_to": ["before_request", "after_response"],
    });
    plugin.initialize(&config).await.unwrap();
    let slow = Arc::new(Request::new("GET", "/x/slow"));
    let response = Arc::new(Response::text("body").with_header("x-a", "1"));
    for round in 0..10 {
        let before = tokio::time::timeout(
            Duration::from_millis(5),
            plugin.before_request_shared(slow.clone()),
        )
        .await;
        assert!(
            before.is_err(),
            "round {round}: a minute-long sleep answered"
        );
        let after = tokio::time::timeout(
            Duration::from_millis(5),
            plugin.after_response_shared(slow.clone(), response.clone()),
        )
        .await;
        assert!(
            after.is_err(),
            "round {round}: a minute-long sleep answered"
        );
    }
    // Nothing of the cancelled calls holds the shared values any more.
    assert_eq!(Arc::strong_count(&slow), 1);
    assert_eq!(Arc::strong_count(&response), 1);
    let fast = Arc::new(Request::new("GET", "/x/fast"));
    let edit = plugin.before_request_shared(fast.clone()).await.unwrap();
    assert_eq!(edit, RequestEdit::Continue);
    let kept = plugin
        .after_response_shared(fast, response.clone())
        .await
        .unwrap();
    assert_eq!(kept, backworks_plugin_sdk::ResponseEdit::Keep);
}

/// A lent hook call whose task waits answers when it is done, through the same future: the edit
/// comes back, and nothing holds the shared request or response afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_hook_call_that_waits_answers_when_its_task_is_done() {
    let faulty = rust_plugin("faulty");
    let plugin = DynamicPlugin::new(load_library(&faulty).unwrap(), "faulty").unwrap();
    let config = json!({
        "sleep_ms": 20,
        "only_path_suffix": "/slow",
        "apply_to": ["before_request", "after_response"],
    });
    plugin.initialize(&config).await.unwrap();
    let slow = Arc::new(Request::new("GET", "/x/slow"));
    // More headers than the call's future holds views of inline.
    let mut response = Response::text("body");
    for i in 0..6 {
        response = response.with_header(format!("x-h{i}"), "v");
    }
    let response = Arc::new(response);
    for _ in 0..3 {
        let edit = plugin.before_request_shared(slow.clone()).await.unwrap();
        assert_eq!(edit, RequestEdit::Continue);
        let kept = plugin
            .after_response_shared(slow.clone(), response.clone())
            .await
            .unwrap();
        assert_eq!(kept, backworks_plugin_sdk::ResponseEdit::Keep);
    }
    assert_eq!(Arc::strong_count(&slow), 1);
    assert_eq!(Arc::strong_count(&response), 1);
}

/// `libfaulty.so` under `config` (only paths ending `/slow` misbehave, in `handle` and both
/// hooks), initialized, and behind a guard with `policy`: the guard calls its lent entries
/// directly, holding the call inline. The plugin is kept too, to count its calls unguarded.
async fn guarded_faulty(
    mut config: Value,
    policy: CallPolicy,
) -> (Arc<DynamicPlugin>, Arc<Guarded>) {
    let library = load_library(&rust_plugin("faulty")).unwrap();
    assert!(library.vtable().handle_lent.is_some());
    assert!(library.vtable().before_request_lent.is_some());
    assert!(library.vtable().after_response_lent.is_some());
    let plugin = Arc::new(DynamicPlugin::new(library, "faulty").unwrap());
    config["only_path_suffix"] = json!("/slow");
    config["apply_to"] = json!(["handle", "before_request", "after_response"]);
    plugin.initialize(&config).await.unwrap();
    assert!(plugin.as_library().is_some());
    let guarded = Guarded::new(
        plugin.clone(),
        policy,
        Arc::new(Lifecycle::new("faulty", PluginState::Active)),
    );
    (plugin, Arc::new(guarded))
}

/// How many calls the plugin has had so far (`calls` of faulty's answer, less this one).
async fn faulty_calls(plugin: &DynamicPlugin) -> u64 {
    let response = plugin.handle(Request::new("GET", "/count")).await.unwrap();
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    body["calls"].as_u64().unwrap() - 1
}

/// Waits (generous deadline: liveness, not speed) until `n` calls are in flight in `guarded`.
async fn until_in_flight(guarded: &Guarded, n: u64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while guarded.stats().in_flight() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("calls in flight");
}

/// Through the guard's direct path, a lent call ready at once (`/fast`) and one whose task waits
/// (`/slow`) answer what the plugin's own (boxed) calls answer, and count alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_guard_a_ready_and_a_waiting_lent_call_answer_alike() {
    let (plugin, guarded) = guarded_faulty(json!({"sleep_ms": 5}), CallPolicy::default()).await;
    let response = Arc::new(Response::text("body").with_header("x-a", "1"));
    for path in ["/x/fast", "/x/slow"] {
        let request = Arc::new(Request::new("GET", path));
        let direct = plugin.before_request_shared(request.clone()).await;
        assert_eq!(guarded.before_request_shared(request.clone()).await, direct);
        assert_eq!(direct, Ok(RequestEdit::Continue), "{path}");
        let direct = plugin
            .after_response_shared(request.clone(), response.clone())
            .await;
        let through = guarded
            .after_response_shared(request.clone(), response.clone())
            .await;
        assert_eq!(through, direct);
        assert_eq!(
            through,
            Ok(backworks_plugin_sdk::ResponseEdit::Keep),
            "{path}"
        );
        for answer in [
            guarded.handle_shared(request.clone()).await,
            guarded.handle(Request::clone(&request)).await,
        ] {
            let answer = answer.expect("served");
            assert_eq!(answer.status, 200, "{path}");
        }
        assert_eq!(Arc::strong_count(&request), 1, "{path}: the lease is over");
    }
    assert_eq!(Arc::strong_count(&response), 1);
    let stats = guarded.stats().snapshot();
    assert_eq!((stats.calls, stats.successes, stats.in_flight), (8, 8, 0));
    assert_eq!(stats.latency.count(), 8);
    // Every call reached the plugin: 4 through the guard and 2 direct, for each path.
    assert_eq!(faulty_calls(&plugin).await, 12);
}

/// A lent call that is ready at once but blocked its thread past the timeout is a timeout (an
/// overrun), exactly as a call that waits past it: the direct path keeps the deadline rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_call_ready_at_once_but_past_its_timeout_is_a_timeout() {
    let policy = CallPolicy {
        timeout: Some(Duration::from_millis(5)),
        ..CallPolicy::default()
    };
    // Blocking for 40 ms takes at least 40 ms, whatever the machine: past 5 ms.
    let (_plugin, guarded) = guarded_faulty(json!({"block_ms": 40}), policy).await;
    let request = Arc::new(Request::new("GET", "/x/slow"));
    let response = Arc::new(Response::text("body"));
    let before = guarded.before_request_shared(request.clone()).await;
    let after = guarded
        .after_response_shared(request.clone(), response.clone())
        .await;
    let handled = guarded.handle_shared(request.clone()).await;
    let expected = "plugin `faulty` did not answer within 5ms";
    assert_eq!(before, Err(CallError::Timeout(expected.into())));
    assert_eq!(after, Err(CallError::Timeout(expected.into())));
    assert_eq!(handled, Err(CallError::Timeout(expected.into())));
    let stats = guarded.stats().snapshot();
    assert_eq!((stats.timeouts, stats.overruns, stats.successes), (3, 3, 0));
    assert_eq!(stats.in_flight, 0);
}

/// An open breaker refuses a lent call without calling the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_refuses_a_lent_call_without_calling_the_plugin() {
    let policy = CallPolicy {
        breaker: backworks_plugin_host::BreakerSettings {
            consecutive_failures: 2,
            cooldown: Duration::from_secs(600),
            ..Default::default()
        },
        ..CallPolicy::default()
    };
    let (plugin, guarded) = guarded_faulty(json!({"error": {"message": "broken"}}), policy).await;
    let bad = Arc::new(Request::new("GET", "/x/slow"));
    for _ in 0..2 {
        assert_eq!(
            guarded.before_request_shared(bad.clone()).await,
            Err(CallError::Plugin(PluginError::Internal("broken".into())))
        );
    }
    assert_eq!(guarded.breaker_state(), BreakerState::Open);
    let fine = Arc::new(Request::new("GET", "/x/fine"));
    let response = Arc::new(Response::new(200));
    let refused = [
        guarded.before_request_shared(fine.clone()).await.map(drop),
        guarded
            .after_response_shared(fine.clone(), response.clone())
            .await
            .map(drop),
        guarded.handle_shared(fine.clone()).await.map(drop),
        guarded
            .handle(Request::new("GET", "/x/fine"))
            .await
            .map(drop),
    ];
    for answer in refused {
        assert!(
            matches!(answer, Err(CallError::CircuitOpen { .. })),
            "{answer:?}"
        );
    }
    assert_eq!(
        faulty_calls(&plugin).await,
        2,
        "refused calls reached the plugin"
    );
    assert_eq!(guarded.stats().snapshot().breaker_rejected, 4);
    assert_eq!(
        (Arc::strong_count(&fine), Arc::strong_count(&response)),
        (1, 1)
    );
}

/// Past the concurrency limit a lent call is shed without calling the plugin; the waiting call
/// holding the place, dropped, is cancelled: its task lets go of the lent request, and the place
/// is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lent_calls_past_the_limit_are_shed_and_a_dropped_waiting_one_is_cancelled() {
    let policy = CallPolicy {
        max_concurrency: Some(1),
        ..CallPolicy::default()
    };
    let (plugin, guarded) = guarded_faulty(json!({"sleep_ms": 600_000}), policy).await;
    let slow = Arc::new(Request::new("GET", "/x/slow"));
    let held = tokio::spawn({
        let (guarded, slow) = (guarded.clone(), slow.clone());
        async move { guarded.before_request_shared(slow).await }
    });
    until_in_flight(&guarded, 1).await;
    // The guard counts the call in flight before it reaches the plugin: wait until it has. Each
    // look (`/count`) is a call the plugin counts too, and is taken off.
    let mut looks = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while faulty_calls(&plugin).await - looks < 1 {
            looks += 1;
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the held call reaches the plugin");
    looks += 1;
    let fast = Arc::new(Request::new("GET", "/x/fast"));
    let shed = guarded.before_request_shared(fast.clone()).await;
    assert_eq!(
        shed,
        Err(CallError::Overloaded(
            "plugin `faulty` is at its limit of 1 concurrent calls".into()
        ))
    );
    assert!(matches!(
        guarded.handle_shared(fast.clone()).await,
        Err(CallError::Overloaded(_))
    ));
    assert_eq!(
        faulty_calls(&plugin).await - looks,
        1,
        "shed calls reached the plugin"
    );
    held.abort();
    assert!(held.await.expect_err("aborted").is_cancelled());
    // The task was cancelled before the lent request went: nothing holds it any more.
    assert_eq!(Arc::strong_count(&slow), 1);
    let stats = guarded.stats().snapshot();
    assert_eq!((stats.shed, stats.dropped, stats.in_flight), (2, 1, 0));
    // The place is free again, and the plugin serves on.
    assert_eq!(
        guarded.before_request_shared(fast).await,
        Ok(RequestEdit::Continue)
    );
}

/// A lent call that waits past its deadline is answered 504 and cancelled: the lent request and
/// response are let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lent_call_past_its_deadline_is_cancelled() {
    let policy = CallPolicy {
        timeout: Some(Duration::from_millis(5)),
        ..CallPolicy::default()
    };
    let (_plugin, guarded) = guarded_faulty(json!({"sleep_ms": 600_000}), policy).await;
    let slow = Arc::new(Request::new("GET", "/x/slow"));
    let response = Arc::new(Response::text("body"));
    let after = guarded
        .after_response_shared(slow.clone(), response.clone())
        .await;
    assert!(matches!(after, Err(CallError::Timeout(_))), "{after:?}");
    let handled = guarded.handle_shared(slow.clone()).await;
    assert!(matches!(handled, Err(CallError::Timeout(_))), "{handled:?}");
    assert_eq!(
        (Arc::strong_count(&slow), Arc::strong_count(&response)),
        (1, 1)
    );
    let stats = guarded.stats().snapshot();
    assert_eq!((stats.timeouts, stats.overruns, stats.in_flight), (2, 0, 0));
}

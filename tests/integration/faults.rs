//! The in-process fault catalogue (issue #3): one misbehaving plugin per case (`faulty` instances,
//! `broken-panic` for panics), each test asserting the status codes, the state seen through the
//! admin API and `/metrics`, and that a healthy plugin on the same server keeps answering 200.
//!
//! The server, the requests and the names the tests depend on (admin API, metric names, config
//! layout) are shared with the `process_*.rs` catalogues in [`crate::observe`].

use std::time::{Duration, Instant};

use crate::observe::{FaultServer, PATIENCE, admin, assert_error};
use crate::support::serve_until_exit;

#[tokio::test]
async fn error_returns_keep_their_status_and_kind() {
    let faults = FaultServer::start(
        r#"
  missing:
    path: libfaulty.so
    config: { error: { kind: not_found, message: "no such thing" } }
  broken:
    path: libfaulty.so
    config: { error: { message: "it broke" } }
  teapot:
    path: libfaulty.so
    config: { error: { status: 418, message: "short and stout" } }
"#,
        r#"
  missing: { path: /missing, plugin: missing, hooks: [] }
  broken: { path: /broken, plugin: broken, hooks: [] }
  teapot: { path: /teapot, plugin: teapot, hooks: [] }
"#,
    )
    .await;
    for (path, status, plugin, kind, says) in [
        ("/missing", 404, "missing", "not_found", "no such thing"),
        ("/broken", 500, "broken", "internal", "it broke"),
        ("/teapot", 418, "teapot", "status", "short and stout"),
    ] {
        let answer = faults.get(path).await;
        assert_error(&answer, status, plugin, kind);
        assert!(
            faults.detail(&answer).await.contains(says),
            "{}",
            answer.body
        );
        faults.assert_control_serves().await;
    }
    let broken = faults.plugin("broken").await;
    assert_eq!(broken["state"], "active");
    assert_eq!(broken["stats"]["errors"]["internal"], 1, "{broken}");
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_errors_total",
                &[("plugin", "broken"), ("kind", "internal")]
            )
            .await,
        Some(1.0)
    );
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_errors_total",
                &[("plugin", "missing"), ("kind", "not_found")]
            )
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn panics_in_handle_hook_initialize_and_health_check() {
    let faults = FaultServer::start(
        r#"
  panic-handle:
    path: libbroken_panic.so
  panic-hook:
    path: libbroken_panic.so
    hooks: [before_request]
    config: { panic_in: before_request }
  panic-after:
    path: libbroken_panic.so
    hooks: [after_response]
    config: { panic_in: after_response }
  panic-init:
    path: libbroken_panic.so
    config: { panic_in: initialize }
  panic-health:
    path: libbroken_panic.so
    config: { panic_in: health_check }
"#,
        r#"
  boom: { path: "/boom/{what}", plugin: panic-handle, hooks: [] }
  hooked: { path: /hooked, plugin: control, hooks: [panic-hook] }
  after: { path: /after-panics, plugin: control, hooks: [panic-after] }
  init: { path: /init, plugin: panic-init, hooks: [] }
  health: { path: /health-panics, plugin: panic-health, hooks: [] }
"#,
    )
    .await;

    let answer = faults.get("/boom/panic").await;
    assert_error(&answer, 500, "panic-handle", "panic");
    assert!(
        faults.detail(&answer).await.contains("handle exploded"),
        "{}",
        answer.body
    );
    faults.assert_control_serves().await;

    let answer = faults.get("/hooked").await;
    assert_error(&answer, 500, "panic-hook", "panic");
    assert!(
        faults
            .detail(&answer)
            .await
            .contains("before_request exploded")
    );
    faults.assert_control_serves().await;

    // A synchronous `after_response` that panics costs its edit, not the response: the
    // endpoint's answer goes on, and the panic is counted against the hook's plugin.
    for _ in 0..3 {
        let answer = faults.get("/after-panics").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_errors_total",
                &[("plugin", "panic-after"), ("kind", "panic")]
            )
            .await,
        Some(3.0)
    );
    faults.assert_control_serves().await;

    let answer = faults.get("/init").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        faults.detail(&answer).await.contains("initialize exploded"),
        "{}",
        answer.body
    );
    let init = faults.plugin("panic-init").await;
    assert_eq!(init["state"], "error");
    assert!(
        init["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("initialize exploded"),
        "{init}"
    );

    // A panicking health check is an Unhealthy report; the plugin keeps serving.
    let f = &faults;
    f.wait_for("panic-health to be reported unhealthy", || async move {
        f.plugin("panic-health").await["health"]["status"] == "unhealthy"
    })
    .await;
    assert_eq!(faults.get("/health-panics").await.status, 200);
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_health",
                &[("plugin", "panic-health"), ("status", "unhealthy")]
            )
            .await,
        Some(1.0)
    );
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn an_async_call_past_its_timeout_is_a_504_and_is_dropped() {
    let faults = FaultServer::start(
        r#"
  slow:
    path: libfaulty.so
    timeout_ms: 2000
    config: { sleep_ms: 600000, only_path_suffix: /hang }
"#,
        r#"
  slow: { path: "/slow/{what}", plugin: slow, hooks: [] }
"#,
    )
    .await;
    // The control plugin answers while the slow call waits.
    let hanging = {
        let http = faults.http.clone();
        let url = faults.server.url("/slow/hang");
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    faults.assert_control_serves().await;
    assert_eq!(hanging.await.unwrap().unwrap(), 504);

    let answer = faults.get("/slow/hang").await;
    assert_error(&answer, 504, "slow", "timeout");
    assert!(
        faults
            .detail(&answer)
            .await
            .contains("did not answer within"),
        "{}",
        answer.body
    );

    // The plugin still serves, and saw every call.
    let answer = faults.get("/slow/fine").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["calls"], 3);

    let slow = faults.plugin("slow").await;
    assert_eq!(slow["stats"]["timeouts"], 2, "{slow}");
    assert_eq!(slow["stats"]["overruns"], 0, "{slow}");
    assert_eq!(
        slow["stats"]["in_flight"], 0,
        "dropped, not left running: {slow}"
    );
    assert!(
        admin::event_kinds(&slow).contains(&"timed_out".to_owned()),
        "{slow}"
    );
    assert_eq!(
        faults
            .metric("backworks_plugin_timeouts_total", &[("plugin", "slow")])
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_blocking_call_is_answered_504_and_counted_as_an_overrun() {
    // In process, a blocked thread cannot be pre-empted: the call runs to its end (1.5 s), then the
    // host throws its answer away and answers 504. Documented limit; `isolation: process` fixes it.
    let faults = FaultServer::start(
        r#"
  blocker:
    path: libfaulty.so
    timeout_ms: 200
    config: { block_ms: 1500 }
"#,
        r#"
  blocker: { path: /block, plugin: blocker, hooks: [] }
"#,
    )
    .await;
    let answer = faults.get("/block").await;
    assert_error(&answer, 504, "blocker", "timeout");
    let blocker = faults.plugin("blocker").await;
    assert_eq!(blocker["stats"]["timeouts"], 1, "{blocker}");
    assert_eq!(blocker["stats"]["overruns"], 1, "{blocker}");
    let events = blocker["events"].to_string();
    assert!(events.contains("isolation: process"), "{blocker}");
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn calls_past_max_concurrency_are_shed_with_a_503() {
    let faults = FaultServer::start(
        r#"
  narrow:
    path: libfaulty.so
    max_concurrency: 2
    timeout_ms: 600000
    config: { sleep_ms: 600000, only_path_suffix: /hold }
"#,
        r#"
  narrow: { path: "/narrow/{what}", plugin: narrow, hooks: [] }
"#,
    )
    .await;
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let http = faults.http.clone();
            let url = faults.server.url("/narrow/hold");
            tokio::spawn(async move { http.get(url).send().await })
        })
        .collect();
    let f = &faults;
    f.wait_for("two calls in flight", || async move {
        f.plugin("narrow").await["stats"]["in_flight"] == 2
    })
    .await;

    let answer = faults.get("/narrow/more").await;
    assert_error(&answer, 503, "narrow", "overloaded");
    faults.assert_control_serves().await;
    let narrow = faults.plugin("narrow").await;
    assert_eq!(narrow["stats"]["shed"], 1, "{narrow}");
    assert_eq!(
        faults
            .metric("backworks_plugin_shed_total", &[("plugin", "narrow")])
            .await,
        Some(1.0)
    );
    // Shed calls never reached the plugin: only the two holders did.
    for holder in holders {
        holder.abort();
    }
    let f = &faults;
    f.wait_for("the held calls to be dropped", || async move {
        f.plugin("narrow").await["stats"]["in_flight"] == 0
    })
    .await;
    assert_eq!(faults.get("/narrow/after").await.body["calls"], 3);
}

#[tokio::test]
async fn an_oversized_body_or_an_invalid_header_is_a_502() {
    let faults = FaultServer::start(
        r#"
  flood:
    path: libfaulty.so
    max_response_body: 1024
    config: { body_bytes: 4096, only_path_suffix: /big }
  header:
    path: libfaulty.so
    config: { bad_header: true }
"#,
        r#"
  flood: { path: "/flood/{what}", plugin: flood, hooks: [] }
  header: { path: /header, plugin: header, hooks: [] }
"#,
    )
    .await;
    let answer = faults.get("/flood/big").await;
    assert_error(&answer, 502, "flood", "invalid_response");
    assert!(
        faults
            .detail(&answer)
            .await
            .contains("4096 bytes, over the limit of 1024"),
        "{}",
        answer.body
    );
    assert_eq!(faults.get("/flood/small").await.status, 200);
    faults.assert_control_serves().await;

    let answer = faults.get("/header").await;
    assert_error(&answer, 502, "header", "invalid_response");
    assert!(
        faults.detail(&answer).await.contains("x-faulty"),
        "{}",
        answer.body
    );
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn health_reports_reach_the_admin_api_metrics_and_readiness() {
    let faults = FaultServer::start(
        r#"
  sick:
    path: libfaulty.so
    important: true
    config: { health: unhealthy }
  meh:
    path: libfaulty.so
    config: { health: degraded }
  mute:
    path: libfaulty.so
    config: { health_delay_ms: 600000 }
"#,
        r#"
  sick: { path: /sick, plugin: sick, hooks: [] }
"#,
    )
    .await;
    for (plugin, status) in [
        ("sick", "unhealthy"),
        ("meh", "degraded"),
        ("mute", "unhealthy"),
    ] {
        let f = &faults;
        f.wait_for(
            &format!("{plugin} to be reported {status}"),
            || async move { f.plugin(plugin).await["health"]["status"] == status },
        )
        .await;
        assert_eq!(
            faults
                .metric(
                    "backworks_plugin_health",
                    &[("plugin", plugin), ("status", status)]
                )
                .await,
            Some(1.0),
            "{plugin}"
        );
    }
    assert_eq!(
        faults.plugin("sick").await["health"]["message"],
        "faulty: configured unhealthy"
    );
    assert!(
        faults.plugin("mute").await["health"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
    );
    assert!(
        admin::event_kinds(&faults.plugin("sick").await).contains(&"health_changed".to_owned())
    );
    // An unhealthy important plugin: alive, not ready; it still serves its endpoint.
    assert_eq!(faults.get("/health").await.status, 200);
    assert_eq!(faults.get("/ready").await.status, 503);
    assert_eq!(faults.get("/sick").await.status, 200);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn the_breaker_opens_refuses_without_calling_and_recovers_through_half_open() {
    let faults = FaultServer::start(
        r#"
  flaky:
    path: libfaulty.so
    important: true
    config: { fail_first: 3 }
    breaker: { consecutive_failures: 3, cooldown_ms: 3000, half_open_probes: 1 }
  relapse:
    path: libfaulty.so
    config: { fail_first: 4 }
    breaker: { consecutive_failures: 3, cooldown_ms: 1000, half_open_probes: 1 }
"#,
        r#"
  flaky: { path: /flaky, plugin: flaky, hooks: [] }
  relapse: { path: /relapse, plugin: relapse, hooks: [] }
"#,
    )
    .await;
    for n in 1..=3 {
        let answer = faults.get("/flaky").await;
        assert_error(&answer, 500, "flaky", "internal");
        let says = format!("faulty: call {n} fails (fail_first 3)");
        assert!(
            faults.detail(&answer).await.contains(&says),
            "{}",
            answer.body
        );
    }
    // Open: refused at once with Retry-After, and the plugin is not called.
    for _ in 0..3 {
        let answer = faults.get("/flaky").await;
        assert_error(&answer, 503, "flaky", "circuit_open");
        let retry_after: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3).contains(&retry_after), "{retry_after}");
    }
    let flaky = faults.plugin("flaky").await;
    assert_eq!(flaky["breaker"]["state"], "open", "{flaky}");
    assert_eq!(flaky["stats"]["breaker_rejected"], 3, "{flaky}");
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_breaker_state",
                &[("plugin", "flaky"), ("state", "open")]
            )
            .await,
        Some(1.0)
    );
    faults.assert_control_serves().await;
    // An important plugin with an open breaker is not ready.
    let ready = faults.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.body["waiting_for"][0]["plugin"], "flaky",
        "{}",
        ready.body
    );
    assert_eq!(
        ready.body["waiting_for"][0]["reason"], "circuit breaker open",
        "{}",
        ready.body
    );

    // After the cool-down the next call is the probe; it succeeds and closes the breaker. Its body
    // counts the plugin's calls: 4, so none of the refused calls reached it.
    let f = &faults;
    let probe = f
        .poll_until("the probe call to go through", || async move {
            let answer = f.get("/flaky").await;
            (answer.status != 503).then_some(answer)
        })
        .await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    assert_eq!(probe.body["calls"], 4, "{}", probe.body);
    let flaky = faults.plugin("flaky").await;
    assert_eq!(flaky["breaker"]["state"], "closed", "{flaky}");
    f.wait_for("/ready to answer 200", || async move {
        f.get("/ready").await.status == 200
    })
    .await;
    let kinds = admin::event_kinds(&flaky);
    for kind in ["breaker_opened", "breaker_half_open", "breaker_closed"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} missing: {flaky}");
    }
    assert_eq!(
        faults
            .metric(
                "backworks_plugin_breaker_state",
                &[("plugin", "flaky"), ("state", "closed")]
            )
            .await,
        Some(1.0)
    );

    // A failed probe reopens the breaker; the next probe closes it.
    for _ in 1..=3 {
        assert_eq!(faults.get("/relapse").await.status, 500);
    }
    let mut statuses = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while statuses.last() != Some(&200) {
        assert!(
            Instant::now() < deadline,
            "relapse did not recover: {statuses:?}"
        );
        statuses.push(faults.get("/relapse").await.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refusals (503), one failed probe (500), refusals again, the good probe (200).
    let tried: Vec<u16> = statuses.iter().copied().filter(|s| *s != 503).collect();
    assert_eq!(tried, vec![500, 200], "{statuses:?}");
    let relapse = faults.plugin("relapse").await;
    assert_eq!(relapse["breaker"]["times_opened"], 2, "{relapse}");
    assert_eq!(faults.get("/relapse").await.body["calls"], 6);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn five_hundreds_open_the_breaker_only_when_counted() {
    let faults = FaultServer::start(
        r#"
  counted:
    path: libfaulty.so
    config: { respond_status: 503 }
    breaker: { consecutive_failures: 2, cooldown_ms: 600000 }
  ignored:
    path: libfaulty.so
    config: { respond_status: 503 }
    breaker: { consecutive_failures: 2, count_5xx: false }
"#,
        r#"
  counted: { path: /counted, plugin: counted, hooks: [] }
  ignored: { path: /ignored, plugin: ignored, hooks: [] }
"#,
    )
    .await;
    for _ in 0..2 {
        let answer = faults.get("/counted").await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body["ok"], false, "the plugin's own answer");
    }
    assert_error(
        &faults.get("/counted").await,
        503,
        "counted",
        "circuit_open",
    );
    for n in 1..=5 {
        let answer = faults.get("/ignored").await;
        assert_eq!(
            (answer.status, answer.body["calls"].as_u64()),
            (503, Some(n))
        );
    }
    assert_eq!(faults.plugin("ignored").await["breaker"]["state"], "closed");
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn an_important_plugin_that_fails_to_start_stops_start_up() {
    let (status, stderr) = serve_until_exit(
        "plugins:\n  vital:\n    path: \"{{plugins}}/libfaulty.so\"\n    important: true\n    \
         config: { sleep_ms: soon }\nendpoints:\n  vital: { path: /vital, plugin: vital }\n",
    );
    assert!(!status.success());
    assert!(
        stderr.contains("important plugin `vital` cannot start")
            && stderr.contains("field `sleep_ms`"),
        "{stderr}"
    );
}

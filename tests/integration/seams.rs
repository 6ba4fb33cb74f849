//! Where plugins meet each other and the public (issue #8): a hook plugin's failure costs what its
//! `on_failure` policy says and nothing more (one test per row of the table in
//! docs/operations.md), observers never touch the response path, declared and subscribed hooks
//! agree, and public bodies carry no secrets or internals. In every test the control plugin keeps
//! answering 200.

use crate::observe::{Answer, FaultServer, assert_error, message};
use crate::support::{Server, backworks, client, root, write_config};

/// A server with a `target` endpoint at `/t` behind the hook plugin `hook` (YAML of its entry,
/// indented four spaces, after `path: libfaulty.so`).
async fn behind(hook: &str) -> FaultServer {
    FaultServer::start(
        &format!("\n  target:\n    path: libfaulty.so\n  hook:\n    path: libfaulty.so\n{hook}"),
        "  t: { path: /t, plugin: target, hooks: [hook] }\n",
    )
    .await
}

/// How often `target` was called, from its stats.
async fn target_calls(faults: &FaultServer) -> u64 {
    faults.plugin("target").await["stats"]["calls"]
        .as_u64()
        .unwrap_or(0)
}

/// `backworks_observer_exchanges_total` of the plugin `hook` with this outcome.
async fn observed(faults: &FaultServer, outcome: &str) -> f64 {
    faults
        .metric(
            "backworks_observer_exchanges_total",
            &[("plugin", "hook"), ("outcome", outcome)],
        )
        .await
        .unwrap_or(0.0)
}

async fn hook_failures(faults: &FaultServer, outcome: &str) -> f64 {
    faults
        .metric(
            "backworks_hook_failures_total",
            &[("plugin", "hook"), ("outcome", outcome)],
        )
        .await
        .unwrap_or(0.0)
}

fn assert_served_by_target(answer: &Answer) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["ok"], true, "{}", answer.body);
}

const FAILING_BEFORE: &str = "    hooks: [before_request]\n    \
    config: { error: { message: \"auth backend down\" }, apply_to: [before_request] }\n";

const FAILING_AFTER: &str = "    hooks: [after_response]\n    \
    config: { error: { message: \"after exploded\" }, apply_to: [after_response] }\n";

#[tokio::test]
async fn before_request_failure_rejects_by_default_and_the_endpoint_does_not_run() {
    let faults = behind(FAILING_BEFORE).await;
    let answer = faults.get("/t").await;
    assert_error(&answer, 500, "hook", "internal");
    assert_eq!(target_calls(&faults).await, 0);
    assert_eq!(hook_failures(&faults, "rejected").await, 1.0);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn before_request_failure_with_skip_serves_the_endpoint() {
    let faults = behind(&format!(
        "{FAILING_BEFORE}    on_failure: {{ before_request: skip }}\n"
    ))
    .await;
    for _ in 0..3 {
        assert_served_by_target(&faults.get("/t").await);
    }
    assert_eq!(hook_failures(&faults, "skipped").await, 3.0);
    let line = faults
        .log_line(&["hook failed and was skipped", "auth backend down"])
        .await;
    assert!(line.contains("hook"), "{line}");
    faults.assert_control_serves().await;
}

/// A hook whose breaker opens after two failures and stays open.
const BREAKING_BEFORE: &str = "    breaker: { consecutive_failures: 2, cooldown_ms: 600000 }\n";

#[tokio::test]
async fn before_request_open_breaker_rejects_by_default() {
    let faults = behind(&format!("{FAILING_BEFORE}{BREAKING_BEFORE}")).await;
    for _ in 0..2 {
        assert_error(&faults.get("/t").await, 500, "hook", "internal");
    }
    let answer = faults.get("/t").await;
    assert_error(&answer, 503, "hook", "circuit_open");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(target_calls(&faults).await, 0);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn before_request_open_breaker_with_skip_serves_the_endpoint() {
    let faults = behind(&format!(
        "{FAILING_BEFORE}{BREAKING_BEFORE}    on_failure: {{ before_request: skip }}\n"
    ))
    .await;
    for _ in 0..6 {
        assert_served_by_target(&faults.get("/t").await);
    }
    assert_eq!(faults.plugin("hook").await["breaker"]["state"], "open");
    assert_eq!(target_calls(&faults).await, 6);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn before_request_early_answer_is_not_a_failure() {
    let faults = behind(
        "    hooks: [before_request]\n    config: { respond_status: 401, apply_to: [before_request] }\n",
    )
    .await;
    let answer = faults.get("/t").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(target_calls(&faults).await, 0);
    assert_eq!(hook_failures(&faults, "rejected").await, 0.0);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn after_response_failure_keeps_the_response_by_default() {
    let faults = behind(FAILING_AFTER).await;
    for _ in 0..3 {
        assert_served_by_target(&faults.get("/t").await);
    }
    assert_eq!(hook_failures(&faults, "skipped").await, 3.0);
    faults.assert_control_serves().await;
}

#[tokio::test]
async fn after_response_failure_with_reject_answers_the_error() {
    let faults = behind(&format!(
        "{FAILING_AFTER}    on_failure: {{ after_response: reject }}\n"
    ))
    .await;
    let answer = faults.get("/t").await;
    assert_error(&answer, 500, "hook", "internal");
    assert_eq!(target_calls(&faults).await, 1, "the endpoint ran");
    faults.assert_control_serves().await;
}

/// Finding 2: an `after_response` hook at its concurrency limit refused most calls, and every
/// refusal turned an applied write into a 503 that a client would retry.
#[tokio::test]
async fn writes_behind_an_overloaded_after_response_hook_answer_what_happened() {
    let faults = FaultServer::start(
        r#"
  kv:
    path: libkv_store.so
  slow-hook:
    path: libfaulty.so
    hooks: [after_response]
    max_concurrency: 1
    config: { sleep_ms: 200, apply_to: [after_response] }
"#,
        "  counter: { path: \"/counter/{name}\", methods: [POST], plugin: kv, hooks: [slow-hook] }\n",
    )
    .await;
    const N: usize = 40;
    let http = client();
    let url = faults.server.url("/counter/visits");
    let posts = (0..N).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status().as_u16()) })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("answer"))
        .collect();
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "every applied write is answered as applied: {statuses:?}"
    );
    let shed = faults.plugin("slow-hook").await["stats"]["shed"]
        .as_u64()
        .unwrap_or(0);
    assert!(shed > 0, "the hook was over its limit: nothing was tested");
    let last = faults.post_json("/counter/visits", "").await;
    assert_eq!(last.body["value"], N as u64 + 1, "{}", last.body);
    faults.assert_control_serves().await;
}

/// Observers: a failing observer never reaches a client; its failures are counted.
#[tokio::test]
async fn a_failing_observer_never_reaches_the_client() {
    let faults = behind(
        "    hooks: [observe]\n    config: { error: { message: \"observer down\" }, apply_to: [after_response] }\n",
    )
    .await;
    for _ in 0..5 {
        assert_served_by_target(&faults.get("/t").await);
    }
    faults
        .wait_for("the observer's failures to be counted", || async {
            observed(&faults, "failed").await == 5.0
        })
        .await;
    faults.assert_control_serves().await;
}

/// A slow observer with a short queue: what does not fit is dropped and counted, responses go
/// out at once.
#[tokio::test]
async fn a_full_observer_queue_drops_and_counts() {
    let faults = behind(
        "    hooks: [observe]\n    observe_queue: 1\n    config: { sleep_ms: 2000, apply_to: [after_response] }\n",
    )
    .await;
    for _ in 0..20 {
        assert_served_by_target(&faults.get("/t").await);
    }
    let dropped = observed(&faults, "dropped").await;
    assert!(dropped >= 10.0, "dropped {dropped}");
    faults.assert_control_serves().await;
}

/// Finding 1: an observing plugin in a child that dies on every call (as `report.py` did when a
/// flood of distinct paths ran it out of memory) costs no endpoint anything.
#[tokio::test]
async fn an_observer_that_crashes_costs_no_endpoint() {
    let faults = behind(
        "    hooks: [observe]\n    isolation: process\n    \
         restart: { initial_backoff_ms: 10, max_backoff_ms: 50, max_restarts: 1000 }\n    \
         config: { exit: 3, apply_to: [after_response] }\n",
    )
    .await;
    for n in 0..60 {
        assert_served_by_target(&faults.get(&format!("/t?n={n}")).await);
    }
    faults
        .wait_for("the observer's child to have crashed", || async {
            faults.plugin("hook").await["process"]["crashes"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
        .await;
    assert_served_by_target(&faults.get("/t").await);
    faults.assert_control_serves().await;
}

/// Finding 1, as it was found: the demo's report plugin flooded with distinct paths keeps a
/// bounded map and the demo keeps serving.
#[tokio::test]
async fn the_report_plugin_bounds_what_clients_can_grow() {
    let report = root().join("example-plugins/python/report.py");
    let faults = FaultServer::start(
        &format!(
            "\n  report:\n    command: [python3, \"{}\"]\n    hooks: [observe]\n    \
             config: {{ max_paths: 10 }}\n  target:\n    path: libfaulty.so\n",
            report.display()
        ),
        "  t: { path: \"/t/{n}\", plugin: target, hooks: [report] }\n  \
         report: { path: /report, plugin: report, hooks: [] }\n",
    )
    .await;
    for n in 0..50 {
        assert_served_by_target(&faults.get(&format!("/t/{n}")).await);
    }
    let report = faults
        .poll_until("the report to count 50 responses", || async {
            let answer = faults.get("/report").await;
            (answer.body["responses"] == 50).then_some(answer)
        })
        .await;
    assert_eq!(report.body["distinct_paths"], 11, "{}", report.body);
    assert_eq!(report.body["by_path"]["(other)"], 40, "{}", report.body);
    faults.assert_control_serves().await;
}

/// Finding 3: a hook listed for a plugin that does not implement it is an error in `validate`
/// and in `serve` (the plugin does not start, the endpoints behind it answer 503); a plugin that
/// implements `before_request` but is not subscribed is warned about by both.
#[tokio::test]
async fn listed_and_implemented_hooks_must_agree() {
    let yaml = "plugin_dirs: [\"{{plugins}}\"]\nplugins:\n  \
        hello: { path: libhello.so, hooks: [before_request] }\n  \
        auth: { path: libfaulty.so }\n  \
        control: { path: libfaulty.so }\n\
        endpoints:\n  \
        guarded: { path: /guarded, plugin: control, hooks: [hello] }\n  \
        open: { path: /open, plugin: auth, hooks: [] }\n  \
        control: { path: /control, plugin: control, hooks: [] }\n";
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), yaml).display().to_string();
    let out = backworks(&["validate", "-c", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("plugin `hello`: `hooks:` lists before_request")
            && stderr.contains("which the plugin does not implement; it declares no hooks"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning:")
            && stderr.contains("plugin `auth`: the plugin implements before_request"),
        "{stderr}"
    );
    let listed = backworks(&[
        "plugin",
        "list",
        "-c",
        &config,
        "--json",
        "--admin-url",
        "http://127.0.0.1:9",
    ]);
    let listed: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("plugin list --json");
    let auth = listed["plugins"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "auth"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        auth["hooks_implemented"],
        serde_json::json!(["before_request", "after_response"]),
        "{listed}"
    );
    assert_eq!(auth["hooks_enabled"], serde_json::json!([]), "{listed}");

    let server = Server::start(yaml);
    let http = client();
    let guarded = http.get(server.url("/guarded")).send().await.unwrap();
    assert_eq!(
        guarded.status(),
        503,
        "fails closed, never served without its hook"
    );
    assert_eq!(
        http.get(server.url("/control"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let logs = server.logs();
    assert!(
        logs.contains("plugin `hello` is listed for hooks it does not implement"),
        "{logs}"
    );
    assert!(
        logs.contains("plugin implements before_request but is not subscribed to it"),
        "{logs}"
    );
}

/// Finding 3 for a process plugin: its manifest, not the yaml, says which hooks it answers.
#[tokio::test]
async fn a_process_plugin_listed_for_a_hook_its_manifest_lacks_does_not_start() {
    let report = root().join("example-plugins/python/report.py");
    let faults = FaultServer::start(
        &format!(
            "\n  report:\n    command: [python3, \"{}\"]\n    hooks: [before_request]\n",
            report.display()
        ),
        "  r: { path: /r, plugin: control, hooks: [report] }\n",
    )
    .await;
    let entry = faults.plugin("report").await;
    assert_eq!(entry["state"], "error", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not implement"),
        "{entry}"
    );
    assert_eq!(faults.get("/r").await.status, 503);
    faults.assert_control_serves().await;
}

/// Finding 6: a plugin whose `initialize` fails with a message repeating a value from the
/// environment, and a plugin whose file is missing: public bodies and `/health` carry neither the
/// value nor the path; the log and the admin API carry the reason with the value redacted.
#[tokio::test]
async fn secrets_and_internals_stay_out_of_public_bodies() {
    const SECRET: &str = "hunter2-s3cr3t-value";
    let yaml = "plugin_dirs: [\"{{plugins}}\"]\nplugins:\n  \
        leaky: { path: libfaulty.so, config: { sleep_ms: \"${SEAM_SECRET}\" } }\n  \
        gone: { path: /srv/hidden/place/libgone.so }\n  \
        control: { path: libfaulty.so }\n\
        endpoints:\n  \
        leaky: { path: /leaky, plugin: leaky }\n  \
        gone: { path: /gone, plugin: gone }\n  \
        control: { path: /control, plugin: control }\n";
    let server = Server::start_with_env(yaml, &[("SEAM_SECRET", SECRET)]);
    let http = client();
    for path in ["/leaky", "/gone", "/health", "/ready"] {
        let res = http.get(server.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        for internal in [SECRET, "/srv/hidden", "invalid type", "sleep_ms"] {
            assert!(
                !body.contains(internal),
                "{path} ({status}) shows {internal}: {body}"
            );
        }
        if path == "/leaky" || path == "/gone" {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(status, 503);
            assert_eq!(body["error"]["kind"], "unavailable", "{body}");
            assert!(body["error"]["request_id"].is_string(), "{body}");
        }
    }
    let admin: serde_json::Value =
        crate::support::get_json(server.admin_url("/_backworks/plugins/leaky")).await;
    let reason = admin["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("sleep_ms") && reason.contains("[redacted]") && !reason.contains(SECRET),
        "{admin}"
    );
    assert_eq!(
        http.get(server.url("/control"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let logs = server.logs();
    assert!(!logs.contains(SECRET), "the log shows the secret:\n{logs}");
    assert!(logs.contains("[redacted]"), "{logs}");
}

/// A plugin's own client error (4xx) keeps its message, redacted; a request id the client sent
/// comes back in the body.
#[tokio::test]
async fn client_errors_keep_their_message_and_the_request_id() {
    let faults = FaultServer::start(
        "\n  picky:\n    path: libfaulty.so\n    config: { error: { kind: bad_request, message: \"field `n` is missing\" } }\n",
        "  p: { path: /p, plugin: picky, hooks: [] }\n",
    )
    .await;
    let answer = faults.get("/p").await;
    assert_error(&answer, 400, "picky", "bad_request");
    assert_eq!(message(&answer), "field `n` is missing");
    let res = client()
        .get(faults.server.url("/p"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "trace-42", "{body}");
    faults.assert_control_serves().await;
}

/// Issue #9: every error kind a plugin can return, through the ABI (in process) and through the
/// wire protocol (`isolation: process`), arrives with its kind name and status: one table, the
/// SDK's `ErrorKind`, on both sides of both boundaries.
#[tokio::test]
async fn every_error_kind_crosses_the_abi_and_the_wire_unchanged() {
    use backworks_plugin_sdk::ErrorKind;
    let mut plugins = String::new();
    let mut endpoints = String::new();
    for kind in ErrorKind::ALL {
        let name = kind.name();
        let status = if *kind == ErrorKind::Status {
            ", status: 418"
        } else {
            ""
        };
        for (suffix, isolation) in [("abi", ""), ("wire", "\n    isolation: process")] {
            plugins.push_str(&format!(
                "\n  {name}-{suffix}:\n    path: libfaulty.so{isolation}\n    \
                 config: {{ error: {{ kind: {name}, message: \"m\"{status} }} }}\n"
            ));
            endpoints.push_str(&format!(
                "  {name}-{suffix}: {{ path: /{name}/{suffix}, plugin: {name}-{suffix}, hooks: [] }}\n"
            ));
        }
    }
    let faults = FaultServer::start(&plugins, &endpoints).await;
    for kind in ErrorKind::ALL {
        let expected = if *kind == ErrorKind::Status {
            418
        } else {
            kind.status()
        };
        for suffix in ["abi", "wire"] {
            let answer = faults.get(&format!("/{}/{suffix}", kind.name())).await;
            assert_error(
                &answer,
                expected,
                &format!("{}-{suffix}", kind.name()),
                kind.name(),
            );
        }
    }
    faults.assert_control_serves().await;
}

/// A hook's deliberate 4xx (an auth check's 401 returned as an error) is its answer, not a
/// failure: `on_failure: skip` does not let the request through.
#[tokio::test]
async fn a_hooks_deliberate_401_is_answered_even_with_skip() {
    let faults = behind(
        "    hooks: [before_request]\n    on_failure: { before_request: skip }\n    \
         config: { error: { kind: unauthorized, message: \"no key\" }, apply_to: [before_request] }\n",
    )
    .await;
    let answer = faults.get("/t").await;
    assert_error(&answer, 401, "hook", "unauthorized");
    assert_eq!(message(&answer), "no key");
    assert_eq!(target_calls(&faults).await, 0);
    assert_eq!(hook_failures(&faults, "skipped").await, 0.0);
    faults.assert_control_serves().await;
}

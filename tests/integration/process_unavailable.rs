//! A process plugin without a child to call: no answer to the handshake, an `init` that fails, a
//! crash loop past the restart limit, a restart still waiting; an error state or a restart and
//! 503 `unavailable` at once, never a host that stops serving (unless the plugin is important).

use serde_json::{Value, json};

use crate::child::{QUICK_RESTART, fixture, python};
use crate::observe::{FaultServer, admin, assert_error, metric};
use crate::support::serve_until_exit;

#[tokio::test]
async fn a_child_that_never_answers_the_handshake_is_an_error_and_answers_503() {
    let ps = FaultServer::start(
        &format!(
            r#"
  mute:
    command: {}
    handshake_timeout_ms: 500
"#,
            python(fixture("no_handshake.py"), &[])
        ),
        r#"
  mute: { path: /mute, plugin: mute, hooks: [] }
"#,
    )
    .await;
    let entry = ps.plugin("mute").await;
    assert_eq!(entry["state"], "error", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no answer to the handshake within 500ms"),
        "{entry}"
    );
    assert!(
        admin::event_kinds(&entry).contains(&"failed".to_owned()),
        "{entry}"
    );
    let answer = ps.get("/mute").await;
    assert_error(&answer, 503, "mute", "unavailable");
    assert!(
        ps.detail(&answer).await.contains("handshake"),
        "{}",
        answer.body
    );
    let health = ps.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "degraded", "{}", health.body);
    ps.assert_control_serves().await;
}

#[test]
fn an_important_plugin_that_never_answers_the_handshake_stops_start_up() {
    let (status, stderr) = serve_until_exit(&format!(
        "plugins:\n  vital:\n    command: {}\n    important: true\n    \
         handshake_timeout_ms: 500\nendpoints:\n  vital: {{ path: /vital, plugin: vital }}\n",
        python(fixture("no_handshake.py"), &[])
    ));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("important plugin `vital` cannot start") && stderr.contains("handshake"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_plugin_that_crashes_in_initialize_fails_its_start() {
    // docs/protocol.md §9: an `init` that fails (here: the child exits during it) fails the start;
    // only a restart's failed handshake counts as a crash. So no restart loop: an error state.
    let ps = FaultServer::start(
        &format!(
            r#"
  doomed:
    path: libfaulty.so
    isolation: process
{QUICK_RESTART}    config: {{ crash_on_init: true }}
"#
        ),
        r#"
  doomed: { path: /doomed, plugin: doomed, hooks: [] }
"#,
    )
    .await;
    let entry = ps.plugin("doomed").await;
    assert_eq!(entry["state"], "error", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("child exited with status 3 during the handshake"),
        "{entry}"
    );
    assert!(
        reason.contains("crash_on_init"),
        "the last log line: {entry}"
    );
    assert_eq!(entry[admin::PROCESS]["state"], "stopped", "{entry}");
    assert_eq!(entry[admin::PROCESS]["restarts"], 0, "{entry}");
    assert!(
        admin::event_kinds(&entry).contains(&"failed".to_owned()),
        "{entry}"
    );
    let answer = ps.get("/doomed").await;
    assert_error(&answer, 503, "doomed", "unavailable");
    ps.assert_control_serves().await;
}

/// Waits until `plugin` gives up restarting, and checks what it shows then: state `error` with
/// `reason`, the events crashed, restarted, gave_up, and 503 `unavailable` at `path`.
async fn assert_gave_up(ps: &FaultServer, plugin: &str, path: &str, reason: &str) -> Value {
    ps.wait_for(&format!("{plugin} to give up"), || async move {
        ps.plugin(plugin).await[admin::PROCESS]["state"] == "gave_up"
    })
    .await;
    let entry = ps.plugin(plugin).await;
    assert_eq!(entry["state"], "error", "{entry}");
    assert_eq!(entry["reason"], reason, "{entry}");
    assert_eq!(entry[admin::PROCESS]["pid"], Value::Null, "{entry}");
    assert_eq!(entry[admin::PROCESS]["crashes"], 2, "{entry}");
    assert_eq!(entry[admin::PROCESS]["restarts"], 1, "{entry}");
    let kinds = admin::event_kinds(&entry);
    let course: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| matches!(*k, "crashed" | "restarted" | "gave_up"))
        .collect();
    assert_eq!(
        course,
        ["crashed", "restarted", "crashed", "gave_up"],
        "{entry}"
    );
    assert_eq!(admin::event_details(&entry, "gave_up"), [reason], "{entry}");
    let answer = ps.get(path).await;
    assert_error(&answer, 503, plugin, "unavailable");
    assert!(ps.detail(&answer).await.contains(reason), "{}", answer.body);
    assert_eq!(
        ps.metric(metric::CRASHES, &[("plugin", plugin)]).await,
        Some(2.0)
    );
    assert_eq!(
        ps.metric(
            "backworks_plugin_state",
            &[("plugin", plugin), ("state", "error")]
        )
        .await,
        Some(1.0)
    );
    ps.assert_control_serves().await;
    entry
}

#[tokio::test]
async fn a_plugin_that_crashes_on_every_call_gives_up_after_its_limit() {
    let ps = FaultServer::start(
        r#"
  crasher:
    path: libfaulty.so
    isolation: process
    breaker: { enabled: false }
    restart: { max_restarts: 2, initial_backoff_ms: 50, window_ms: 60000 }
    config: { segfault: true }
"#,
        r#"
  crasher: { path: /crasher, plugin: crasher, hooks: [] }
"#,
    )
    .await;
    let answer = ps.get("/crasher").await;
    assert_error(&answer, 502, "crasher", "crashed");
    ps.restarted("crasher", 1).await;
    let answer = ps.get("/crasher").await;
    assert_error(&answer, 502, "crasher", "crashed");
    let entry = assert_gave_up(
        &ps,
        "crasher",
        "/crasher",
        "crashed 2 times in 60s; not restarting",
    )
    .await;
    assert_eq!(
        entry[admin::PROCESS]["last_crash"],
        "child exited with signal 11 (SIGSEGV)"
    );
}

#[tokio::test]
async fn a_child_that_dies_after_every_start_gives_up_after_its_limit() {
    // A command that answers the handshake, then exits: a crash loop without any request.
    let ps = FaultServer::start(
        r#"
  flapper:
    command:
      - sh
      - -c
      - |
        read line
        echo '{"jsonrpc":"2.0","id":1,"result":{"protocol":"1.0","name":"flapper","features":["handle"]}}'
        read line
        echo '{"jsonrpc":"2.0","id":2,"result":{}}'
        sleep 0.1
        exit 7
    restart: { max_restarts: 2, initial_backoff_ms: 50, window_ms: 60000 }
"#,
        r#"
  flapper: { path: /flapper, plugin: flapper, hooks: [] }
"#,
    )
    .await;
    let entry = assert_gave_up(
        &ps,
        "flapper",
        "/flapper",
        "crashed 2 times in 60s; not restarting",
    )
    .await;
    assert_eq!(
        entry[admin::PROCESS]["last_crash"],
        "child exited with status 7"
    );
}

#[tokio::test]
async fn calls_while_the_child_is_restarting_answer_503_at_once() {
    // A backoff far longer than the test: the plugin stays down after its crash.
    let ps = FaultServer::start(
        r#"
  resting:
    path: libfaulty.so
    isolation: process
    breaker: { enabled: false }
    restart: { initial_backoff_ms: 600000, max_backoff_ms: 600000 }
    config: { exit: 2, only_path_suffix: /bad }
"#,
        r#"
  resting: { path: "/resting/{what}", plugin: resting, hooks: [] }
"#,
    )
    .await;
    let answer = ps.get("/resting/bad").await;
    assert_error(&answer, 502, "resting", "crashed");
    assert!(
        ps.detail(&answer)
            .await
            .contains("child exited with status 2"),
        "{}",
        answer.body
    );
    for _ in 0..3 {
        let answer = ps.get("/resting/ok").await;
        assert_error(&answer, 503, "resting", "unavailable");
        assert!(
            ps.detail(&answer)
                .await
                .contains("plugin `resting` is restarting"),
            "{}",
            answer.body
        );
        ps.assert_control_serves().await;
    }
    let entry = ps.plugin("resting").await;
    let process = &entry[admin::PROCESS];
    assert_eq!(process["state"], "restarting", "{entry}");
    assert_eq!(process["pid"], Value::Null, "{entry}");
    assert_eq!(
        (&process["crashes"], &process["restarts"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(entry["stats"]["errors"]["unavailable"], 3, "{entry}");
}

//! Python plugins in child processes: the example `report` plugin (a hook, endpoints,
//! notifications) and the echo fixture, with binary bodies and many calls in flight on one child.

use serde_json::{Value, json};

use crate::child::{fixture, python};
use crate::observe::{FaultServer, assert_error};
use crate::support::root;

/// The Python example plugin and the echo fixture, with the control endpoint counted by the
/// report plugin's `after_response` hook at `/counted/{n}`.
async fn python_server() -> FaultServer {
    FaultServer::start(
        &format!(
            r#"
  report:
    command: {}
    hooks: [after_response]
    config: {{ channels: [ops, billing] }}
  echo:
    command: {}
"#,
            python(root().join("example-plugins/python/report.py"), &[]),
            python(fixture("echo.py"), &[])
        ),
        r#"
  counted: { path: "/counted/{n}", plugin: control, hooks: [report] }
  report: { path: /report, methods: [GET], plugin: report, hooks: [] }
  notify: { path: /notify, methods: [POST], plugin: report, hooks: [] }
  echo: { path: /echo, methods: [POST], plugin: echo, hooks: [] }
"#,
    )
    .await
}

#[tokio::test]
async fn the_python_report_plugin_counts_responses_and_takes_notifications() {
    let ps = python_server().await;
    let entry = ps.plugin("report").await;
    assert_eq!(entry["state"], "active", "{entry}");
    assert_eq!(entry["kind"], "command", "{entry}");
    assert_eq!(entry["isolation"], "process", "{entry}");
    assert_eq!(entry["version"], "0.1.0", "{entry}");

    for n in 1..=3 {
        let answer = ps.get(&format!("/counted/{n}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["ok"], true);
    }
    let report = ps.get("/report").await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(report.body["responses"], 3, "{}", report.body);
    assert_eq!(
        report.body["by_class"],
        json!({"2xx": 3}),
        "{}",
        report.body
    );
    assert_eq!(
        report.body["by_status"],
        json!({"200": 3}),
        "{}",
        report.body
    );
    assert_eq!(
        report.body["by_path"],
        json!({"/counted/1": 1, "/counted/2": 1, "/counted/3": 1}),
        "{}",
        report.body
    );

    let answer = ps
        .post_json("/notify", r#"{"channel": "ops", "message": "disk 91%"}"#)
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body, json!({"id": 1, "channel": "ops"}));
    ps.log_line(&["notification for ops: disk 91%", r#"plugin="report""#])
        .await;

    let answer = ps.post_json("/notify", "{oops").await;
    assert_error(&answer, 400, "report", "bad_request");
    assert!(
        ps.detail(&answer).await.contains("invalid JSON body"),
        "{}",
        answer.body
    );

    let answer = ps
        .post_json("/notify", r#"{"channel": "sales", "message": "hi"}"#)
        .await;
    assert_error(&answer, 422, "report", "status");
    assert!(
        ps.detail(&answer).await.contains("unknown channel 'sales'"),
        "{}",
        answer.body
    );

    let report = ps.get("/report").await;
    let notifications = report.body["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(notifications.len(), 1, "{}", report.body);
    assert_eq!(notifications[0]["channel"], "ops");
    assert_eq!(notifications[0]["message"], "disk 91%");
    assert_eq!(notifications[0]["severity"], "info");
    // Only the counted endpoint goes through the hook.
    assert_eq!(report.body["responses"], 3, "{}", report.body);
    ps.assert_control_serves().await;
}

#[tokio::test]
async fn binary_bodies_round_trip_through_a_python_child() {
    let ps = python_server().await;
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let answer = ps
        .send(
            reqwest::Method::POST,
            "/echo",
            every_byte.clone(),
            Some("application/octet-stream"),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.bytes, every_byte);
    assert_eq!(answer.headers["content-type"], "application/octet-stream");
    let empty = ps
        .send(reqwest::Method::POST, "/echo", Vec::new(), None)
        .await;
    assert_eq!((empty.status, empty.bytes.len()), (200, 0));
    ps.assert_control_serves().await;
}

#[tokio::test]
async fn many_calls_in_flight_on_one_python_child_each_get_their_own_answer() {
    let ps = python_server().await;
    let echo_pid = ps.pid("echo").await;
    let report_pid = ps.pid("report").await;
    let mut echoes = tokio::task::JoinSet::new();
    let mut notes = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (http, echo, notify) = (
            ps.http.clone(),
            ps.server.url("/echo"),
            ps.server.url("/notify"),
        );
        let body = format!("request {i}: {}", "x".repeat(i * 7));
        let note = format!(r#"{{"channel": "billing", "message": "note {i}"}}"#);
        echoes.spawn({
            let http = http.clone();
            async move {
                let res = http
                    .post(echo)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("POST /echo");
                let status = res.status().as_u16();
                (status, res.text().await.expect("echo body") == body)
            }
        });
        notes.spawn(async move {
            let res = http
                .post(notify)
                .header("content-type", "application/json")
                .body(note)
                .send()
                .await
                .expect("POST /notify");
            let status = res.status().as_u16();
            let body: Value = res.json().await.expect("notify JSON");
            (status, body["id"].as_u64())
        });
    }
    let echoes = echoes.join_all().await;
    let notes = notes.join_all().await;
    assert!(
        echoes.iter().all(|&(status, same)| status == 200 && same),
        "{echoes:?}"
    );
    assert!(notes.iter().all(|&(status, _)| status == 202), "{notes:?}");
    let mut ids: Vec<u64> = notes.iter().filter_map(|&(_, id)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>(), "each notification once");
    // One child each served them all.
    assert_eq!(ps.pid("echo").await, echo_pid);
    assert_eq!(ps.pid("report").await, report_pid);
    assert_eq!(ps.plugin("echo").await["stats"]["calls"], 50);
    ps.assert_control_serves().await;
}

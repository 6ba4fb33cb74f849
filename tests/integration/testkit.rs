//! The conformance testkit (`backworks-plugin-testkit`) and `backworks plugin check`: every example plugin (Rust, C, Python) passes, in process and isolated; broken fixtures fail with a message an author understands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backworks_plugin_testkit::sdk::serde_json::{Value, json};
use backworks_plugin_testkit::sdk::{HookAction, Request, Response};
use backworks_plugin_testkit::{CallError, Conformance, Outcome, Report, TestHost};

use crate::support;

/// The `backworks` binary under test: the runner of isolated plugins.
fn runner() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backworks"))
}

fn report_py() -> String {
    support::root()
        .join("example-plugins/python/report.py")
        .display()
        .to_string()
}

/// Asserts that check `name` ended as `outcome` and that its detail contains each of `needles`.
#[track_caller]
fn assert_check(report: &Report, name: &str, outcome: Outcome, needles: &[&str]) {
    let check = report
        .check(name)
        .unwrap_or_else(|| panic!("no check `{name}` in:\n{report}"));
    assert_eq!(check.outcome, outcome, "check `{name}` in:\n{report}");
    for needle in needles {
        assert!(
            check.detail.contains(needle),
            "check `{name}` does not say {needle:?}:\n{report}"
        );
    }
}

#[test]
fn every_rust_example_plugin_passes_the_battery_in_process() {
    // The runner lets the memory check measure each library alone in a child process: this
    // test process's own memory is also every other test's.
    let hello = Conformance::library(support::rust_plugin("hello"))
        .runner(runner())
        .config(json!({"greeting": "Hi"}))
        .bad_config(json!({"greeting": 42}))
        .bad_config(json!({"greting": "typo"}))
        .endpoint("GET", "/hello/ana")
        .endpoint("POST", "/echo")
        .run();
    hello.assert_passed();
    assert_check(
        &hello,
        "metadata",
        Outcome::Pass,
        &["hello 0.1.0", "panic = unwind"],
    );
    assert_check(
        &hello,
        "endpoint GET /hello/ana",
        Outcome::Pass,
        &["answered 200"],
    );
    assert_check(
        &hello,
        "bad config",
        Outcome::Pass,
        &["{\"greeting\":42} refused by the config schema (/greeting: 42 is not of types"],
    );
    assert_check(
        &hello,
        "memory",
        Outcome::Pass,
        &["rounds of 2000 GET /hello/ana calls"],
    );

    let kv = Conformance::library(support::rust_plugin("kv_store"))
        .runner(runner())
        .config(json!({"max_keys": 100}))
        .bad_config(json!({"max_keys": "many"}))
        .endpoint("PUT", "/kv/conformance")
        .endpoint("GET", "/kv")
        .endpoint("POST", "/counter/calls")
        .endpoint("GET", "/kv/missing")
        .run();
    kv.assert_passed();
    // A 404 of the plugin's own is an answer, not a failure.
    assert_check(&kv, "endpoint GET /kv/missing", Outcome::Pass, &["404"]);

    let request_id = Conformance::library(support::rust_plugin("request_id"))
        .runner(runner())
        .config(json!({"require_api_key": "k"}))
        .bad_config(json!({"require_api_key": 5}))
        .run();
    request_id.assert_passed();
    // A hooks plugin: the load checks repeat its before_request hook (which answers 401 here).
    assert_check(
        &request_id,
        "endpoints",
        Outcome::Skip,
        &["no endpoint declared"],
    );
    assert_check(&request_id, "hook before_request", Outcome::Pass, &["401"]);
    assert_check(&request_id, "hook after_response", Outcome::Pass, &["200"]);
    assert_check(
        &request_id,
        "concurrency",
        Outcome::Pass,
        &["before_request"],
    );

    let clock = Conformance::library(support::rust_plugin("async_clock"))
        .runner(runner())
        .endpoint("GET", "/sleep/0")
        .endpoint("GET", "/sleep/20")
        .endpoint("GET", "/tcp-echo")
        .calls(500)
        .run();
    clock.assert_passed();
}

#[test]
fn the_c_example_passes_and_its_schema_refuses_a_config_it_does_not_take() {
    let report = Conformance::library(support::c_plugin("hello"))
        .runner(runner())
        .endpoint("GET", "/hello/c")
        .run();
    report.assert_passed();
    assert_check(&report, "metadata", Outcome::Pass, &["c-hello"]);
    assert_check(
        &report,
        "bad config",
        Outcome::Pass,
        &["42 refused by the config schema (/: 42 is not of type \"object\")"],
    );
}

#[test]
fn the_python_example_passes_through_the_wire_protocol() {
    let report = Conformance::command("python3", [report_py()])
        .runner(runner())
        .config(json!({"channels": ["ops"]}))
        .bad_config(json!({"channels": []}))
        .bad_config(json!({"max_notifications": "lots"}))
        .endpoint("GET", "/report")
        .endpoint("POST", "/notify")
        .run();
    report.assert_passed();
    assert!(report.isolated);
    assert_check(
        &report,
        "metadata",
        Outcome::Pass,
        &["manifest: report", "after_response"],
    );
    // POST /notify without a body is the plugin's own 400.
    assert_check(&report, "endpoint POST /notify", Outcome::Pass, &["400"]);
    assert_check(&report, "hook after_response", Outcome::Pass, &[]);
}

#[test]
fn a_library_passes_under_process_isolation_and_its_child_is_measured() {
    let report = Conformance::library(support::rust_plugin("hello"))
        .isolated(true)
        .runner(runner())
        .endpoint("GET", "/hello/ana")
        .run();
    report.assert_passed();
    assert!(report.isolated);
    assert_check(&report, "memory", Outcome::Pass, &["resident memory"]);
}

#[test]
fn test_host_calls_an_endpoint_hooks_health_and_shutdown() {
    let host = TestHost::library(support::rust_plugin("hello"))
        .config(json!({"greeting": "Hi"}))
        .start()
        .expect("hello starts");
    assert_eq!(host.metadata().name, "hello");
    let response = host.call(Request::new("GET", "/hello/ana")).unwrap();
    assert_eq!(response.status, 200);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body, json!({"message": "Hi, ana!"}));
    let error = host.call(Request::new("GET", "/nope")).unwrap_err();
    assert_eq!(error.status(), 404, "{error}");
    assert!(host.health().as_str() == "healthy");
    host.shutdown().unwrap();

    let hooks = TestHost::library(support::rust_plugin("request_id"))
        .start()
        .unwrap();
    let request = Request::new("GET", "/anything");
    let Ok(HookAction::ContinueWith(with_id)) = hooks.before_request(&request) else {
        panic!("request-id gives a request without an id one")
    };
    let id = with_id.header("x-request-id").expect("an id").to_owned();
    let response = hooks.after_response(&with_id, Response::new(204)).unwrap();
    assert_eq!(response.headers.get("x-request-id"), Some(id.as_str()));
}

#[test]
fn test_host_runs_a_command_plugin_and_an_isolated_library() {
    let python = TestHost::command("python3", [report_py()])
        .runner(runner())
        .start()
        .expect("report.py starts");
    assert_eq!(python.metadata().name, "report");
    assert!(python.child_pid().is_some());
    let response = python.call(Request::new("GET", "/report")).unwrap();
    assert_eq!(response.status, 200);
    // Without a runner named (and none on PATH in the tests), the command is started as is.
    let direct = TestHost::command("python3", [report_py()]).start().unwrap();
    assert_eq!(
        direct.call(Request::new("GET", "/report")).unwrap().status,
        200
    );

    let isolated = TestHost::library(support::rust_plugin("hello"))
        .isolated()
        .runner(runner())
        .start()
        .unwrap();
    let child = isolated.child_pid().expect("a child process");
    assert_ne!(child, std::process::id());
    let response = isolated.call(Request::new("GET", "/hello/bo")).unwrap();
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn test_host_works_inside_an_async_test_too() {
    let host = TestHost::library(support::rust_plugin("hello"))
        .start()
        .unwrap();
    let response = host.call(Request::new("GET", "/hello/ana")).unwrap();
    assert_eq!(response.status, 200);
    // The plugin itself, awaited on this test's runtime.
    let response = host.plugin().handle(Request::new("GET", "/hello/bo")).await;
    assert_eq!(response.unwrap().status, 200);
    // The battery too, and both are dropped inside this runtime without a panic.
    Conformance::library(support::rust_plugin("hello"))
        .runner(runner())
        .endpoint("GET", "/hello/ana")
        .calls(100)
        .run()
        .assert_passed();
}

#[test]
fn a_start_error_is_the_hosts_and_a_hang_is_a_timeout() {
    let error = TestHost::library(support::c_fixture("wrong_abi_major"))
        .start()
        .unwrap_err();
    assert!(
        error.to_string().contains("ABI 2.0 is incompatible"),
        "{error}"
    );

    let host = TestHost::library(support::rust_plugin("faulty"))
        .config(json!({"sleep_ms": 600_000}))
        .deadline(Duration::from_secs(1))
        .start()
        .unwrap();
    let error = host.call(Request::new("GET", "/x")).unwrap_err();
    assert!(matches!(error, CallError::Timeout(_)), "{error}");
}

#[test]
fn a_panicking_plugin_fails_with_the_panic_and_what_to_return_instead() {
    let report = Conformance::library(support::rust_plugin("broken_panic"))
        .bad_config(json!({"panic_in": "initialize"}))
        .endpoint("GET", "/x/panic")
        .run();
    assert!(!report.passed());
    assert_check(
        &report,
        "bad config",
        Outcome::Fail,
        &[
            "initialize with the bad config panicked",
            "must return PluginError::Config",
            "broken-panic: initialize exploded",
        ],
    );
    assert_check(
        &report,
        "endpoint GET /x/panic",
        Outcome::Fail,
        &["GET /x/panic panicked", "broken-panic: handle exploded"],
    );
    // The repeated calls are not blamed for what the endpoint does on its own.
    assert_check(&report, "concurrency", Outcome::Skip, &["fails on its own"]);
    assert_check(
        &report,
        "hostile input",
        Outcome::Fail,
        &["handle with a body that is not UTF-8", "panicked"],
    );
    assert_check(&report, "shutdown", Outcome::Pass, &[]);
    let message = std::panic::catch_unwind(|| report.assert_passed())
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
    assert!(
        message.starts_with("the plugin failed 3 conformance checks:"),
        "{message}"
    );
    assert!(message.contains("✗ bad config: initialize with the bad config panicked"));

    // A hook that panics fails the hook's check.
    let report = Conformance::library(support::rust_plugin("broken_panic"))
        .config(json!({"panic_in": "before_request"}))
        .run();
    assert_check(
        &report,
        "hook before_request",
        Outcome::Fail,
        &["broken-panic: before_request exploded"],
    );
    assert_check(&report, "hook after_response", Outcome::Pass, &[]);
}

#[test]
fn faulty_plugins_fail_the_check_that_catches_them() {
    let faulty = || Conformance::library(support::rust_plugin("faulty")).endpoint("GET", "/x");

    // One MiB kept per call: the memory check (a few calls per round are enough to see it). In a
    // child, so that the memory it keeps is not this process's, where other checks measure.
    let report = faulty()
        .config(json!({"hog_mb": 1}))
        .calls(8)
        .isolated(true)
        .runner(runner())
        .run();
    assert_check(
        &report,
        "memory",
        Outcome::Fail,
        &["memory grows with every call", "a leak"],
    );

    let report = faulty().config(json!({"health": "unhealthy"})).run();
    assert_check(
        &report,
        "health",
        Outcome::Fail,
        &["reports itself unhealthy"],
    );

    let report = faulty()
        .config(json!({"error": {"kind": "unavailable", "message": "db down"}}))
        .run();
    assert_check(
        &report,
        "endpoint GET /x",
        Outcome::Fail,
        &["failed with 503 unavailable: db down"],
    );

    let report = faulty()
        .config(json!({"sleep_ms": 600_000, "only_path_suffix": "/x"}))
        .deadline(Duration::from_secs(1))
        .run();
    assert_check(
        &report,
        "endpoint GET /x",
        Outcome::Fail,
        &["GET /x hung", "await"],
    );

    // A crash costs only the child, and is named.
    let report = faulty()
        .config(json!({"segfault": true, "only_path_suffix": "/x"}))
        .isolated(true)
        .runner(runner())
        .run();
    assert_check(
        &report,
        "endpoint GET /x",
        Outcome::Fail,
        &["crashed the plugin's process"],
    );
}

#[test]
fn broken_c_libraries_fail_with_what_to_fix() {
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "wrong_abi_major",
            "metadata",
            &["ABI 2.0 is incompatible", "rebuild the plugin"],
        ),
        (
            "no_metadata",
            "metadata",
            &["not a Backworks plugin", "BW_PLUGIN_METADATA"],
        ),
        (
            "panic_abort",
            "metadata",
            &["panic = \"abort\"", "isolation: process"],
        ),
        (
            "missing_symbol",
            "initialize",
            &["does not export `backworks_plugin`"],
        ),
        (
            "bad_utf8_header",
            "endpoint GET /x",
            &["not UTF-8", "the host refuses"],
        ),
    ];
    for (fixture, check, needles) in cases {
        let report = Conformance::library(support::c_fixture(fixture))
            .endpoint("GET", "/x")
            .run();
        assert!(!report.passed(), "{fixture} passed:\n{report}");
        assert_check(&report, check, Outcome::Fail, needles);
    }
}

/// `backworks plugin check ARGS…`: its exit code and its standard output.
fn plugin_check(args: &[&str]) -> (i32, String) {
    let mut all = vec!["plugin", "check"];
    all.extend(args);
    let output = support::backworks(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    (code, stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn plugin_check_passes_every_example_and_exits_0() {
    let hello = support::rust_plugin("hello");
    let (code, out) = plugin_check(&[
        path(&hello),
        "--config",
        r#"{"greeting":"Hi"}"#,
        "--endpoint",
        "GET /hello/ana",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✓ endpoint GET /hello/ana: answered 200"),
        "{out}"
    );
    assert!(
        out.contains("– hooks: the plugin declares no hooks"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("10 passed, 0 failed, 1 skipped"),
        "{out}"
    );

    let (code, out) = plugin_check(&[path(&hello), "--isolated", "--endpoint", "GET /hello/x"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!(
        "conformance of {}, in a child process",
        hello.display()
    )));

    let c = support::c_plugin("hello");
    let (code, out) = plugin_check(&[path(&c), "--endpoint", "GET /c"]);
    assert_eq!(code, 0, "{out}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("report.yaml");
    std::fs::write(&config, "channels: [ops, billing]\nmax_notifications: 10\n").unwrap();
    let script = report_py();
    let (code, out) = plugin_check(&[
        "--config",
        path(&config),
        "--endpoint",
        "GET /report",
        "--",
        "python3",
        &script,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ metadata: manifest: report"), "{out}");
}

#[test]
fn plugin_check_fails_a_broken_plugin_with_exit_1_and_the_explanation() {
    let broken = support::rust_plugin("broken_panic");
    let (code, out) = plugin_check(&[
        path(&broken),
        "--bad-config",
        r#"{"panic_in":"initialize"}"#,
        "--endpoint",
        "GET /x/panic",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✗ bad config: initialize with the bad config panicked"),
        "{out}"
    );
    assert!(
        out.contains("✗ endpoint GET /x/panic: GET /x/panic panicked"),
        "{out}"
    );

    let (code, out) = plugin_check(&[path(&support::c_fixture("newer_sdk")), "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["checks"][0]["name"], "metadata");
    assert_eq!(report["checks"][0]["outcome"], "fail");
    let detail = report["checks"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("backworks-plugin-sdk 1.0.0"), "{detail}");
    assert_eq!(report["checks"][1]["outcome"], "skip");

    let output = support::backworks(&["plugin", "check", path(&broken), "--endpoint", "/x"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("write it as a method and a path"),
        "{stderr}"
    );
}

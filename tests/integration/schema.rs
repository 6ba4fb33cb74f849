//! Config schemas declared by plugins (Rust, C, Python, an ABI 1.0 C library): `validate` and
//! `serve` refuse a config that fails one at `file:line:column` with the schema's reason, the other
//! plugins serve; `${VAR}` values typed by the schema; a panicking schema entry.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Server, backworks, c_plugin, client, root, target_dir, write_config};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `backworks validate` on `yaml` (placeholders filled as for a server) with `env` set: exit
/// code and stderr.
fn validate(yaml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_backworks"))
        .args(["validate", "-c"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run backworks validate");
    (out.status.code(), text(&out.stderr))
}

async fn status_and_body(url: String) -> (u16, Value) {
    let res = client().get(&url).send().await.expect("GET");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn python(script: &str) -> String {
    format!("[python3, \"{}\"]", root().join(script).display())
}

/// The ABI 1.0 C library of `tests/fixtures/c-abi-1.0`, compiled once against today's header.
fn abi_1_0_plugin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = root().join("tests/fixtures/c-abi-1.0/abi_1_0.c");
            let dir = target_dir().join("c-plugins");
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("libabi_1_0.so");
            let tmp = dir.join(format!("abi_1_0.{}.tmp.so", std::process::id()));
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
            let built = Command::new(&cc)
                .args([
                    "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=c11",
                ])
                .arg("-I")
                .arg(root().join("plugin-sdk/include"))
                .arg("-o")
                .arg(&tmp)
                .arg(&src)
                .output()
                .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
            assert!(built.status.success(), "{}", text(&built.stderr));
            std::fs::rename(&tmp, &out).unwrap();
            out
        })
        .clone()
}

// Line 7, column 17 is the `42`.
const RUST_BAD: &str = r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  hello:
    path: libhello.so
    config:
      greeting: 42
  kv-store: { path: libkv_store.so }
endpoints:
  hello: { path: "/hello/{name}", plugin: hello }
  kv: { path: "/kv/{key}", methods: [GET, PUT], plugin: kv-store }
"#;

const RUST_REASON: &str = r#"backworks.yaml:7:17: plugin "hello": config field /greeting: 42 is not of types "null", "string""#;

#[test]
fn validate_refuses_a_config_that_fails_a_rust_plugins_schema() {
    let (code, stderr) = validate(RUST_BAD, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: ") && stderr.contains(RUST_REASON),
        "{stderr}"
    );
    // The other plugin's schema passes; no warning says a schema could not be read.
    assert!(!stderr.contains("kv-store"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn validate_accepts_the_demo_config_with_every_schema() {
    // The demo's own config: every example declares a schema now, and it must pass them.
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(root().join("backworks.yaml")).unwrap();
    let yaml = demo
        .replace("  - target/release\n", "  - \"{{plugins}}\"\n")
        .replace(
            "example-plugins/python/report.py",
            &root()
                .join("example-plugins/python/report.py")
                .display()
                .to_string(),
        );
    let config = write_config(dir.path(), &yaml);
    let out = backworks(&["validate", "-c", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("config schema"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_the_plugin_whose_config_fails_its_schema_and_serves_the_others() {
    let server = Server::start(RUST_BAD);
    let (status, body) = status_and_body(server.url("/hello/ana")).await;
    assert_eq!(status, 503, "{body}");
    let res = client()
        .put(server.url("/kv/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let logs = server.logs();
    assert!(logs.contains(RUST_REASON), "{logs}");
    // initialize never ran: the plugin's own check would say "invalid type".
    assert!(!logs.contains("invalid type"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_rust_plugins_child_reports_its_schema() {
    let yaml = r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  hello:
    path: libhello.so
    isolation: process
    config:
      greting: Hi
  kv-store: { path: libkv_store.so, isolation: process }
endpoints:
  hello: { path: "/hello/{name}", plugin: hello }
  kv: { path: "/kv/{key}", methods: [GET, PUT], plugin: kv-store }
"#;
    let server = Server::start(yaml);
    assert_eq!(status_and_body(server.url("/hello/ana")).await.0, 503);
    assert_eq!(status_and_body(server.url("/kv/none")).await.0, 404);
    let logs = server.logs();
    assert!(
        logs.contains(r#"backworks.yaml:8:7: plugin "hello": config: Additional properties are not allowed ('greting' was unexpected)"#),
        "{logs}"
    );
}

const C_BAD: &str = r#"
plugin_dirs: ["{{c}}", "{{plugins}}"]
plugins:
  c-hello:
    path: libhello.so
    config: { greeting: 42 }
  kv-store: { path: libkv_store.so }
endpoints:
  c: { path: /c, plugin: c-hello }
  kv: { path: "/kv/{key}", methods: [GET, PUT], plugin: kv-store }
"#;

const C_REASON: &str = r#"backworks.yaml:6:13: plugin "c-hello": config: Additional properties are not allowed ('greeting' was unexpected)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_plugins_metadata_schema_is_checked_by_validate_and_serve() {
    let c = c_plugin("hello");
    let yaml = C_BAD.replace("libhello.so", &c.display().to_string());
    let (code, stderr) = validate(&yaml, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(C_REASON), "{stderr}");

    let server = Server::start(&yaml);
    assert_eq!(status_and_body(server.url("/c")).await.0, 503);
    assert_eq!(status_and_body(server.url("/kv/none")).await.0, 404);
    assert!(server.logs().contains(C_REASON), "{}", server.logs());

    // Without the offending key it serves.
    let good = yaml.replace("config: { greeting: 42 }", "config: {}");
    assert_eq!(validate(&good, &[]).0, Some(0));
    let server = Server::start(&good);
    assert_eq!(status_and_body(server.url("/c")).await.0, 200);
}

const PY_TYPED: &str = r#"
plugins:
  typed:
    command: COMMAND
    config:
      port: ${TEST_PORT}
      debug: ${TEST_DEBUG:-false}
      ratio: "${TEST_RATIO:-0.25}"
      name: ${TEST_NAME:-x}
endpoints:
  typed: { path: /typed, plugin: typed }
"#;

fn typed_yaml() -> String {
    PY_TYPED.replace("COMMAND", &python("tests/fixtures/process/typed.py"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_and_booleans_from_the_environment_arrive_typed() {
    let env = [
        ("TEST_PORT", "8080"),
        ("TEST_DEBUG", "true"),
        ("TEST_NAME", "42"),
    ];
    let (code, stderr) = validate(&typed_yaml(), &env);
    assert_eq!(code, Some(0), "{stderr}");
    let server = Server::start_with_env(&typed_yaml(), &env);
    let (status, body) = status_and_body(server.url("/typed")).await;
    assert_eq!(status, 200, "{body}\n{}", server.logs());
    // The schema says string for `name`: "42" stays text.
    assert_eq!(
        body["config"],
        json!({"port": 8080, "debug": true, "ratio": 0.25, "name": "42"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_that_does_not_read_as_its_type_is_named_but_not_shown() {
    let env = [
        ("TEST_PORT", "80eighty-secret"),
        ("TEST_DEBUG", "maybe-secret"),
    ];
    let port = r#"backworks.yaml:6:13: plugin "typed": config field /port: `${TEST_PORT}` does not read as an integer"#;
    let debug = r#"backworks.yaml:7:14: plugin "typed": config field /debug: `${TEST_DEBUG:-false}` does not read as a boolean"#;
    let (code, stderr) = validate(&typed_yaml(), &env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(port) && stderr.contains(debug), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");

    let server = Server::start_with_env(&typed_yaml(), &env);
    assert_eq!(status_and_body(server.url("/typed")).await.0, 503);
    let logs = server.logs();
    assert!(logs.contains(port) && logs.contains(debug), "{logs}");
    assert!(!logs.contains("secret"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_field_points_at_the_config_map() {
    let yaml = typed_yaml().replace("      port: ${TEST_PORT}\n", "");
    // A block map is where its first key is.
    let reason = r#"backworks.yaml:6:7: plugin "typed": config: "port" is a required property"#;
    let (code, stderr) = validate(&yaml, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
    let server = Server::start(&yaml);
    assert_eq!(status_and_body(server.url("/typed")).await.0, 503);
    assert!(server.logs().contains(reason), "{}", server.logs());

    // No `config:` at all: the plugin's name is the place.
    let bare = format!(
        "plugins:\n  typed:\n    command: {}\nendpoints:\n  typed: {{ path: /typed, plugin: typed }}\n",
        python("tests/fixtures/process/typed.py")
    );
    let (code, stderr) = validate(&bare, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            r#"backworks.yaml:2:3: plugin "typed": config: "port" is a required property"#
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_declares_its_schema() {
    let yaml = format!(
        "plugins:\n  report:\n    command: {}\n    config:\n      channels: []\n      max_paths: 0\nendpoints:\n  r: {{ path: /report, plugin: report }}\n",
        python("example-plugins/python/report.py")
    );
    let (code, stderr) = validate(&yaml, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"backworks.yaml:5:17: plugin "report": config field /channels: [] has less than 1 item"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"backworks.yaml:6:18: plugin "report": config field /max_paths: 0 is less than the minimum of 1"#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abi_1_0_plugin_serves_and_its_metadata_schema_is_checked() {
    let old = abi_1_0_plugin();
    let yaml = |limit: &str| {
        format!(
            "plugins:\n  old:\n    path: {}\n    config: {{ limit: {limit} }}\nendpoints:\n  old: {{ path: /old, plugin: old }}\n",
            old.display()
        )
    };
    let inspected = backworks(&["plugin", "inspect", old.to_str().unwrap(), "--json"]);
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["abi"], "1.0", "{inspected}");

    assert_eq!(validate(&yaml("3"), &[]).0, Some(0));
    let server = Server::start(&yaml("3"));
    let res = client().get(server.url("/old")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "old");

    let (code, stderr) = validate(&yaml("\"x\""), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"plugin "old": config field /limit: "x" is not of type "integer""#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_schema_entry_refuses_its_plugin_only() {
    let yaml = r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  faulty: { path: libfaulty.so, config: {} }
  hello: { path: libhello.so }
endpoints:
  f: { path: /f, plugin: faulty }
  hello: { path: "/hello/{name}", plugin: hello }
"#;
    // Without the variable, faulty (which declares no schema) serves whatever its config.
    let server = Server::start(yaml);
    assert_eq!(status_and_body(server.url("/f")).await.0, 200);
    drop(server);

    let server = Server::start_with_env(yaml, &[("BACKWORKS_FAULTY_SCHEMA", "panic")]);
    assert_eq!(status_and_body(server.url("/f")).await.0, 503);
    let (status, body) = status_and_body(server.url("/hello/ana")).await;
    assert_eq!((status, &body["message"]), (200, &json!("Hello, ana!")));
    let logs = server.logs();
    assert!(
        logs.contains("its config schema cannot be used: its `config_schema` function failed")
            && logs.contains("faulty: config_schema panics on request"),
        "{logs}"
    );
}

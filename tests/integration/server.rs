//! The real server over HTTP: every example plugin's endpoints and hooks, the built-in, a C plugin,
//! panics answered with 500 while the host keeps serving, failed and disabled plugins, shutdown,
//! the request body limit and the admin token.

use serde_json::{Value, json};

use crate::support::{Server, c_plugin, client, rust_plugins};

const DEMO: &str = r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  request-id:
    path: librequest_id.so
    hooks: [before_request, after_response]
  hello:
    path: libhello.so
    config: { greeting: "Hello" }
  kv-store:
    path: libkv_store.so
  async-clock:
    path: libasync_clock.so
  broken-panic:
    path: libbroken_panic.so
  static:
    type: builtin
    config: { status: 200, body: { name: backworks } }
endpoints:
  hello: { path: "/hello/{name}", methods: [GET], plugin: hello }
  echo: { path: /echo, methods: [POST], plugin: hello }
  kv-item: { path: "/kv/{key}", methods: [GET, PUT, DELETE], plugin: kv-store }
  kv-list: { path: /kv, methods: [GET], plugin: kv-store }
  counter: { path: "/counter/{name}", methods: [POST], plugin: kv-store }
  sleep: { path: "/sleep/{ms}", methods: [GET], plugin: async-clock }
  tcp-echo: { path: /tcp-echo, methods: [GET], plugin: async-clock }
  boom: { path: "/boom/{what}", methods: [GET], plugin: broken-panic }
  version: { path: /version, plugin: static }
"#;

async fn json_of(res: reqwest::Response) -> Value {
    res.json().await.expect("JSON body")
}

#[tokio::test]
async fn hello_and_echo() {
    let server = Server::start(DEMO);
    let http = client();
    let res = http.get(server.url("/hello/ana")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(json_of(res).await, json!({"message": "Hello, ana!"}));

    let body: Vec<u8> = (0..=255u8).collect();
    let res = http
        .post(server.url("/echo"))
        .header("content-type", "application/x-bytes")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-bytes");
    assert_eq!(
        res.bytes().await.unwrap().to_vec(),
        body,
        "binary body round-trips"
    );

    // Routing belongs to the server: unknown paths 404, wrong methods 405, without a plugin call.
    assert_eq!(
        http.get(server.url("/nope")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        http.delete(server.url("/hello/ana"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

/// Endpoint requests go from the edge straight to their endpoint; everything else through the
/// router. Both must answer exactly as the router alone did, at every edge between them.
#[tokio::test]
async fn direct_dispatch_and_the_router_answer_alike() {
    let server = Server::start(
        r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  hello:
    path: libhello.so
  static:
    type: builtin
    config: { status: 200, body: { name: backworks } }
endpoints:
  hello: { path: "/hello/{name}", methods: [GET], plugin: hello }
  page: { path: "/{page}", methods: [GET, POST], plugin: static }
"#,
    );
    let http = client();
    let get = |path: &str| http.get(server.url(path)).send();
    // Served directly, the parameter percent-decoded as the router decodes it.
    let res = get("/hello/a%20b%C5%BC").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(json_of(res).await, json!({"message": "Hello, a bż!"}));
    assert_eq!(
        json_of(get("/about").await.unwrap()).await,
        json!({"name": "backworks"})
    );
    // The router's own routes win over the `/{page}` parameter.
    for path in ["/health", "/ready"] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_ne!(json_of(res).await, json!({"name": "backworks"}), "{path}");
    }
    // A parameter that is not UTF-8 once decoded: the router's 400, naming the parameter.
    let res = get("/hello/%FF").await.unwrap();
    assert_eq!(res.status(), 400);
    let error = json_of(res).await;
    assert_eq!(error["error"]["kind"], "bad_request", "{error}");
    // HEAD of a GET route: the head of the GET, without a body.
    let res = http.head(server.url("/hello/ana")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.bytes().await.unwrap().is_empty());
    // Another method: 405 with the methods served; unknown paths: 404.
    let res = http.delete(server.url("/hello/ana")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    assert_eq!(json_of(res).await["error"]["kind"], "method_not_allowed");
    let res = get("/hello/ana/more").await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(json_of(res).await["error"]["kind"], "not_found");
    // The endpoint's stats count what it served, directly (the GET) or routed (the HEAD).
    let metrics = http
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"backworks_requests_total{endpoint="hello",plugin="hello"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_id_hook_adds_and_keeps_ids() {
    let server = Server::start(DEMO);
    let http = client();
    let a = http.get(server.url("/hello/a")).send().await.unwrap();
    let b = http.get(server.url("/version")).send().await.unwrap();
    let id_a = a.headers()["x-request-id"].to_str().unwrap().to_owned();
    let id_b = b.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id_a.is_empty() && id_a != id_b, "{id_a} vs {id_b}");
    let kept = http
        .get(server.url("/hello/a"))
        .header("x-request-id", "mine-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "mine-123");
    // Hooks run around errors too.
    let error = http.get(server.url("/kv/missing")).send().await.unwrap();
    assert_eq!(error.status(), 404);
    assert!(error.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn api_key_hook_answers_early() {
    let yaml = r#"
plugins:
  auth:
    path: "{{plugins}}/librequest_id.so"
    hooks: [before_request, after_response]
    config: { require_api_key: "${TEST_NEVER_SET_KEY:-s3cret}" }
  hello:
    path: "{{plugins}}/libhello.so"
endpoints:
  hello: { path: "/hello/{name}", plugin: hello }
"#;
    let server = Server::start(yaml);
    let http = client();
    let denied = http.get(server.url("/hello/x")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().contains_key("x-request-id"));
    assert_eq!(
        json_of(denied).await,
        json!({"error": "missing or invalid API key"})
    );
    let allowed = http
        .get(server.url("/hello/x"))
        .header("x-api-key", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let logs = server.stop();
    assert!(
        !logs.contains("s3cret"),
        "the secret leaked into the logs:\n{logs}"
    );
}

#[tokio::test]
async fn kv_store_is_correct_under_concurrency() {
    let server = Server::start(DEMO);
    let http = client();
    let put = http
        .put(server.url("/kv/greeting"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let put = http
        .put(server.url("/kv/greeting"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = http.get(server.url("/kv/greeting")).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "hello");

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let http = http.clone();
            let url = server.url("/counter/hits");
            tokio::spawn(async move {
                let res = http.post(url).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Value>().await.unwrap()["value"]
                    .as_u64()
                    .unwrap()
            })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap());
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=200).collect::<Vec<u64>>(),
        "every increment counted once"
    );

    let del = http
        .delete(server.url("/kv/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let gone = http.get(server.url("/kv/greeting")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let body = json_of(gone).await;
    assert_eq!(body["error"]["plugin"], "kv-store");
    assert_eq!(body["error"]["kind"], "not_found");
}

#[tokio::test]
async fn async_plugin_awaits_timers_and_sockets_on_its_own_runtime() {
    let server = Server::start(DEMO);
    let http = client();
    let res = http.get(server.url("/tcp-echo")).send().await.unwrap();
    assert_eq!(json_of(res).await, json!({"echoed": "ping"}));
    // 200 requests each awaiting 200 ms inside the plugin: they wait concurrently, and a request to
    // another plugin is answered meanwhile (no host thread is held by a waiting plugin).
    let sleepers: Vec<_> = (0..200)
        .map(|_| {
            let http = http.clone();
            let url = server.url("/sleep/200");
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let hello = http
        .get(server.url("/hello/meanwhile"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn a_panic_is_a_500_naming_the_plugin_and_the_host_keeps_serving() {
    let server = Server::start(DEMO);
    let http = client();
    for path in ["/boom/panic", "/boom/panic-later"] {
        let res = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 500, "{path}");
        let body = json_of(res).await;
        assert_eq!(body["error"]["plugin"], "broken-panic");
        assert_eq!(body["error"]["kind"], "panic");
        assert!(
            server.detail(500, &body).contains("handle exploded"),
            "{body}"
        );
        // The same plugin and the others answer the next request normally.
        let ok = http.get(server.url("/boom/fine")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let hello = http.get(server.url("/hello/after")).send().await.unwrap();
        assert_eq!(hello.status(), 200);
    }
    let logs = server.stop();
    assert!(
        logs.contains("handle exploded"),
        "the panic is logged:\n{logs}"
    );
}

#[tokio::test]
async fn failed_and_disabled_plugins_are_skipped_and_reported() {
    let yaml = r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  hello:
    path: libhello.so
  crashy:
    path: libbroken_panic.so
    config: { panic_in: initialize }
  off:
    path: libkv_store.so
    enabled: false
  ghost:
    path: libdoes_not_exist.so
  parked:
    path: libnot_built_yet.so
    enabled: false
endpoints:
  hello: { path: "/hello/{name}", plugin: hello }
  crashy: { path: /crashy, plugin: crashy }
  off: { path: /off, plugin: off }
  ghost: { path: /ghost, plugin: ghost }
"#;
    let server = Server::start(yaml);
    let http = client();
    assert_eq!(
        http.get(server.url("/hello/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (path, plugin, says) in [
        ("/crashy", "crashy", "initialize exploded"),
        ("/off", "off", "disabled"),
        ("/ghost", "ghost", "not found"),
    ] {
        let res = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 503, "{path}");
        let body = json_of(res).await;
        assert_eq!(body["error"]["plugin"], plugin);
        // The public body says only that the plugin is not available; why is for the log.
        assert_eq!(
            body["error"]["message"], "the plugin is not available",
            "{body}"
        );
        assert!(server.detail(503, &body).contains(says), "{body}");
    }
    let health = json_of(http.get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["status"], "degraded");
    let state = |name: &str| {
        health["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state("hello").as_deref(), Some("active"));
    assert_eq!(state("crashy").as_deref(), Some("error"));
    assert_eq!(state("off").as_deref(), Some("disabled"));
    assert_eq!(state("ghost").as_deref(), Some("error"));
    // Disabled wins over a missing file: nothing is looked up for it.
    assert_eq!(state("parked").as_deref(), Some("disabled"));
}

#[tokio::test]
async fn c_plugin_serves_through_the_host() {
    let lib = c_plugin("hello");
    let yaml = format!(
        "plugins:\n  c-hello:\n    path: {}\nendpoints:\n  c: {{ path: \"/c/{{rest}}\", plugin: c-hello }}\n",
        lib.display()
    );
    let server = Server::start(&yaml);
    let res = client()
        .get(server.url("/c/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["message"], "Hello from C");
    assert_eq!(body["path"], "/c/anything");
    let logs = server.stop();
    assert!(
        logs.contains("c-hello instance created"),
        "C plugin log line reaches the host:\n{logs}"
    );
}

#[tokio::test]
async fn plugin_logs_are_tagged_and_shutdown_reaches_every_plugin() {
    let server = Server::start(DEMO);
    let health = json_of(client().get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["status"], "ok", "{health}");
    let logs = server.stop();
    let init = logs
        .lines()
        .find(|l| l.contains("hello initialized with greeting"))
        .unwrap_or_else(|| panic!("plugin log line missing:\n{logs}"));
    assert!(
        init.contains("plugin=\"hello\""),
        "tagged with the plugin name: {init}"
    );
    for plugin in [
        "request-id",
        "hello",
        "kv-store",
        "async-clock",
        "broken-panic",
        "static",
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains("plugin shut down")
                    && l.contains(&format!("plugin=\"{plugin}\""))),
            "{plugin} was not shut down:\n{logs}"
        );
    }
    let _ = rust_plugins();
}

#[tokio::test]
async fn request_body_limit_and_admin_token() {
    let yaml = r#"
server:
  max_request_body: 1024
  admin: { token: "${ADMIN_TOKEN}" }
plugin_dirs: ["{{plugins}}"]
plugins:
  hello:
    path: libhello.so
endpoints:
  echo: { path: /echo, methods: [POST], plugin: hello }
"#;
    let server = Server::start_with_env(yaml, &[("ADMIN_TOKEN", "s3cret-t0ken")]);
    let http = client();

    // A body over server.max_request_body is refused before the plugin runs.
    let big = http
        .post(server.url("/echo"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body = json_of(big).await;
    assert_eq!(body["error"]["plugin"], "hello", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 1024 bytes (server.max_request_body)"),
        "{body}"
    );
    let small = http
        .post(server.url("/echo"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(small.text().await.unwrap(), "hi");

    // The admin API is not on the public port, and needs the token on its own.
    let public = http
        .get(server.url("/_backworks/plugins"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    for path in [
        "/_backworks/plugins",
        "/_backworks/plugins/hello",
        "/metrics",
    ] {
        let none = http.get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let wrong = http
            .get(server.admin_url(path))
            .bearer_auth("s3cret-t0keN")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = http
            .get(server.admin_url(path))
            .bearer_auth("s3cret-t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    let missing = http
        .get(server.admin_url("/_backworks/plugins/nope"))
        .bearer_auth("s3cret-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let logs = server.stop();
    assert!(
        !logs.contains("s3cret-t0ken"),
        "the token is never logged:\n{logs}"
    );
}

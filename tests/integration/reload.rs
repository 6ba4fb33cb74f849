//! Hot reload (issue #10): `POST /_backworks/reload`, `backworks reload`, `SIGHUP` and the file
//! watcher; reloads under constant load lose no request, a failed reload changes nothing,
//! unchanged plugins keep their state, retired generations are bounded and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::observe::{PATIENCE, metric};
use crate::support::{Server, backworks, client, get_json};

/// The demo's hello and kv-store, hello greeting with `greeting`; `extra` is appended under
/// `plugins:` (entries indented two spaces) and `reload` at the top level.
fn config(greeting: &str, extra: &str, reload: &str) -> String {
    format!(
        "plugin_dirs: [\"{{{{plugins}}}}\"]\n{reload}\
         plugins:\n  \
         hello: {{ path: libhello.so, config: {{ greeting: {greeting} }} }}\n  \
         kv: {{ path: libkv_store.so }}\n{extra}\
         endpoints:\n  \
         hello: {{ path: \"/hello/{{name}}\", plugin: hello }}\n  \
         kv: {{ path: \"/kv/{{key}}\", methods: [GET, PUT], plugin: kv }}\n"
    )
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let res = client()
        .get(server.url(path))
        .send()
        .await
        .expect("an answer");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn message(server: &Server) -> String {
    let (status, body) = get(server, "/hello/ana").await;
    assert_eq!(status, 200, "{body}");
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// `POST /_backworks/reload`: its status and report.
async fn reload(server: &Server) -> (u16, Value) {
    let res = client()
        .post(server.admin_url("/_backworks/reload"))
        .send()
        .await
        .expect("the admin API answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn plugin(server: &Server, name: &str) -> Value {
    get_json(server.admin_url(&format!("/_backworks/plugins/{name}"))).await
}

async fn metrics(server: &Server) -> String {
    client()
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default()
}

/// A bounded load: eight clients, each sending `GET /hello/ana` one after another until stopped
/// (and at most for the patience), recording each answer's status and message.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
}

impl Load {
    fn start(server: &Arc<Server>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..8)
            .map(|_| {
                let (server, stop) = (server.clone(), stop.clone());
                tokio::spawn(async move {
                    let http = client();
                    let deadline = Instant::now() + PATIENCE;
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let answer = match http.get(server.url("/hello/ana")).send().await {
                            Ok(res) => {
                                let status = res.status().as_u16();
                                let body: Value = res.json().await.unwrap_or(Value::Null);
                                (status, body["message"].as_str().unwrap_or("").to_owned())
                            }
                            Err(error) => (0, error.to_string()),
                        };
                        answers.push(answer);
                    }
                    answers
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients; every answer they got.
    async fn stop(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut answers = Vec::new();
        for client in self.clients {
            answers.extend(client.await.expect("a client"));
        }
        answers
    }
}

/// Sets the modification time of `file` to now, its content as it was.
fn touch(file: &std::path::Path) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
}

/// Installs a copy of `from` at `to` as installers do: written beside it, then renamed over it.
fn install(from: &std::path::Path, to: &std::path::Path) {
    let beside = to.with_extension("new");
    std::fs::copy(from, &beside).unwrap();
    std::fs::rename(&beside, to).unwrap();
}

/// Polls `check` until it holds; panics with `what` after the patience runs out.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_constant_load_lose_no_request() {
    let server = Arc::new(Server::start(&config("Hello", "", "")));
    let put = client()
        .put(server.url("/kv/color"))
        .body("blue")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let load = Load::start(&server);

    let greetings = ["Hi", "Hello"];
    for n in 0..20 {
        server.rewrite_config(&config(greetings[n % 2], "", ""));
        let (status, report) = reload(&server).await;
        assert_eq!(status, 200, "reload {n}: {report}");
        assert_eq!(report["changed"], serde_json::json!(["hello"]), "{report}");
        assert_eq!(report["unchanged"], serde_json::json!(["kv"]), "{report}");
    }
    let answers = load.stop().await;
    assert!(
        answers.len() > 100,
        "the load was too light: {} requests",
        answers.len()
    );
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for (_, message) in &answers {
        assert!(
            message == "Hello, ana!" || message == "Hi, ana!",
            "an answer from neither generation: {message:?}"
        );
    }
    // The last reload's answer, afterwards.
    assert_eq!(message(&server).await, "Hello, ana!");
    // kv-store was not changed: same instance, same state.
    let (status, _) = get(&server, "/kv/color").await;
    assert_eq!(status, 200);
    let kept = client().get(server.url("/kv/color")).send().await.unwrap();
    assert_eq!(kept.text().await.unwrap(), "blue");
    let hello = plugin(&server, "hello").await;
    assert_eq!(hello["generation"], 21, "{hello}");
    assert_eq!(hello["retired_generations"], 20, "{hello}");
    assert_eq!(plugin(&server, "kv").await["generation"], 1);
    let text = metrics(&server).await;
    assert_eq!(
        metric::value(
            &text,
            "backworks_plugin_retired_generations",
            &[("plugin", "hello")]
        ),
        Some(20.0)
    );
    // The retired generations drain and are shut down.
    server_logs_eventually(&server, "retired generation drained and shut down").await;
}

async fn server_logs_eventually(server: &Server, line: &str) {
    eventually(&format!("the log line {line:?}"), || async {
        server.logs().contains(line)
    })
    .await;
}

#[tokio::test]
async fn a_failed_reload_changes_nothing() {
    let server = Server::start(&config("Hello", "", ""));
    // A file that does not parse: refused with its place; the old generation serves.
    server.rewrite_config("plugins:\n  hello: [unclosed\n");
    let (status, report) = reload(&server).await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["ok"], false);
    let error = report["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("backworks.yaml:"),
        "names the file and place: {error}"
    );
    assert_eq!(message(&server).await, "Hello, ana!");

    // A new generation that fails `initialize` (a greeting must be a string): refused, nothing
    // changed, the error names the plugin.
    server.rewrite_config(&config("5", "", ""));
    let (status, report) = reload(&server).await;
    assert_eq!(status, 409, "{report}");
    let error = report["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("plugin `hello` failed to start"), "{error}");
    assert_eq!(message(&server).await, "Hello, ana!");
    assert_eq!(plugin(&server, "hello").await["generation"], 1);
    let last: Value = get_json(server.admin_url("/_backworks/reload")).await;
    assert_eq!(last["ok"], false, "{last}");

    // `backworks reload` says so and exits 1; once the file is fixed it applies and exits 0.
    let config_path = server.config_path().display().to_string();
    let cli = backworks(&["reload", "-c", &config_path, "--admin-url", &server.admin]);
    assert_eq!(cli.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        stderr.contains("reload refused") && stderr.contains("plugin `hello`"),
        "{stderr}"
    );
    server.rewrite_config(&config("Hi", "", ""));
    let cli = backworks(&["reload", "-c", &config_path, "--admin-url", &server.admin]);
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("reload applied: generation 2"), "{stdout}");
    assert!(stdout.contains("changed: hello"), "{stdout}");
    assert_eq!(message(&server).await, "Hi, ana!");
}

#[tokio::test]
async fn sighup_reloads_and_a_removed_plugin_is_retired() {
    let server = Server::start(&config("Hello", "", ""));
    // kv-store and its endpoint go away; hello changes.
    server.rewrite_config(
        "plugin_dirs: [\"{{plugins}}\"]\nplugins:\n  \
         hello: { path: libhello.so, config: { greeting: Hey } }\n\
         endpoints:\n  hello: { path: \"/hello/{name}\", plugin: hello }\n",
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually("the reload by SIGHUP", || async {
        get(&server, "/hello/ana").await.1["message"] == "Hey, ana!"
    })
    .await;
    let (status, body) = get(&server, "/kv/color").await;
    assert_eq!(status, 404, "the endpoint is gone: {body}");
    server_logs_eventually(&server, "reload applied").await;
}

#[tokio::test]
async fn the_watcher_reloads_on_a_change_of_content_only() {
    let watch = "reload: { watch: true, watch_interval_ms: 100 }\n";
    let server = Server::start(&config("Hello", "", watch));
    // Rewriting the same content changes nothing.
    server.rewrite_config(&config("Hello", "", watch));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(plugin(&server, "hello").await["generation"], 1);
    assert!(!server.logs().contains("a watched file changed"));
    // A real change reloads.
    server.rewrite_config(&config("Howdy", "", watch));
    eventually("the watcher's reload", || async {
        get(&server, "/hello/ana").await.1["message"] == "Howdy, ana!"
    })
    .await;
    assert_eq!(plugin(&server, "hello").await["generation"], 2);
}

/// The watcher looks at library files too: one touched or replaced by the same bytes reloads
/// nothing; another build written over it in place reloads that plugin.
#[tokio::test]
async fn the_watcher_reloads_a_library_written_over_and_not_one_touched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("libgreet.so");
    let rust = crate::support::rust_plugin("hello");
    std::fs::copy(&rust, &file).unwrap();
    let yaml = format!(
        "reload: {{ watch: true, watch_interval_ms: 100 }}\n\
         plugins:\n  greet: {{ path: \"{}\" }}\n\
         endpoints:\n  greet: {{ path: \"/hello/{{name}}\", plugin: greet }}\n",
        file.display()
    );
    let server = Server::start(&yaml);
    // The same bytes installed again (by a rename: a write in place could be seen half done,
    // which would reload, though to no change), then the file touched.
    install(&rust, &file);
    touch(&file);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!server.logs().contains("a watched file changed"));
    assert_eq!(plugin(&server, "greet").await["generation"], 1);
    std::fs::copy(crate::support::c_plugin("hello"), &file).unwrap();
    eventually("the watcher's reload", || async {
        get(&server, "/hello/ana").await.1["message"] == "Hello from C"
    })
    .await;
    assert_eq!(plugin(&server, "greet").await["generation"], 2);
}

#[tokio::test]
async fn reloads_of_one_plugin_are_bounded() {
    let bounded = "reload: { max_generations: 2 }\n";
    let server = Server::start(&config("Hello", "", bounded));
    for greeting in ["A", "B"] {
        server.rewrite_config(&config(greeting, "", bounded));
        assert_eq!(reload(&server).await.0, 200);
    }
    server.rewrite_config(&config("C", "", bounded));
    let (status, report) = reload(&server).await;
    assert_eq!(status, 409, "{report}");
    let error = report["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("plugin `hello` has 2 retired generations")
            && error.contains("reload.max_generations: 2"),
        "{error}"
    );
    assert_eq!(message(&server).await, "B, ana!");
}

/// A process-isolated plugin: the new generation's child starts beside the old one, takes over,
/// and the old child is stopped once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_plugin_reload_starts_a_new_child_and_stops_the_old() {
    let isolated = |greeting: &str| {
        format!(
            "plugin_dirs: [\"{{{{plugins}}}}\"]\nplugins:\n  \
             hello: {{ path: libhello.so, isolation: process, config: {{ greeting: {greeting} }} }}\n\
             endpoints:\n  hello: {{ path: \"/hello/{{name}}\", plugin: hello }}\n"
        )
    };
    let server = Server::start(&isolated("Hello"));
    let old_pid = plugin(&server, "hello").await["process"]["pid"]
        .as_u64()
        .expect("a child pid");
    server.rewrite_config(&isolated("Hi"));
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(message(&server).await, "Hi, ana!");
    let new_pid = plugin(&server, "hello").await["process"]["pid"]
        .as_u64()
        .expect("a child pid");
    assert_ne!(old_pid, new_pid);
    eventually("the old child to be stopped", || async {
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await;
    assert_eq!(message(&server).await, "Hi, ana!");
}

/// Twenty reloads alternating two builds of one plugin file (the Rust hello and the C hello,
/// copied over the configured file in place, as `cp` does) under constant load: no request
/// fails, every answer comes from one of the two builds, and each reload loads the new content
/// (from a private copy of its own, though the path stays the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_alternating_two_builds_of_a_file_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("libgreet.so");
    let builds = [
        crate::support::rust_plugin("hello"),
        crate::support::c_plugin("hello"),
    ];
    let answers = ["Hello, ana!", "Hello from C"];
    std::fs::copy(&builds[0], &file).unwrap();
    let yaml = format!(
        "plugins:\n  greet: {{ path: \"{}\" }}\n\
         endpoints:\n  greet: {{ path: \"/hello/{{name}}\", plugin: greet }}\n",
        file.display()
    );
    let server = Arc::new(Server::start(&yaml));
    assert_eq!(message(&server).await, answers[0]);
    let load = Load::start(&server);
    for n in 1..=20 {
        std::fs::copy(&builds[n % 2], &file).unwrap();
        let (status, report) = reload(&server).await;
        assert_eq!(status, 200, "reload {n}: {report}");
        assert_eq!(report["changed"], serde_json::json!(["greet"]), "{report}");
        assert_eq!(message(&server).await, answers[n % 2], "after reload {n}");
    }
    let seen = load.stop().await;
    assert!(seen.len() > 100, "the load was too light: {}", seen.len());
    for (status, body) in &seen {
        assert_eq!(*status, 200, "{body}");
        assert!(
            answers.contains(&body.as_str()),
            "an answer from neither build: {body:?}"
        );
    }
    assert_eq!(message(&server).await, answers[0]);
}

/// A reload compares each library file with the copy that runs, not with a snapshot taken after
/// start: a file rewritten in place at once after start is loaded again; one rewritten with the
/// same bytes, touched, or replaced by a file with the same bytes is not.
#[tokio::test]
async fn a_reload_compares_each_library_file_with_the_copy_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("libgreet.so");
    let (rust, c) = (
        crate::support::rust_plugin("hello"),
        crate::support::c_plugin("hello"),
    );
    std::fs::copy(&rust, &file).unwrap();
    let yaml = format!(
        "plugins:\n  greet: {{ path: \"{}\" }}\n\
         endpoints:\n  greet: {{ path: \"/hello/{{name}}\", plugin: greet }}\n",
        file.display()
    );
    let server = Server::start(&yaml);
    let unchanged = |report: &Value| report["unchanged"] == serde_json::json!(["greet"]);

    // The same bytes written again, the file touched, or another file with the same bytes
    // renamed over it: nothing to load.
    std::fs::write(&file, std::fs::read(&rust).unwrap()).unwrap();
    let (status, report) = reload(&server).await;
    assert!(
        status == 200 && unchanged(&report),
        "rewritten alike: {report}"
    );
    touch(&file);
    let (status, report) = reload(&server).await;
    assert!(status == 200 && unchanged(&report), "touched: {report}");
    install(&rust, &file);
    let (status, report) = reload(&server).await;
    assert!(
        status == 200 && unchanged(&report),
        "replaced alike: {report}"
    );
    assert_eq!(message(&server).await, "Hello, ana!");

    // Other bytes written in place: loaded again, then unchanged until the next change.
    std::fs::copy(&c, &file).unwrap();
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changed"], serde_json::json!(["greet"]), "{report}");
    assert_eq!(message(&server).await, "Hello from C");
    let (status, report) = reload(&server).await;
    assert!(status == 200 && unchanged(&report), "{report}");

    // A file that is gone counts as changed: its new generation cannot load, and the reload is
    // refused with the old one still serving.
    std::fs::remove_file(&file).unwrap();
    let (status, report) = reload(&server).await;
    assert_ne!(status, 200, "{report}");
    assert_eq!(message(&server).await, "Hello from C");
}

/// What a reload cannot apply (`server:`, `health:`) is reported and waits for a restart; the
/// rest applies.
#[tokio::test]
async fn server_and_health_changes_wait_for_a_restart() {
    let server = Server::start(&config("Hello", "", ""));
    server.rewrite_config(&config(
        "Hi",
        "",
        "server: { max_request_body: 10 }\nhealth: { interval_ms: 50 }\n",
    ));
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("changes under `server:` take effect at the next restart")
            && warnings.contains("changes under `health:` take effect at the next restart"),
        "{report}"
    );
    assert_eq!(message(&server).await, "Hi, ana!");
    // The request body limit is still the one the server started with.
    let put = client()
        .put(server.url("/kv/long"))
        .body("more than ten bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
}

/// After a reload that changed an important plugin, `/ready` answers for its new generation at
/// once (the reload asked it), not after the health monitor's next round.
#[tokio::test]
async fn ready_answers_for_a_new_generation_at_once() {
    let important = |greeting: &str| {
        format!(
            "health: {{ interval_ms: 600000 }}\nplugin_dirs: [\"{{{{plugins}}}}\"]\nplugins:\n  \
             hello: {{ path: libhello.so, important: true, config: {{ greeting: {greeting} }} }}\n\
             endpoints:\n  hello: {{ path: \"/hello/{{name}}\", plugin: hello }}\n"
        )
    };
    let server = Server::start(&important("Hello"));
    assert_eq!(get(&server, "/ready").await.0, 200);
    server.rewrite_config(&important("Hi"));
    assert_eq!(reload(&server).await.0, 200);
    let (status, body) = get(&server, "/ready").await;
    assert_eq!(status, 200, "{body}");
}

/// A plugin that failed to start is tried again by a reload, though its entry did not change:
/// here its file was missing, and is there now.
#[tokio::test]
async fn a_reload_retries_a_plugin_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("libgreet.so");
    let yaml = format!(
        "plugins:\n  greet: {{ path: \"{}\" }}\n\
         endpoints:\n  greet: {{ path: \"/hello/{{name}}\", plugin: greet }}\n",
        file.display()
    );
    let server = Server::start(&yaml);
    assert_eq!(get(&server, "/hello/ana").await.0, 503);
    std::fs::copy(crate::support::rust_plugin("hello"), &file).unwrap();
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changed"], serde_json::json!(["greet"]), "{report}");
    assert_eq!(message(&server).await, "Hello, ana!");
}

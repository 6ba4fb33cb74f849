//! What the fault catalogues (`faults.rs`, `process_*.rs`) share: a `backworks serve` with a healthy
//! control plugin beside the plugins under test, the requests they make on its public port, and how
//! they read what it shows (admin API, `/metrics`, error bodies), polling with a generous deadline.
//!
//! The names the catalogues depend on (admin API, metric names, the config's layout) are gathered
//! in [`admin`], [`metric`] and [`FaultServer::start`], so that a rename is a change in one place.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, client};

/// The control plugin every catalogue serves at `GET /control`: an in-process `faulty` instance
/// with no fault.
const CONTROL: &str = r#"
  control:
    path: libfaulty.so
"#;

/// Liveness deadline for anything the tests wait on (health polls, breaker cool-downs, restarts,
/// kills, logs): generous, the machine is shared and noisy; nothing asserts speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A `backworks serve` (its admin API on a port of its own), plus the requests the tests make.
pub struct FaultServer {
    pub server: Server,
    pub http: reqwest::Client,
}

/// What a request got back.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub body: Value,
}

impl FaultServer {
    /// Serves `plugins` (YAML entries under `plugins:`, indented two spaces) and `endpoints`
    /// (under `endpoints:`), plus the control plugin at `/control`. Health is polled every 200 ms
    /// with a 2 s timeout (a healthy plugin's check must never be what runs out of time on a loaded
    /// machine).
    pub async fn start(plugins: &str, endpoints: &str) -> FaultServer {
        FaultServer::start_with_health(200, plugins, endpoints).await
    }

    /// [`FaultServer::start`] with health polled every `interval_ms`.
    pub async fn start_with_health(
        interval_ms: u64,
        plugins: &str,
        endpoints: &str,
    ) -> FaultServer {
        FaultServer::start_with(interval_ms, plugins, endpoints, &[]).await
    }

    /// [`FaultServer::start`] with these extra variables in the server's environment.
    pub async fn start_with_env(
        plugins: &str,
        endpoints: &str,
        env: &[(&str, &str)],
    ) -> FaultServer {
        FaultServer::start_with(200, plugins, endpoints, env).await
    }

    async fn start_with(
        interval_ms: u64,
        plugins: &str,
        endpoints: &str,
        env: &[(&str, &str)],
    ) -> FaultServer {
        let yaml = format!(
            "health: {{ interval_ms: {interval_ms}, timeout_ms: 2000 }}\n\
             plugin_dirs: [\"{{{{plugins}}}}\"]\n\
             plugins:{CONTROL}{plugins}\n\
             endpoints:\n  control: {{ path: /control, plugin: control, hooks: [] }}\n{endpoints}"
        );
        let faults = FaultServer {
            server: Server::start_with_env(&yaml, env),
            http: client(),
        };
        // The admin listener may come up just after the public one.
        let this = &faults;
        this.wait_for("the admin API to answer", || async move {
            this.http
                .get(this.server.admin_url(&admin::plugin("control")))
                .send()
                .await
                .is_ok()
        })
        .await;
        faults
    }

    /// A request on the public port.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Answer {
        let mut request = self.http.request(method.clone(), self.server.url(path));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let res = request
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("a body").to_vec();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            bytes,
            body,
        }
    }

    /// `GET` on the public port.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, Vec::new(), None)
            .await
    }

    /// `POST` of a JSON text on the public port.
    pub async fn post_json(&self, path: &str, body: &str) -> Answer {
        let body = body.as_bytes().to_vec();
        self.send(reqwest::Method::POST, path, body, Some("application/json"))
            .await
    }

    /// Asserts that the control plugin answers 200.
    pub async fn assert_control_serves(&self) {
        let answer = self.get("/control").await;
        assert_eq!(answer.status, 200, "the control plugin: {}", answer.body);
        assert_eq!(answer.body["ok"], true);
    }

    /// `GET /_backworks/plugins/{name}`.
    pub async fn plugin(&self, name: &str) -> Value {
        let res = self
            .http
            .get(self.server.admin_url(&admin::plugin(name)))
            .send()
            .await
            .expect("admin API");
        assert_eq!(res.status(), 200, "admin API for {name}");
        res.json().await.expect("admin JSON")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self
            .http
            .get(self.server.admin_url(admin::METRICS))
            .send()
            .await
            .expect("/metrics");
        assert_eq!(res.status(), 200);
        res.text().await.expect("metrics text")
    }

    /// The value of metric `name` with (at least) these labels.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric::value(&self.metrics().await, name, labels)
    }

    /// Waits until the server's log has a line containing every one of `parts`.
    pub async fn log_line(&self, parts: &[&str]) -> String {
        self.poll_until(&format!("a log line with {parts:?}"), || async move {
            self.server
                .logs()
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
                .map(str::to_owned)
        })
        .await
    }

    /// Polls `check` until it holds; panics with the logs after [`PATIENCE`].
    pub async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.poll_until(what, || {
            let done = check();
            async move { done.await.then_some(()) }
        })
        .await
    }

    /// Polls `attempt` until it gives a value; panics with the logs after [`PATIENCE`].
    pub async fn poll_until<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.server.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asserts the error body `{"error": {"plugin", "kind", "message"}}`.
pub fn assert_error(answer: &Answer, status: u16, plugin: &str, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"]["plugin"], plugin, "{}", answer.body);
    assert_eq!(answer.body["error"]["kind"], kind, "{}", answer.body);
}

/// The message of an error body (empty when there is none).
pub fn message(answer: &Answer) -> &str {
    answer.body["error"]["message"].as_str().unwrap_or_default()
}

impl FaultServer {
    /// What an operator learns of an error answer: see [`Server::detail`].
    pub async fn detail(&self, answer: &Answer) -> String {
        if answer.status < 500 {
            return message(answer).to_owned();
        }
        let id = answer.body["error"]["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("an error body without a request id: {}", answer.body));
        self.log_line(&[id]).await
    }
}

impl Answer {
    /// An answer made of a status and a JSON body (no headers).
    pub fn of(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Default::default(),
            bytes: body.to_string().into_bytes(),
            body,
        }
    }
}

/// The admin API's paths and field names.
pub mod admin {
    /// Prometheus metrics (on the admin listener).
    pub const METRICS: &str = "/metrics";
    /// A plugin entry's supervision of its child (`state`, `pid`, `restarts`, `crashes`,
    /// `last_crash`).
    pub const PROCESS: &str = "process";

    /// One plugin's entry.
    pub fn plugin(name: &str) -> String {
        format!("/_backworks/plugins/{name}")
    }

    /// The kinds of the events in an entry, oldest first.
    pub fn event_kinds(entry: &serde_json::Value) -> Vec<String> {
        entry["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The details of the events of `kind` in an entry, oldest first.
    pub fn event_details(entry: &serde_json::Value, kind: &str) -> Vec<String> {
        entry["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["kind"] == kind)
                    .filter_map(|e| e["detail"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reading the Prometheus text format.
pub mod metric {
    /// Restarts of a process plugin's child.
    pub const RESTARTS: &str = "backworks_plugin_restarts_total";
    /// Crashes of a process plugin's child.
    pub const CRASHES: &str = "backworks_plugin_crashes_total";

    /// The value of the first sample of `name` that carries every one of `labels`.
    pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let has_all = labels.iter().all(|(k, v)| {
                    series_labels
                        .split(',')
                        .any(|l| l == format!("{k}=\"{v}\""))
                });
                (series_name == name && has_all).then(|| value.parse().ok())?
            })
    }

    #[test]
    fn reads_samples_by_name_and_labels() {
        let text = "# TYPE x counter\nx_total{plugin=\"a\",kind=\"internal\"} 3\n\
                    x_total{plugin=\"b\",kind=\"internal\"} 5\ny 1.5\n";
        assert_eq!(value(text, "x_total", &[("plugin", "b")]), Some(5.0));
        assert_eq!(
            value(text, "x_total", &[("kind", "internal"), ("plugin", "a")]),
            Some(3.0)
        );
        assert_eq!(value(text, "y", &[]), Some(1.5));
        assert_eq!(value(text, "x_total", &[("plugin", "c")]), None);
    }
}

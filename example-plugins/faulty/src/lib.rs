//! **Test fixture, not an example to copy**: a plugin that misbehaves on request, for the fault
//! catalogues of the host's tests (in process and under process isolation).
//!
//! One instance does one thing wrong, chosen by its config; a test config declares several
//! instances of `libfaulty.so` with different configs. Panics are `broken-panic`'s job.
//!
//! | Config field            | What a call does                                                        |
//! |-------------------------|-------------------------------------------------------------------------|
//! | (none)                  | 200 `{"ok":true,"calls":n}`                                             |
//! | `error: {status?, kind?, message}` | fails with that [`PluginError`]: `kind` as [`PluginError::kind`] names it (see [`error_kinds`]), default `internal` (500), or `status` when only `status` (400–599) is given |
//! | `sleep_ms: N`           | awaits a tokio sleep of N ms, then goes on (cancellable: dropped at a timeout) |
//! | `block_ms: N`           | blocks its thread with `std::thread::sleep` for N ms, then goes on (cannot be cancelled) |
//! | `body_bytes: N`         | 200 with a body of N bytes `x`, `content-type: application/octet-stream` |
//! | `bad_header: true`      | 200 `{"ok":true,"calls":n}` with header `x-faulty: bad\nvalue` (a line feed: invalid HTTP) |
//! | `respond_status: N`     | answers (does not fail with) status N, body `{"ok":false,"calls":n}`: a 5xx response for `count_5xx`, or an invalid status such as 1000 |
//! | `fail_first: N`         | calls 1..=N fail with `Internal` (500) [`fail_first_message`], later calls go on |
//! | `hog_mb: N`             | allocates N more MiB in 1 MiB steps, touches and keeps them; 200 `{"ok":true,"calls":n,"held_mb":total}`. Past an `RLIMIT_AS` the allocation fails and the process aborts |
//! | `segfault: true`        | ⚠ raises `SIGSEGV` — **kills the process**                              |
//! | `abort: true`           | ⚠ `std::process::abort()` — **kills the process** (`SIGABRT`)           |
//! | `exit: CODE`            | ⚠ `std::process::exit(CODE)` in the middle of the call — **ends the process** |
//! | `spin: true`            | ⚠ spins on its thread forever, never yields — **wedges a thread for good** |
//! | `crash_on_init: true`   | ⚠ `initialize` exits the process with status 3 (a crash loop under a supervisor) |
//!
//! **⚠ The marked behaviours are for `isolation: process` tests only.** In process they take the
//! host (or a host thread) down with them, which is the point of isolating them. `block_ms` in
//! process blocks one of the host's threads for its duration: that is the documented limit of
//! in-process timeouts.
//!
//! "Goes on" means: `handle` answers 200 `{"ok":true,"calls":n}`, `before_request` continues,
//! `after_response` passes the response through. A behaviour that answers a response makes
//! `before_request` respond early with it and `after_response` replace the response with it.
//!
//! Modifiers:
//!
//! | Field                    | Effect                                                                 |
//! |--------------------------|------------------------------------------------------------------------|
//! | `only_path_suffix: "/x"` | only requests whose path ends with `/x` misbehave; others go on        |
//! | `apply_to: [..]`         | the methods that misbehave, among `handle`, `before_request`, `after_response`; default `[handle]` |
//! | `health: H`              | `health_check` reports `healthy` (default), `degraded` ([`DEGRADED_MESSAGE`]) or `unhealthy` ([`UNHEALTHY_MESSAGE`]) |
//! | `health_delay_ms: N`     | `health_check` awaits a tokio sleep of N ms before it reports (a health check past its timeout) |
//! | `spawn_daemon: "FILE"`   | ⚠ `initialize` leaves a `setsid` daemon behind that appends its pid to FILE (process isolation only) |
//!
//! `calls` (`n` above) counts every call of `handle`, `before_request` and `after_response` on the
//! instance so far, this one and failed ones included (`health_check` is not counted): a test can
//! prove that a plugin was not called while its breaker was open.
//!
//! Bodies are JSON objects; read them as JSON, not as text (serde_json writes the keys sorted:
//! `{"calls":1,"ok":true}`).
//!
//! Logs: `initialize` logs `faulty initialized: <settings>` at info, e.g.
//! `faulty initialized: sleep_ms=500 in handle, health healthy` or
//! `faulty initialized: exit=1 in handle for paths ending in "/bad", health healthy`. Each lethal
//! behaviour logs an error line just before it acts (best effort: the process may end before the
//! line leaves it): `faulty: raising SIGSEGV`, `faulty: aborting`, `faulty: exiting with status N`,
//! `faulty: spinning forever`, `faulty: crash_on_init, exiting with status 3`.
//!
//! A bad config fails `initialize` with a [`PluginError::Config`] naming the field, such as
//! ``invalid configuration: field `sleep_ms`: invalid type: string "x", expected u64``,
//! ``invalid configuration: unknown field `slep_ms`, expected one of ...`` or
//! ``invalid configuration: one behaviour per instance, found `error` and `sleep_ms` ``.

mod config;
mod lethal;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use backworks_plugin_sdk::prelude::*;
use backworks_plugin_sdk::tracing;

pub use config::{
    Behaviour, ErrorConfig, FaultyConfig, HealthSetting, Method, Settings, error_kinds,
};
pub use lethal::CRASH_ON_INIT_STATUS;

/// The header `bad_header` sets.
pub const BAD_HEADER_NAME: &str = "x-faulty";
/// The value `bad_header` sets: it holds a line feed, which HTTP forbids.
pub const BAD_HEADER_VALUE: &str = "bad\nvalue";
/// The message of a `degraded` health report.
pub const DEGRADED_MESSAGE: &str = "faulty: configured degraded";
/// The message of an `unhealthy` health report.
pub const UNHEALTHY_MESSAGE: &str = "faulty: configured unhealthy";

/// The message of call `n`'s error under `fail_first: first`.
pub fn fail_first_message(n: u64, first: u64) -> String {
    format!("faulty: call {n} fails (fail_first {first})")
}

/// What a call comes to before it is shaped for its method.
enum Outcome {
    /// Go on as if nothing happened.
    Pass,
    /// Answer with this response.
    Answer(Response),
    /// Fail with this error.
    Fail(PluginError),
}

/// Misbehaves as configured. See the crate docs.
#[derive(Debug, Default)]
pub struct Faulty {
    settings: RwLock<Arc<Settings>>,
    calls: AtomicU64,
    /// What `hog_mb` allocated, kept until the instance is dropped.
    hoard: Mutex<Vec<Vec<u8>>>,
}

impl Faulty {
    /// How many `handle`, `before_request` and `after_response` calls the instance received.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The plain answer of call `n`.
    fn ok_body(n: u64) -> Response {
        Response::json(&json!({ "ok": true, "calls": n }))
    }

    /// Counts the call and does what the config says for `method` on `path`.
    async fn act(&self, method: Method, path: &str) -> (u64, Outcome) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let settings = self.settings();
        if !settings.applies(method, path) {
            return (n, Outcome::Pass);
        }
        let outcome = match &settings.behaviour {
            Behaviour::None | Behaviour::CrashOnInit => Outcome::Pass,
            Behaviour::Error(err) => Outcome::Fail(err.clone()),
            Behaviour::Sleep(duration) => {
                tokio::time::sleep(*duration).await;
                Outcome::Pass
            }
            Behaviour::Block(duration) => {
                std::thread::sleep(*duration);
                Outcome::Pass
            }
            Behaviour::Body(len) => Outcome::Answer(
                Response::new(200)
                    .with_header("content-type", "application/octet-stream")
                    .with_body(vec![b'x'; *len]),
            ),
            Behaviour::BadHeader => {
                let mut response = Faulty::ok_body(n);
                // `with_header` would do, but `append` shows that nothing checks the value here.
                response.headers.append(BAD_HEADER_NAME, BAD_HEADER_VALUE);
                Outcome::Answer(response)
            }
            Behaviour::RespondStatus(status) => Outcome::Answer(
                Response::json(&json!({ "ok": false, "calls": n })).with_status(*status),
            ),
            Behaviour::FailFirst(first) if n <= *first => {
                Outcome::Fail(PluginError::Internal(fail_first_message(n, *first)))
            }
            Behaviour::FailFirst(_) => Outcome::Pass,
            Behaviour::Hog(mb) => {
                let held = lethal::hog(&self.hoard, *mb);
                Outcome::Answer(Response::json(
                    &json!({ "ok": true, "calls": n, "held_mb": held }),
                ))
            }
            Behaviour::Segfault => lethal::segfault(),
            Behaviour::Abort => lethal::abort(),
            Behaviour::Exit(code) => lethal::exit(*code),
            Behaviour::Spin => lethal::spin(),
        };
        (n, outcome)
    }
}

#[async_trait]
impl BackworksPlugin for Faulty {
    const HOOKS: Hooks = Hooks::ALL;

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let settings = Settings::parse(config)?;
        if settings.behaviour == Behaviour::CrashOnInit {
            lethal::exit_in_initialize();
        }
        if let Some(pid_file) = &settings.spawn_daemon {
            lethal::spawn_daemon(pid_file)
                .map_err(|e| PluginError::Internal(format!("cannot leave a daemon: {e}")))?;
        }
        tracing::info!("faulty initialized: {settings}");
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
        Ok(())
    }

    async fn handle(&self, request: Request) -> PluginResult<Response> {
        match self.act(Method::Handle, &request.path).await {
            (n, Outcome::Pass) => Ok(Faulty::ok_body(n)),
            (_, Outcome::Answer(response)) => Ok(response),
            (_, Outcome::Fail(err)) => Err(err),
        }
    }

    async fn before_request(&self, request: &Request) -> PluginResult<HookAction> {
        match self.act(Method::BeforeRequest, &request.path).await {
            (_, Outcome::Pass) => Ok(HookAction::Continue),
            (_, Outcome::Answer(response)) => Ok(HookAction::Respond(response)),
            (_, Outcome::Fail(err)) => Err(err),
        }
    }

    async fn after_response(
        &self,
        request: &Request,
        response: Response,
    ) -> PluginResult<Response> {
        match self.act(Method::AfterResponse, &request.path).await {
            (_, Outcome::Pass) => Ok(response),
            (_, Outcome::Answer(replacement)) => Ok(replacement),
            (_, Outcome::Fail(err)) => Err(err),
        }
    }

    async fn health_check(&self) -> Health {
        let settings = self.settings();
        if !settings.health_delay.is_zero() {
            tokio::time::sleep(settings.health_delay).await;
        }
        match settings.health {
            HealthSetting::Healthy => Health::Healthy,
            HealthSetting::Degraded => Health::Degraded(DEGRADED_MESSAGE.to_owned()),
            HealthSetting::Unhealthy => Health::Unhealthy(UNHEALTHY_MESSAGE.to_owned()),
        }
    }
}

backworks_plugin_sdk::export_plugin!(
    Faulty,
    name = "faulty",
    version = env!("CARGO_PKG_VERSION"),
    description = "test fixture: misbehaves on request (errors, hangs, floods, crashes)"
);

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use super::*;

    async fn configured(config: Value) -> Faulty {
        let plugin = Faulty::default();
        plugin.initialize(config).await.unwrap();
        plugin
    }

    fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    fn body_json(response: &Response) -> Value {
        serde_json::from_slice(&response.body).expect("a JSON body")
    }

    /// Polls `future` once with a waker that does nothing.
    fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn unconfigured_it_answers_and_counts_every_call() {
        let plugin = configured(Value::Null).await;
        for n in 1..=3u64 {
            let response = plugin.handle(get("/x")).await.unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(body_json(&response), json!({"ok": true, "calls": n}));
        }
        let request = get("/x");
        assert_eq!(
            plugin.before_request(&request).await.unwrap(),
            HookAction::Continue
        );
        let passed = plugin
            .after_response(&request, Response::new(204))
            .await
            .unwrap();
        assert_eq!(passed.status, 204);
        assert_eq!(plugin.health_check().await, Health::Healthy);
        // Hooks count, health checks do not.
        assert_eq!(plugin.calls(), 5);
    }

    #[tokio::test]
    async fn error_fails_every_call_with_the_configured_error() {
        let plugin = configured(json!({"error": {"message": "boom"}})).await;
        for _ in 0..3 {
            let err = plugin.handle(get("/x")).await.unwrap_err();
            assert_eq!(err, PluginError::Internal("boom".into()));
            assert_eq!((err.status(), err.kind()), (500, "internal"));
        }
        let plugin =
            configured(json!({"error": {"kind": "unavailable", "message": "db down"}})).await;
        let err = plugin.handle(get("/x")).await.unwrap_err();
        assert_eq!(
            (err.status(), err.kind(), err.message()),
            (503, "unavailable", "db down")
        );
        let plugin = configured(json!({"error": {"status": 429, "message": "slow down"}})).await;
        let err = plugin.handle(get("/x")).await.unwrap_err();
        assert_eq!((err.status(), err.kind()), (429, "status"));
        // Only `handle` by default: the hooks go on.
        assert_eq!(
            plugin.before_request(&get("/x")).await.unwrap(),
            HookAction::Continue
        );
    }

    #[tokio::test]
    async fn sleep_waits_on_a_timer_and_can_be_dropped() {
        let plugin = configured(json!({"sleep_ms": 20})).await;
        let mut call = plugin.handle(get("/x"));
        assert!(
            poll_once(call.as_mut()).is_pending(),
            "it awaits, not blocks"
        );
        let response = call.await.unwrap();
        assert_eq!(body_json(&response), json!({"ok": true, "calls": 1}));

        // Past a timeout the future is dropped: a minute-long sleep ends at once, and the next call
        // is served (and counted).
        let plugin = configured(json!({"sleep_ms": 60_000, "only_path_suffix": "/slow"})).await;
        let timed_out =
            tokio::time::timeout(Duration::from_millis(10), plugin.handle(get("/x/slow"))).await;
        assert!(timed_out.is_err(), "a minute-long sleep outlived 10 ms");
        let response = plugin.handle(get("/x/fast")).await.unwrap();
        assert_eq!(body_json(&response), json!({"ok": true, "calls": 2}));
    }

    #[tokio::test]
    async fn block_holds_the_thread_within_one_poll() {
        let plugin = configured(json!({"block_ms": 30})).await;
        let started = Instant::now();
        let mut call = plugin.handle(get("/x"));
        // Done within the first poll: the thread was held for the whole duration.
        let Poll::Ready(result) = poll_once(call.as_mut()) else {
            panic!("a blocking call is ready after one poll");
        };
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(body_json(&result.unwrap()), json!({"ok": true, "calls": 1}));
    }

    #[tokio::test]
    async fn body_bytes_answers_a_body_of_that_size() {
        let plugin = configured(json!({"body_bytes": 100_000})).await;
        let response = plugin.handle(get("/x")).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 100_000);
        assert!(response.body.iter().all(|&b| b == b'x'));
        assert_eq!(
            response.headers.get("content-type"),
            Some("application/octet-stream")
        );
    }

    #[tokio::test]
    async fn bad_header_answers_a_line_feed_in_a_header_value() {
        let plugin = configured(json!({"bad_header": true})).await;
        let response = plugin.handle(get("/x")).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.headers.get(BAD_HEADER_NAME), Some("bad\nvalue"));
        assert_eq!(body_json(&response), json!({"ok": true, "calls": 1}));
    }

    #[tokio::test]
    async fn respond_status_is_a_response_not_an_error() {
        let plugin = configured(json!({"respond_status": 503})).await;
        let response = plugin.handle(get("/x")).await.unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(body_json(&response), json!({"ok": false, "calls": 1}));
        let plugin = configured(json!({"respond_status": 1000})).await;
        assert_eq!(plugin.handle(get("/x")).await.unwrap().status, 1000);
    }

    #[tokio::test]
    async fn fail_first_fails_then_recovers_and_the_count_shows_every_call() {
        let plugin = configured(json!({"fail_first": 3})).await;
        for n in 1..=3 {
            let err = plugin.handle(get("/x")).await.unwrap_err();
            assert_eq!(err, PluginError::Internal(fail_first_message(n, 3)));
            assert_eq!(
                err.message(),
                format!("faulty: call {n} fails (fail_first 3)")
            );
        }
        for n in 4..=5u64 {
            let response = plugin.handle(get("/x")).await.unwrap();
            assert_eq!(body_json(&response), json!({"ok": true, "calls": n}));
        }
    }

    #[tokio::test]
    async fn health_reports_what_the_config_says() {
        for (setting, expected) in [
            ("healthy", Health::Healthy),
            ("degraded", Health::Degraded(DEGRADED_MESSAGE.into())),
            ("unhealthy", Health::Unhealthy(UNHEALTHY_MESSAGE.into())),
        ] {
            let plugin = configured(json!({ "health": setting })).await;
            assert_eq!(plugin.health_check().await, expected, "{setting}");
            // Health does not change how calls are served.
            assert_eq!(plugin.handle(get("/x")).await.unwrap().status, 200);
        }
        // A delayed report waits on a timer: a minute-long delay outlives a 10 ms timeout.
        let plugin = configured(json!({"health": "degraded", "health_delay_ms": 60_000})).await;
        let timed_out =
            tokio::time::timeout(Duration::from_millis(10), plugin.health_check()).await;
        assert!(timed_out.is_err(), "a minute-long delay outlived 10 ms");
        let plugin = configured(json!({"health": "degraded", "health_delay_ms": 1})).await;
        assert_eq!(
            plugin.health_check().await,
            Health::Degraded(DEGRADED_MESSAGE.into())
        );
    }

    #[tokio::test]
    async fn only_matching_paths_misbehave() {
        let plugin =
            configured(json!({"error": {"message": "bad path"}, "only_path_suffix": "/bad"})).await;
        let ok = plugin.handle(get("/items/good")).await.unwrap();
        assert_eq!(body_json(&ok), json!({"ok": true, "calls": 1}));
        let err = plugin.handle(get("/items/bad")).await.unwrap_err();
        assert_eq!(err.message(), "bad path");
        let ok = plugin.handle(get("/bad/not-at-end")).await.unwrap();
        assert_eq!(body_json(&ok), json!({"ok": true, "calls": 3}));
    }

    #[tokio::test]
    async fn hooks_misbehave_when_listed() {
        let plugin = configured(json!({
            "error": {"kind": "forbidden", "message": "no"},
            "apply_to": ["before_request"],
        }))
        .await;
        let err = plugin.before_request(&get("/x")).await.unwrap_err();
        assert_eq!((err.status(), err.message()), (403, "no"));
        assert_eq!(plugin.handle(get("/x")).await.unwrap().status, 200);

        // A behaviour that answers makes `before_request` respond early and `after_response`
        // replace the response.
        let plugin = configured(json!({
            "respond_status": 502,
            "apply_to": ["before_request", "after_response"],
        }))
        .await;
        match plugin.before_request(&get("/x")).await.unwrap() {
            HookAction::Respond(response) => assert_eq!(response.status, 502),
            other => panic!("expected an early answer, got {other:?}"),
        }
        let replaced = plugin
            .after_response(&get("/x"), Response::new(200))
            .await
            .unwrap();
        assert_eq!(body_json(&replaced), json!({"ok": false, "calls": 2}));

        // A behaviour that goes on continues / passes the response through.
        let plugin = configured(json!({"fail_first": 1, "apply_to": ["after_response"]})).await;
        let request = get("/x");
        assert!(
            plugin
                .after_response(&request, Response::new(201))
                .await
                .is_err()
        );
        let passed = plugin
            .after_response(&request, Response::new(201))
            .await
            .unwrap();
        assert_eq!(passed.status, 201);
    }

    #[tokio::test]
    async fn hog_keeps_what_it_allocates() {
        let plugin = configured(json!({"hog_mb": 2})).await;
        let first = plugin.handle(get("/x")).await.unwrap();
        assert_eq!(
            body_json(&first),
            json!({"ok": true, "calls": 1, "held_mb": 2})
        );
        let second = plugin.handle(get("/x")).await.unwrap();
        assert_eq!(
            body_json(&second),
            json!({"ok": true, "calls": 2, "held_mb": 4})
        );
    }

    #[tokio::test]
    async fn a_bad_config_fails_initialize_with_a_config_error() {
        let err = Faulty::default()
            .initialize(json!({"sleep_ms": "long"}))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(
            err.to_string()
                .starts_with("invalid configuration: field `sleep_ms`: invalid type"),
            "{err}"
        );
    }

    // The lethal behaviours, each in a child process: this test binary re-run on `lethal_child`.

    const CHILD_CONFIG: &str = "FAULTY_CHILD_CONFIG";
    const CHILD_PATHS: &str = "FAULTY_CHILD_PATHS";
    const CHILD_LIMIT: &str = "FAULTY_CHILD_LIMIT";

    /// What a child process did.
    struct ChildRun {
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    }

    /// Runs `lethal_child` in a child process with `config`, calling `handle` on each of `paths`
    /// in turn; `limit` is `"memory"` (address space: what the child uses now plus 256 MiB) or
    /// `"cpu"` (one second of CPU time).
    fn run_child(config: Value, paths: &[&str], limit: Option<&str>) -> ChildRun {
        let exe = std::env::current_exe().expect("test executable");
        let mut command = Command::new(exe);
        command
            .args(["tests::lethal_child", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_CONFIG, config.to_string())
            .env(CHILD_PATHS, paths.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = limit {
            command.env(CHILD_LIMIT, limit);
        }
        let mut child = command.spawn().expect("spawn the test binary");
        // Liveness only: every case ends on its own well within this.
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not end within two minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        use std::io::Read as _;
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        ChildRun {
            status,
            stdout,
            stderr,
        }
    }

    impl ChildRun {
        fn context(&self) -> String {
            format!(
                "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.status, self.stdout, self.stderr
            )
        }

        /// Asserts that the child was killed by `signal`.
        fn assert_killed_by(&self, signal: nix::sys::signal::Signal) {
            assert_eq!(
                self.status.signal(),
                Some(signal as i32),
                "{}",
                self.context()
            );
        }
    }

    /// The address space the process uses now, in bytes (`VmSize`).
    fn address_space_now() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmSize in /proc/self/status");
        kib * 1024
    }

    #[test]
    #[ignore = "the child process of the lethal-behaviour tests; does nothing on its own"]
    fn lethal_child() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let Ok(config) = std::env::var(CHILD_CONFIG) else {
            return;
        };
        // No core files from the crashes on purpose.
        setrlimit(Resource::RLIMIT_CORE, 0, 0).expect("RLIMIT_CORE");
        match std::env::var(CHILD_LIMIT).as_deref() {
            Ok("memory") => {
                let (_, hard) = getrlimit(Resource::RLIMIT_AS).expect("RLIMIT_AS");
                setrlimit(Resource::RLIMIT_AS, address_space_now() + (256 << 20), hard)
                    .expect("RLIMIT_AS");
            }
            Ok("cpu") => {
                let (_, hard) = getrlimit(Resource::RLIMIT_CPU).expect("RLIMIT_CPU");
                setrlimit(Resource::RLIMIT_CPU, 1, hard).expect("RLIMIT_CPU");
            }
            _ => {}
        }
        let paths = std::env::var(CHILD_PATHS).unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let plugin = Faulty::default();
            let config: Value = serde_json::from_str(&config).expect("config JSON");
            plugin.initialize(config).await.expect("initialize");
            println!("initialized");
            for path in paths.split(',').filter(|p| !p.is_empty()) {
                match plugin.handle(get(path)).await {
                    Ok(r) => println!(
                        "{path} -> {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                    Err(e) => println!("{path} -> error {e}"),
                }
            }
        });
        println!("survived");
    }

    #[test]
    fn segfault_kills_the_process_with_sigsegv() {
        let run = run_child(
            json!({"segfault": true, "only_path_suffix": "/bad"}),
            &["/good", "/x/bad", "/after"],
            None,
        );
        run.assert_killed_by(nix::sys::signal::SIGSEGV);
        assert!(
            run.stdout
                .contains("/good -> 200 {\"calls\":1,\"ok\":true}"),
            "{}",
            run.context()
        );
        assert!(!run.stdout.contains("/after"), "{}", run.context());
    }

    #[test]
    fn abort_kills_the_process_with_sigabrt() {
        let run = run_child(json!({"abort": true}), &["/x"], None);
        run.assert_killed_by(nix::sys::signal::SIGABRT);
        assert!(
            run.stdout.contains("initialized") && !run.stdout.contains("survived"),
            "{}",
            run.context()
        );
    }

    #[test]
    fn exit_ends_the_process_mid_call_with_the_code() {
        let run = run_child(
            json!({"exit": 7, "only_path_suffix": "/bad"}),
            &["/good", "/bad", "/after"],
            None,
        );
        assert_eq!(run.status.code(), Some(7), "{}", run.context());
        assert!(run.stdout.contains("/good -> 200"), "{}", run.context());
        assert!(
            !run.stdout.contains("/bad ->") && !run.stdout.contains("/after"),
            "{}",
            run.context()
        );
    }

    #[test]
    fn crash_on_init_exits_with_status_3_before_serving() {
        let run = run_child(json!({"crash_on_init": true}), &["/x"], None);
        assert_eq!(
            run.status.code(),
            Some(CRASH_ON_INIT_STATUS),
            "{}",
            run.context()
        );
        assert!(!run.stdout.contains("initialized"), "{}", run.context());
    }

    #[test]
    fn spin_burns_cpu_until_its_limit_kills_it() {
        let run = run_child(json!({"spin": true}), &["/x"], Some("cpu"));
        run.assert_killed_by(nix::sys::signal::SIGXCPU);
        assert!(
            run.stdout.contains("initialized") && !run.stdout.contains("/x ->"),
            "{}",
            run.context()
        );
    }

    #[test]
    fn hog_aborts_past_an_address_space_limit() {
        let run = run_child(json!({"hog_mb": 4096}), &["/x"], Some("memory"));
        run.assert_killed_by(nix::sys::signal::SIGABRT);
        assert!(
            run.stderr
                .contains("memory allocation of 1048576 bytes failed"),
            "{}",
            run.context()
        );
    }
}

//! Process isolation's crash catalogue: a child that dies (signal, abort, exit, memory limit,
//! protocol violation), hangs, stops or reports unhealthy costs its calls (502 or 504) and is
//! restarted, while an in-process plugin on the same server keeps answering 200.

use serde_json::Value;

use crate::child::{QUICK_RESTART, fixture, python, signal, wait_gone};
use crate::observe::{FaultServer, admin, assert_error, metric};
use crate::support::panic_abort_plugin;

/// How a crash or a hang runs its course, as the admin API and `/metrics` show it.
impl FaultServer {
    /// Waits until plugin `name`'s child `pid`, which stopped answering, is killed and replaced:
    /// a new child runs, the last crash says `unresponsive`, and `pid` is gone. Returns the
    /// plugin's entry.
    async fn assert_killed_as_unresponsive(&self, name: &str, pid: u32) -> Value {
        let entry = self.restarted(name, 1).await;
        let process = &entry[admin::PROCESS];
        assert_ne!(process["pid"], pid, "{entry}");
        assert!(
            process["last_crash"]
                .as_str()
                .unwrap_or_default()
                .starts_with("unresponsive"),
            "{entry}"
        );
        wait_gone(&[pid], &format!("{name}'s unresponsive child is killed")).await;
        entry
    }

    /// The common course of a crash: `bad` answers 502 `crashed` with `why` in the message, the
    /// child is restarted (a new pid, one crash, one restart, in the admin API, the events and
    /// `/metrics`), and the control plugin answers 200 throughout. `good`, when the plugin has a
    /// path that does not crash, answers 200 before and after.
    async fn assert_crash_and_restart(
        &self,
        plugin: &str,
        bad: &str,
        good: Option<&str>,
        why: &str,
    ) {
        if let Some(good) = good {
            assert_eq!(
                self.get(good).await.status,
                200,
                "{plugin} before the crash"
            );
        }
        let first_pid = self.pid(plugin).await;
        let answer = self.get(bad).await;
        assert_error(&answer, 502, plugin, "crashed");
        assert!(self.detail(&answer).await.contains(why), "{}", answer.body);
        self.assert_control_serves().await;

        let entry = self.restarted(plugin, 1).await;
        let process = &entry[admin::PROCESS];
        assert_ne!(process["pid"], first_pid, "a new child: {entry}");
        assert_eq!(process["crashes"], 1, "{entry}");
        assert_eq!(process["restarts"], 1, "{entry}");
        let last_crash = process["last_crash"].as_str().unwrap_or_default();
        assert!(last_crash.contains(why), "{entry}");
        assert_eq!(
            entry["state"], "active",
            "restarting is not an error: {entry}"
        );
        assert_eq!(entry["stats"]["errors"]["crashed"], 1, "{entry}");
        let kinds = admin::event_kinds(&entry);
        let crashed = kinds.iter().position(|k| k == "crashed");
        let restarted = kinds.iter().position(|k| k == "restarted");
        assert!(
            crashed.is_some() && crashed < restarted,
            "crashed, then restarted: {entry}"
        );
        let labels = [("plugin", plugin)];
        assert_eq!(
            self.metric(metric::CRASHES, &labels).await,
            Some(1.0),
            "{plugin}"
        );
        assert_eq!(
            self.metric(metric::RESTARTS, &labels).await,
            Some(1.0),
            "{plugin}"
        );

        if let Some(good) = good {
            let answer = self.get(good).await;
            assert_eq!(
                answer.status, 200,
                "{plugin} after the restart: {}",
                answer.body
            );
        }
        self.assert_control_serves().await;
    }
}

/// One child of the crash catalogue: a plugin that crashes on a request and is restarted.
struct Crash {
    /// The plugin's name.
    plugin: &'static str,
    /// How it runs: its `path` or `command` line under `plugins:`, after its name.
    runs: String,
    /// More settings of its own (limits, frame size), before [`QUICK_RESTART`].
    settings: String,
    /// Its `config` line, when it has one.
    config: String,
    /// Its entry under `endpoints:`.
    endpoint: String,
    /// The request that crashes it.
    bad: String,
    /// A request that does not, when there is one (a script crashes on every call).
    good: Option<String>,
    /// What the crash is called, in the error's detail and the child's last crash.
    why: &'static str,
}

impl Crash {
    /// `libfaulty.so` in a child, with `fault` in its config for the paths that end in `/bad`:
    /// crashes at `{route}/bad`, answers 200 at `{route}/ok`.
    fn library(plugin: &'static str, route: &str, fault: &str, why: &'static str) -> Crash {
        Crash {
            plugin,
            runs: "    path: libfaulty.so\n    isolation: process\n".to_owned(),
            settings: String::new(),
            config: format!("    config: {{ {fault}, only_path_suffix: /bad }}\n"),
            endpoint: format!(
                "  {plugin}: {{ path: \"{route}/{{what}}\", plugin: {plugin}, hooks: [] }}\n"
            ),
            bad: format!("{route}/bad"),
            good: Some(format!("{route}/ok")),
            why,
        }
    }

    /// `python3 tests/fixtures/process/<script> [args]`, which crashes on every call, at `route`.
    fn script(plugin: &'static str, route: &str, script: &[&str], why: &'static str) -> Crash {
        let (script, args) = script.split_first().expect("a script");
        Crash {
            plugin,
            runs: format!("    command: {}\n", python(fixture(script), args)),
            settings: String::new(),
            config: String::new(),
            endpoint: format!("  {plugin}: {{ path: {route}, plugin: {plugin}, hooks: [] }}\n"),
            bad: route.to_owned(),
            good: None,
            why,
        }
    }

    /// With `line` among its settings.
    fn with(mut self, line: &str) -> Crash {
        self.settings = format!("{}    {line}\n", self.settings);
        self
    }
}

/// Serves `crashes` on one server, then crashes each in turn and follows its course
/// ([`FaultServer::assert_crash_and_restart`]); returns the server for what a case checks more.
async fn crash_each(crashes: &[Crash]) -> FaultServer {
    let plugins: String = crashes
        .iter()
        .map(|c| {
            let Crash {
                plugin,
                runs,
                settings,
                config,
                ..
            } = c;
            format!("\n  {plugin}:\n{runs}{settings}{QUICK_RESTART}{config}")
        })
        .collect();
    let endpoints: String = crashes.iter().map(|c| c.endpoint.as_str()).collect();
    let ps = FaultServer::start(&plugins, &format!("\n{endpoints}")).await;
    for c in crashes {
        ps.assert_crash_and_restart(c.plugin, &c.bad, c.good.as_deref(), c.why)
            .await;
    }
    ps
}

/// One test per row: the row's children served together, each crashed and restarted in turn
/// ([`crash_each`]); after `then |ps|`, a block that checks more on that server.
macro_rules! crash_catalogue {
    ($(
        $(#[doc = $doc:literal])*
        $test:ident: [$($crash:expr),+ $(,)?] $(then |$ps:ident| $more:block)?;
    )+) => {$(
        $(#[doc = $doc])*
        #[tokio::test]
        async fn $test() {
            let _ps = crash_each(&[$($crash),+]).await;
            $(let $ps = _ps; $more)?
        }
    )+};
}

crash_catalogue! {
    a_segfault_costs_its_call_and_the_child_restarts:
        [Crash::library("segv", "/segv", "segfault: true", "SIGSEGV")]
        then |ps| {
            // The message says it as the shell would (core dumps may add `, core dumped`).
            let answer = ps.get("/segv/bad").await;
            assert!(
                ps.detail(&answer)
                    .await
                    .contains("child exited with signal 11 (SIGSEGV)"),
                "{}",
                answer.body
            );
        };

    an_abort_costs_its_call_and_the_child_restarts:
        [Crash::library("aborter", "/abort", "abort: true", "SIGABRT")];

    an_exit_in_the_middle_of_a_call_costs_it_and_the_child_restarts: [
        Crash::library("quitter", "/quit", "exit: 1", "child exited with status 1"),
        Crash::script(
            "quitter-py",
            "/quit-py",
            &["exit_mid_call.py"],
            "child exited with status 1",
        ),
    ];

    /// The runner and its runtimes take about 200 MiB of address space; 512 MiB more cannot fit.
    a_memory_hog_dies_at_its_limit_and_the_child_restarts:
        [Crash::library("hog", "/hog", "hog_mb: 512", "SIGABRT").with("limits: { memory_mb: 384 }")]
        then |ps| {
            // It was the allocation that failed, under the address-space limit.
            ps.log_line(&["memory allocation of", "failed", r#"plugin="hog""#])
                .await;
        };

    /// docs/protocol.md §9: a line that is not JSON is a protocol violation: 502 `crashed`, the
    /// child is killed and restarted.
    garbage_on_stdout_is_a_crash_and_the_child_restarts:
        [Crash::script("garbage", "/garbage", &["garbage_stdout.py"], "protocol violation")]
        then |ps| {
            let entry = ps.plugin("garbage").await;
            let last_crash = entry[admin::PROCESS]["last_crash"]
                .as_str()
                .unwrap_or_default();
            assert!(last_crash.contains("this is not json"), "{entry}");
        };

    a_frame_over_the_limit_is_a_crash_and_the_child_restarts: [
        Crash::script(
            "oversized",
            "/oversized",
            &["oversized_frame.py", "65536"],
            "protocol violation: frame of over 65536 bytes",
        )
        .with("max_frame: 65536"),
    ];
}

#[tokio::test]
async fn a_panic_abort_plugin_runs_isolated_and_a_panic_costs_its_call() {
    // The same library, built with panic = "abort": refused in process, served in a child, where
    // a panic aborts the child only.
    let library = panic_abort_plugin().display().to_string();
    let ps = FaultServer::start(
        &format!(
            r#"
  isolated:
    path: "{library}"
    isolation: process
{QUICK_RESTART}  in_host:
    path: "{library}"
"#
        ),
        r#"
  isolated: { path: "/isolated/{what}", plugin: isolated, hooks: [] }
  in_host: { path: /in-host, plugin: in_host, hooks: [] }
"#,
    )
    .await;
    let refused = ps.plugin("in_host").await;
    assert_eq!(refused["state"], "error", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(r#"panic = "abort""#) && reason.contains("isolation: process"),
        "the reason names the way out: {refused}"
    );
    assert_error(&ps.get("/in-host").await, 503, "in_host", "unavailable");

    ps.assert_crash_and_restart(
        "isolated",
        "/isolated/panic",
        Some("/isolated/ok"),
        "SIGABRT",
    )
    .await;
    let line = ps
        .log_line(&["broken-panic: handle exploded", r#"plugin="isolated""#])
        .await;
    assert!(
        line.contains("panicked"),
        "the panic message is logged: {line}"
    );
}

#[tokio::test]
async fn a_process_hook_that_crashes_costs_its_request_and_restarts() {
    let ps = FaultServer::start(
        &format!(
            r#"
  hooker:
    path: libfaulty.so
    isolation: process
    hooks: [before_request]
{QUICK_RESTART}    config: {{ segfault: true, apply_to: [before_request], only_path_suffix: /bad }}
"#
        ),
        r#"
  hooked: { path: "/hooked/{what}", plugin: control, hooks: [hooker] }
"#,
    )
    .await;
    let answer = ps.get("/hooked/ok").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["ok"], true, "the control plugin answered");
    ps.assert_crash_and_restart("hooker", "/hooked/bad", Some("/hooked/ok"), "SIGSEGV")
        .await;
}

#[tokio::test]
async fn an_endless_loop_is_a_504_then_the_child_is_killed_and_restarted() {
    let ps = FaultServer::start(
        &format!(
            r#"
  spinner:
    path: libfaulty.so
    isolation: process
    timeout_ms: 2000
{QUICK_RESTART}    config: {{ spin: true, only_path_suffix: /bad }}
"#
        ),
        r#"
  spinner: { path: "/spin/{what}", plugin: spinner, hooks: [] }
"#,
    )
    .await;
    assert_eq!(ps.get("/spin/ok").await.status, 200);
    let first_pid = ps.pid("spinner").await;
    let answer = ps.get("/spin/bad").await;
    assert_error(&answer, 504, "spinner", "timeout");
    ps.assert_control_serves().await;

    // The child never answers again: the host finds out (a health check without an answer) and
    // kills it.
    let entry = ps.assert_killed_as_unresponsive("spinner", first_pid).await;
    assert!(
        entry[admin::PROCESS]["crashes"].as_u64() >= Some(1),
        "{entry}"
    );
    assert_eq!(entry["stats"]["timeouts"], 1, "{entry}");
    assert_eq!(
        ps.metric("backworks_plugin_timeouts_total", &[("plugin", "spinner")])
            .await,
        Some(1.0)
    );
    let answer = ps.get("/spin/ok").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    ps.assert_control_serves().await;
}

#[tokio::test]
async fn a_stopped_child_is_a_504_then_it_is_killed_and_restarted() {
    let ps = FaultServer::start(
        &format!(
            r#"
  frozen:
    path: libfaulty.so
    isolation: process
    timeout_ms: 2000
{QUICK_RESTART}  frozen-py:
    command: {}
    timeout_ms: 2000
{QUICK_RESTART}"#,
            python(fixture("echo.py"), &[])
        ),
        r#"
  frozen: { path: /frozen, methods: [POST], plugin: frozen, hooks: [] }
  frozen-py: { path: /frozen-py, methods: [POST], plugin: frozen-py, hooks: [] }
"#,
    )
    .await;
    for (plugin, path) in [("frozen", "/frozen"), ("frozen-py", "/frozen-py")] {
        let call = || ps.send(reqwest::Method::POST, path, b"hi".to_vec(), None);
        assert_eq!(call().await.status, 200, "{plugin}");
        let pid = ps.pid(plugin).await;
        signal("-STOP", pid);
        let answer = call().await;
        assert_error(&answer, 504, plugin, "timeout");
        ps.assert_control_serves().await;

        ps.assert_killed_as_unresponsive(plugin, pid).await;
        let answer = call().await;
        assert_eq!(
            answer.status, 200,
            "{plugin} after the restart: {}",
            answer.body
        );
        ps.assert_control_serves().await;
    }
}

#[tokio::test]
async fn a_child_reporting_unhealthy_three_times_in_a_row_is_restarted() {
    let ps = FaultServer::start_with_health(
        100,
        r#"
  sick:
    path: libfaulty.so
    isolation: process
    restart: { initial_backoff_ms: 50, max_restarts: 100 }
    config: { health: unhealthy }
"#,
        r#"
  sick: { path: /sick, plugin: sick, hooks: [] }
"#,
    )
    .await;
    // The first child may already be gone when the server first answers (three health checks
    // 100 ms apart): its pid is read from the crash event rather than raced for.
    let entry = ps.restarted("sick", 1).await;
    let crashed = admin::event_details(&entry, "crashed");
    let first = crashed
        .first()
        .unwrap_or_else(|| panic!("no crash: {entry}"));
    assert!(
        first.starts_with("unhealthy 3 times in a row: faulty: configured unhealthy"),
        "{entry}"
    );
    let first_pid: u64 = first
        .rsplit_once("(pid ")
        .and_then(|(_, pid)| pid.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in the crash event: {first}"));
    assert_ne!(entry[admin::PROCESS]["pid"], first_pid, "{entry}");
    let health_changes = admin::event_details(&entry, "health_changed");
    assert!(
        health_changes.iter().any(|d| d.contains("-> unhealthy")),
        "{entry}"
    );
    assert_eq!(entry["health"]["status"], "unhealthy", "{entry}");
    assert_eq!(
        ps.metric(
            "backworks_plugin_health",
            &[("plugin", "sick"), ("status", "unhealthy")]
        )
        .await,
        Some(1.0)
    );
    assert!(ps.metric(metric::RESTARTS, &[("plugin", "sick")]).await >= Some(1.0));
    ps.assert_control_serves().await;
}

#[tokio::test]
async fn every_call_in_flight_answers_502_when_the_child_dies() {
    let ps = FaultServer::start(
        &format!(
            r#"
  holder:
    path: libfaulty.so
    isolation: process
    timeout_ms: 600000
{QUICK_RESTART}    config: {{ sleep_ms: 600000, only_path_suffix: /hold }}
"#
        ),
        r#"
  holder: { path: "/holder/{what}", plugin: holder, hooks: [] }
"#,
    )
    .await;
    let pid = ps.pid("holder").await;
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let (http, url) = (ps.http.clone(), ps.server.url("/holder/hold"));
            tokio::spawn(async move {
                let res = http.get(url).send().await.expect("GET /holder/hold");
                let status = res.status().as_u16();
                (status, res.json::<Value>().await.expect("error JSON"))
            })
        })
        .collect();
    ps.wait_for("three calls in flight", || async {
        ps.plugin("holder").await["stats"]["in_flight"] == 3
    })
    .await;
    signal("-9", pid);
    for holder in holders {
        let (status, body) = holder.await.expect("holder task");
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["kind"], "crashed", "{body}");
        assert!(
            ps.detail(&crate::observe::Answer::of(status, body.clone()))
                .await
                .contains("child exited with signal 9 (SIGKILL)"),
            "{body}"
        );
    }
    let entry = ps.restarted("holder", 1).await;
    assert_eq!(entry["stats"]["errors"]["crashed"], 3, "{entry}");
    assert_eq!(entry[admin::PROCESS]["crashes"], 1, "one death: {entry}");
    assert_eq!(ps.get("/holder/fine").await.status, 200);
    ps.assert_control_serves().await;
}

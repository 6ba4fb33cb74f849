//! The process-isolation fault catalogue and the Python plugins (issue #4), against the real
//! server: one misbehaving child per case (`faulty` instances under `isolation: process`, the
//! scripts of `tests/fixtures/process/`), each test asserting the status codes, the child's
//! crashes, restarts and state through the admin API and `/metrics`, and that an in-process plugin
//! on the same server keeps answering 200.
//!
//! The server, the requests and the names the tests depend on (admin API, metric names, config
//! layout) are shared with `faults.rs` in [`crate::observe`]; what only a child has (its pid,
//! restarts, crashes) is read here.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::observe::{FaultServer, PATIENCE, admin, assert_error, metric};
use crate::support::{Server, client, panic_abort_plugin, root, serve_until_exit};

/// Settings that make a crash test quick: restarts after 50 ms, and no breaker, which would
/// otherwise refuse calls after failures and hide crashes from the counts.
const QUICK_RESTART: &str = "    breaker: { enabled: false }\n    \
                             restart: { initial_backoff_ms: 50, max_backoff_ms: 200 }\n";

/// What the tests read of a process plugin's child.
impl FaultServer {
    /// The pid of plugin `name`'s running child.
    pub(crate) async fn pid(&self, name: &str) -> u32 {
        let entry = self.plugin(name).await;
        assert_eq!(entry[admin::PROCESS]["state"], "running", "{entry}");
        entry[admin::PROCESS]["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no pid for {name}: {entry}"))
    }

    /// Waits until plugin `name`'s child is running again after at least `restarts` restarts, and
    /// returns the plugin's entry.
    pub(crate) async fn restarted(&self, name: &str, restarts: u64) -> Value {
        self.poll_until(
            &format!("{name} to be restarted {restarts} time(s)"),
            || async move {
                let entry = self.plugin(name).await;
                let process = &entry[admin::PROCESS];
                (process["state"] == "running" && process["restarts"].as_u64() >= Some(restarts))
                    .then_some(entry)
            },
        )
        .await
    }

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

/// `python3 <fixture> [args]` as a YAML flow list (absolute path: the child runs in the config's
/// folder, a temporary directory).
pub(crate) fn python(script: PathBuf, args: &[&str]) -> String {
    let mut argv = vec!["python3".to_owned(), script.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    // A JSON array is a YAML flow sequence.
    serde_json::to_string(&argv).expect("argv as JSON")
}

/// A script of `tests/fixtures/process/`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/process").join(name)
}

/// Whether process `pid` is gone: not in `/proc`, or a zombie nobody reaped yet (pid 1 of a
/// container may not reap).
pub(crate) fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

/// Waits until every one of `pids` is [`gone`]; panics naming `what` and the survivors after
/// [`PATIENCE`].
pub(crate) async fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| !gone(pid)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still running {alive:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (`-STOP`, `-9`) to `pid` with `kill`.
pub(crate) fn signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The soft limit on the `/proc/<pid>/limits` line that starts with `name`.
fn soft_limit(pid: u32, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{limits}"));
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_segfault_costs_its_call_and_the_child_restarts() {
    let ps = FaultServer::start(
        &format!(
            r#"
  segv:
    path: libfaulty.so
    isolation: process
{QUICK_RESTART}    config: {{ segfault: true, only_path_suffix: /bad }}
"#
        ),
        r#"
  segv: { path: "/segv/{what}", plugin: segv, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart("segv", "/segv/bad", Some("/segv/ok"), "SIGSEGV")
        .await;
    // The message says it as the shell would (core dumps may add `, core dumped`).
    let answer = ps.get("/segv/bad").await;
    assert!(
        ps.detail(&answer)
            .await
            .contains("child exited with signal 11 (SIGSEGV)"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn an_abort_costs_its_call_and_the_child_restarts() {
    let ps = FaultServer::start(
        &format!(
            r#"
  aborter:
    path: libfaulty.so
    isolation: process
{QUICK_RESTART}    config: {{ abort: true, only_path_suffix: /bad }}
"#
        ),
        r#"
  aborter: { path: "/abort/{what}", plugin: aborter, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart("aborter", "/abort/bad", Some("/abort/ok"), "SIGABRT")
        .await;
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
async fn an_exit_in_the_middle_of_a_call_costs_it_and_the_child_restarts() {
    let ps = FaultServer::start(
        &format!(
            r#"
  quitter:
    path: libfaulty.so
    isolation: process
{QUICK_RESTART}    config: {{ exit: 1, only_path_suffix: /bad }}
  quitter-py:
    command: {}
{QUICK_RESTART}"#,
            python(fixture("exit_mid_call.py"), &[])
        ),
        r#"
  quitter: { path: "/quit/{what}", plugin: quitter, hooks: [] }
  quitter-py: { path: /quit-py, plugin: quitter-py, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart(
        "quitter",
        "/quit/bad",
        Some("/quit/ok"),
        "child exited with status 1",
    )
    .await;
    ps.assert_crash_and_restart("quitter-py", "/quit-py", None, "child exited with status 1")
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
async fn a_memory_hog_dies_at_its_limit_and_the_child_restarts() {
    // The runner and its runtimes take about 200 MiB of address space; 512 MiB more cannot fit.
    let ps = FaultServer::start(
        &format!(
            r#"
  hog:
    path: libfaulty.so
    isolation: process
    limits: {{ memory_mb: 384 }}
{QUICK_RESTART}    config: {{ hog_mb: 512, only_path_suffix: /bad }}
"#
        ),
        r#"
  hog: { path: "/hog/{what}", plugin: hog, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart("hog", "/hog/bad", Some("/hog/ok"), "SIGABRT")
        .await;
    // It was the allocation that failed, under the address-space limit.
    ps.log_line(&["memory allocation of", "failed", r#"plugin="hog""#])
        .await;
}

#[tokio::test]
async fn garbage_on_stdout_is_a_crash_and_the_child_restarts() {
    // docs/protocol.md §9: a line that is not JSON is a protocol violation: 502 `crashed`, the
    // child is killed and restarted.
    let ps = FaultServer::start(
        &format!(
            r#"
  garbage:
    command: {}
{QUICK_RESTART}"#,
            python(fixture("garbage_stdout.py"), &[])
        ),
        r#"
  garbage: { path: /garbage, plugin: garbage, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart("garbage", "/garbage", None, "protocol violation")
        .await;
    let entry = ps.plugin("garbage").await;
    let last_crash = entry[admin::PROCESS]["last_crash"]
        .as_str()
        .unwrap_or_default();
    assert!(last_crash.contains("this is not json"), "{entry}");
}

#[tokio::test]
async fn a_frame_over_the_limit_is_a_crash_and_the_child_restarts() {
    let ps = FaultServer::start(
        &format!(
            r#"
  oversized:
    command: {}
    max_frame: 65536
{QUICK_RESTART}"#,
            python(fixture("oversized_frame.py"), &["65536"])
        ),
        r#"
  oversized: { path: /oversized, plugin: oversized, hooks: [] }
"#,
    )
    .await;
    ps.assert_crash_and_restart(
        "oversized",
        "/oversized",
        None,
        "protocol violation: frame of over 65536 bytes",
    )
    .await;
}

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

/// A server with two children and no endpoints, `lib` (the `faulty` library) and `py` (the echo
/// fixture), and their pids.
async fn two_children() -> (FaultServer, [u32; 2]) {
    let ps = FaultServer::start(
        &format!(
            r#"
  lib:
    path: libfaulty.so
    isolation: process
  py:
    command: {}
"#,
            python(fixture("echo.py"), &[])
        ),
        "",
    )
    .await;
    let children = [ps.pid("lib").await, ps.pid("py").await];
    (ps, children)
}

#[tokio::test]
async fn children_die_with_the_host_even_when_it_is_killed() {
    let (ps, children) = two_children().await;
    for pid in children {
        assert!(!gone(pid), "child {pid} runs");
    }
    signal("-9", ps.server.pid());
    wait_gone(&children, "children outlive the host").await;
}

#[tokio::test]
async fn child_stderr_reaches_the_host_log_at_its_level_tagged_with_the_plugin() {
    let ps = FaultServer::start(
        &format!(
            r#"
  echo:
    command: {}
  quitter:
    command: {}
    restart: {{ initial_backoff_ms: 50 }}
  lib:
    path: libfaulty.so
    isolation: process
    config: {{ sleep_ms: 1, only_path_suffix: /slow }}
  talker:
    command: {}
"#,
            python(fixture("echo.py"), &[]),
            python(fixture("exit_mid_call.py"), &[]),
            talker_command(),
        ),
        r#"
  quitter: { path: /quit, plugin: quitter, hooks: [] }
"#,
    )
    .await;
    // A prefixed stderr line of a command, at its level (`INFO:` → INFO, the prefix removed).
    let line = ps.log_line(&["echo ready", r#"plugin="echo""#]).await;
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        !line.contains("INFO: echo ready"),
        "the prefix is the level: {line}"
    );
    // A library's `tracing` line in the runner, at its level.
    let line = ps
        .log_line(&["faulty initialized: sleep_ms=1", r#"plugin="lib""#])
        .await;
    assert!(line.contains(" INFO "), "{line}");
    // An error line, written just before the child died.
    assert_eq!(ps.get("/quit").await.status, 502);
    let line = ps
        .log_line(&[
            "exit_mid_call: exiting with status 1",
            r#"plugin="quitter""#,
        ])
        .await;
    assert!(line.contains(" ERROR "), "{line}");
    // docs/protocol.md §8: the level word, in any case, then a colon; anything else is info.
    for (level, text, dropped) in [
        (" WARN ", "root:slow upstream", Some("WARNING:")),
        (" ERROR ", "spaced out", Some("error:")),
        (" INFO ", "Traceback (most recent call last):", None),
    ] {
        let line = ps.log_line(&[text, r#"plugin="talker""#]).await;
        assert!(line.contains(level), "{level}: {line}");
        if let Some(prefix) = dropped {
            assert!(!line.contains(prefix), "the prefix is the level: {line}");
        }
    }
    ps.assert_control_serves().await;
}

/// A command that writes log lines of several shapes on stderr, then runs the echo fixture.
fn talker_command() -> String {
    let script = format!(
        "printf '%s\\n' 'WARNING:root:slow upstream' 'error:   spaced out' \
         'Traceback (most recent call last):' >&2; exec python3 {}",
        fixture("echo.py").display()
    );
    serde_json::to_string(&["sh", "-c", &script]).expect("argv as JSON")
}

#[tokio::test]
async fn resource_limits_apply_to_the_child() {
    let ps = FaultServer::start(
        &format!(
            r#"
  lib:
    path: libfaulty.so
    isolation: process
    limits: {{ memory_mb: 1024, cpu_seconds: 600, open_files: 64 }}
  py:
    command: {}
    limits: {{ memory_mb: 512, open_files: 16 }}
"#,
            python(fixture("echo.py"), &[])
        ),
        r#"
  lib: { path: /lib, plugin: lib, hooks: [] }
  py: { path: /py, methods: [POST], plugin: py, hooks: [] }
"#,
    )
    .await;
    let lib = ps.pid("lib").await;
    assert_eq!(
        soft_limit(lib, "Max address space"),
        (1024u64 << 20).to_string()
    );
    assert_eq!(soft_limit(lib, "Max cpu time"), "600");
    assert_eq!(soft_limit(lib, "Max open files"), "64");
    // A command gets them too: they are set before it is executed.
    let py = ps.pid("py").await;
    assert_eq!(
        soft_limit(py, "Max address space"),
        (512u64 << 20).to_string()
    );
    assert_eq!(soft_limit(py, "Max open files"), "16");
    // And both serve under them.
    assert_eq!(ps.get("/lib").await.status, 200);
    let answer = ps
        .send(reqwest::Method::POST, "/py", b"limited".to_vec(), None)
        .await;
    assert_eq!(
        (answer.status, answer.bytes.as_slice()),
        (200, &b"limited"[..])
    );
    ps.assert_control_serves().await;
}

/// The files process `pid` has open, by descriptor.
fn open_files(pid: u32) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), target))
        })
        .collect()
}

#[tokio::test]
async fn children_do_not_inherit_descriptors_the_host_inherited() {
    let held = tempfile::NamedTempFile::new().expect("a file for the host to hold");
    let held_path = held.path().canonicalize().expect("its path");
    let server = Server::start_holding(
        &format!(
            r#"
plugin_dirs: ["{{{{plugins}}}}"]
plugins:
  lib:
    path: libfaulty.so
    isolation: process
  py:
    command: {}
"#,
            python(fixture("echo.py"), &[])
        ),
        &held_path,
    );
    // The host holds it on descriptor 9, without close-on-exec (the shell opened it)…
    assert!(
        open_files(server.pid()).contains(&("9".to_owned(), held_path.clone())),
        "the host should hold {}: {:?}",
        held_path.display(),
        open_files(server.pid())
    );
    // …and neither child has it: the runner closed it before loading the library or `exec`ing.
    let http = client();
    for name in ["lib", "py"] {
        let entry: Value = http
            .get(server.admin_url(&admin::plugin(name)))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .json()
            .await
            .expect("JSON");
        let pid = entry[admin::PROCESS]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid for {name}: {entry}"));
        let files = open_files(u32::try_from(pid).expect("a pid"));
        assert!(
            files.iter().all(|(_, target)| target != &held_path),
            "{name}'s child (pid {pid}) inherited {}: {files:?}",
            held_path.display()
        );
    }
}

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
    let first_pid = ps.pid("sick").await;
    let entry = ps.restarted("sick", 1).await;
    assert_ne!(entry[admin::PROCESS]["pid"], first_pid, "{entry}");
    let crashed = admin::event_details(&entry, "crashed");
    assert!(
        crashed
            .first()
            .is_some_and(|detail| detail
                .starts_with("unhealthy 3 times in a row: faulty: configured unhealthy")),
        "{entry}"
    );
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
async fn spinning_children_answer_every_call_in_a_loop_and_at_once() {
    // `spin_us` on a library child and a command: both ends poll between close messages. Every
    // call, one after another (the case spinning is for) and many at once, gets its own answer.
    let ps = FaultServer::start(
        &format!(
            r#"
  quick:
    path: libfaulty.so
    isolation: process
    spin_us: 50
  py:
    command: {}
    spin_us: 50
"#,
            python(fixture("echo.py"), &[])
        ),
        r#"
  quick: { path: "/quick/{n}", plugin: quick, hooks: [] }
  py: { path: /py, methods: [POST], plugin: py, hooks: [] }
"#,
    )
    .await;
    // The runner was told (a command gets the variable too, to spin on its side if it wants).
    for name in ["quick", "py"] {
        let pid = ps.pid(name).await;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(
            environ
                .split(|&b| b == 0)
                .any(|var| var == b"BACKWORKS_PLUGIN_SPIN_US=50"),
            "{name}'s child has BACKWORKS_PLUGIN_SPIN_US=50"
        );
    }
    for i in 0..200 {
        let answer = ps.get(&format!("/quick/{i}")).await;
        assert_eq!(answer.status, 200, "call {i}: {}", answer.body);
        let body = format!("call {i}").into_bytes();
        let answer = ps
            .send(reqwest::Method::POST, "/py", body.clone(), None)
            .await;
        assert_eq!((answer.status, answer.bytes), (200, body), "py call {i}");
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (http, url) = (ps.http.clone(), ps.server.url("/py"));
        calls.spawn(async move {
            let body = format!("at once {i}");
            let res = http
                .post(url)
                .body(body.clone())
                .send()
                .await
                .expect("POST /py");
            (res.status().as_u16(), res.text().await.expect("body"), body)
        });
    }
    while let Some(call) = calls.join_next().await {
        let (status, got, sent) = call.expect("call task");
        assert_eq!((status, got), (200, sent));
    }
    let quick = ps.plugin("quick").await;
    assert_eq!(quick["stats"]["calls"], 200, "{quick}");
    assert_eq!(quick[admin::PROCESS]["restarts"], 0, "{quick}");
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
async fn children_stop_cleanly_when_the_host_shuts_down() {
    let (ps, children) = two_children().await;
    let logs = ps.server.stop();
    wait_gone(&children, "children outlive the host").await;
    for plugin in ["lib", "py"] {
        let tag = format!(r#"plugin="{plugin}""#);
        assert!(
            logs.lines()
                .any(|l| l.contains(&tag) && l.contains(r#"event="shut_down""#)),
            "{plugin} shut down:\n{logs}"
        );
        assert!(
            !logs
                .lines()
                .any(|l| l.contains(&tag) && l.contains(r#"event="crashed""#)),
            "a shutdown is not a crash:\n{logs}"
        );
    }
}

#[tokio::test]
async fn a_commands_own_children_die_with_the_host_even_when_it_is_killed() {
    // The plugin's process group outlives a SIGKILLed host unless something kills it: the
    // parent-death signal reaches only the direct child.
    let dir = tempfile::tempdir().expect("a folder for the grandchild's pid file");
    let script = format!(
        "sleep 600 & echo $! > {}/grandchild.pid; exec python3 {}",
        dir.path().display(),
        fixture("echo.py").display()
    );
    let argv = serde_json::to_string(&["sh", "-c", &script]).expect("argv as JSON");
    let ps = FaultServer::start(&format!("\n  forker:\n    command: {argv}\n"), "").await;
    let child = ps.pid("forker").await;
    let pid_file = dir.path().join("grandchild.pid");
    let grandchild: u32 = ps
        .poll_until("the grandchild's pid", || {
            let pid_file = pid_file.clone();
            async move { std::fs::read_to_string(pid_file).ok()?.trim().parse().ok() }
        })
        .await;
    assert!(!gone(grandchild), "the grandchild runs");
    signal("-9", ps.server.pid());
    let deadline = Instant::now() + PATIENCE;
    while !(gone(child) && gone(grandchild)) {
        if Instant::now() > deadline {
            let state = |pid| if gone(pid) { "gone" } else { "alive" };
            let message = format!(
                "outlived the host: child {child} {}, grandchild {grandchild} {}",
                state(child),
                state(grandchild)
            );
            let _ = Command::new("kill")
                .args(["-9", &grandchild.to_string()])
                .status();
            panic!("{message}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

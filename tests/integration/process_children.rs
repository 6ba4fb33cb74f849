//! What a plugin's child process gets and how it ends: resource limits, no inherited descriptors,
//! its stderr in the host's log, the spinning setting, and no child (nor its own children) left
//! behind when the host stops or is killed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::{fixture, gone, python, signal, wait_gone};
use crate::observe::{FaultServer, PATIENCE, admin};
use crate::support::{Server, client};

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
async fn children_die_with_the_host_even_when_it_is_killed() {
    let (ps, children) = two_children().await;
    for pid in children {
        assert!(!gone(pid), "child {pid} runs");
    }
    signal("-9", ps.server.pid());
    wait_gone(&children, "children outlive the host").await;
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

//! What process isolation promises the rest of the machine (issue #8, findings 5 and 7), against
//! the real server, a control plugin answering 200 throughout: no process a plugin starts outlives
//! it (a `setsid` double fork included) whether the plugin is stopped, crashes and restarts, or the
//! host is killed; children start with a clean environment; and a child that stops reading its
//! input costs the host bounded memory, its calls answer 503, and it is restarted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::{QUICK_RESTART, fixture, gone, python, signal};
use crate::observe::{FaultServer, PATIENCE, admin, assert_error};

/// A server with `forker` (`double_fork.py`, appending each start's grandchild pid to `pid_file`)
/// at `/fork/{what}`.
async fn forker_server(pid_file: &Path) -> FaultServer {
    let argv = python(
        fixture("double_fork.py"),
        &[pid_file.to_str().expect("a UTF-8 temporary path")],
    );
    FaultServer::start(
        &format!("\n  forker:\n    command: {argv}\n{QUICK_RESTART}"),
        "  forker: { path: \"/fork/{what}\", plugin: forker, hooks: [] }\n",
    )
    .await
}

/// The grandchildren's pids, once `pid_file` holds `count` of them.
async fn grandchildren(ps: &FaultServer, pid_file: &Path, count: usize) -> Vec<u32> {
    ps.poll_until(&format!("{count} grandchild pid(s)"), || async move {
        let text = std::fs::read_to_string(pid_file).ok()?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len() >= count).then_some(pids)
    })
    .await
}

/// The plugin process and the runner above it, from the admin API.
async fn child_pids(ps: &FaultServer, plugin: &str) -> (u32, Option<u32>) {
    let entry = ps.plugin(plugin).await;
    let process = &entry[admin::PROCESS];
    let pid = process["pid"].as_u64().expect("a pid") as u32;
    let runner = process["runner_pid"].as_u64().map(|p| p as u32);
    (pid, runner)
}

/// Waits until every one of `pids` is [`gone`]; after [`PATIENCE`], kills the survivors (so that
/// a failing run leaves nothing behind) and panics naming them.
async fn assert_all_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| !gone(pid)).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &alive {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            panic!("{what}: still running {alive:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills whatever of `pids` still runs (clean-up after a test whose assertions failed).
fn kill_all(pids: &[u32]) {
    for pid in pids.iter().filter(|&&pid| !gone(pid)) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

#[tokio::test]
async fn a_setsid_grandchild_dies_when_the_server_stops() {
    let dir = tempfile::tempdir().expect("a folder for the pid file");
    let pid_file = dir.path().join("grandchildren");
    let ps = forker_server(&pid_file).await;
    let daemon = grandchildren(&ps, &pid_file, 1).await[0];
    assert!(!gone(daemon), "the grandchild runs");
    assert_eq!(ps.get("/fork/hello").await.status, 200);
    ps.assert_control_serves().await;
    let entry = ps.plugin("forker").await;
    let (pid, runner) = child_pids(&ps, "forker").await;
    let logs = ps.server.stop();
    assert_all_gone(&[daemon, pid], "the plugin stopped").await;
    assert_eq!(entry[admin::PROCESS]["containment"], "subreaper", "{entry}");
    let runner = runner.expect("a runner above the plugin process");
    assert_ne!(runner, pid);
    assert!(gone(runner));
    assert!(
        logs.lines()
            .any(|l| l.contains(r#"plugin="forker""#) && l.contains(r#"containment="subreaper""#)),
        "the log says which containment is in force:\n{logs}"
    );
}

#[tokio::test]
async fn a_setsid_grandchild_dies_when_its_plugin_crashes_and_restarts() {
    let dir = tempfile::tempdir().expect("a folder for the pid file");
    let pid_file = dir.path().join("grandchildren");
    let ps = forker_server(&pid_file).await;
    let first = grandchildren(&ps, &pid_file, 1).await[0];
    assert!(!gone(first), "the first grandchild runs");

    let answer = ps.get("/fork/crash").await;
    assert_error(&answer, 502, "forker", "crashed");
    // The runner ends as the plugin process did: the host still reads the plugin's signal.
    assert!(
        ps.detail(&answer).await.contains("SIGSEGV"),
        "{}",
        answer.body
    );
    ps.assert_control_serves().await;
    ps.restarted("forker", 1).await;
    let pids = grandchildren(&ps, &pid_file, 2).await;
    let second = pids[1];
    let first_gone = tokio::spawn({
        let pids = [first];
        async move { assert_all_gone(&pids, "the crashed plugin's grandchild").await }
    })
    .await;
    if first_gone.is_err() {
        kill_all(&[second]);
        panic!("the crashed plugin's grandchild {first} outlived it");
    }
    assert!(!gone(second), "the restarted plugin's own grandchild runs");
    assert_eq!(ps.get("/fork/ok").await.status, 200);
    ps.assert_control_serves().await;
    drop(ps);
    assert_all_gone(&[second], "the plugin stopped").await;
}

#[tokio::test]
async fn a_setsid_grandchild_dies_when_the_host_is_killed() {
    let dir = tempfile::tempdir().expect("a folder for the pid file");
    let pid_file = dir.path().join("grandchildren");
    let ps = forker_server(&pid_file).await;
    let daemon = grandchildren(&ps, &pid_file, 1).await[0];
    let (pid, runner) = child_pids(&ps, "forker").await;
    ps.assert_control_serves().await;
    signal("-9", ps.server.pid());
    let mut pids = vec![daemon, pid];
    pids.extend(runner);
    assert_all_gone(&pids, "outlived the SIGKILLed host").await;
}

/// A library plugin's descendants are contained the same way: `faulty` with `spawn_daemon`
/// leaves a `setsid` grandchild from `initialize`.
#[tokio::test]
async fn a_library_plugins_setsid_grandchild_dies_when_the_host_is_killed() {
    let dir = tempfile::tempdir().expect("a folder for the pid file");
    let pid_file = dir.path().join("grandchildren");
    let ps = FaultServer::start(
        &format!(
            "\n  lib:\n    path: libfaulty.so\n    isolation: process\n    \
             config: {{ spawn_daemon: \"{}\" }}\n",
            pid_file.display()
        ),
        "",
    )
    .await;
    let daemon = grandchildren(&ps, &pid_file, 1).await[0];
    let (pid, runner) = child_pids(&ps, "lib").await;
    assert!(!gone(daemon), "the grandchild runs");
    ps.assert_control_serves().await;
    signal("-9", ps.server.pid());
    let mut pids = vec![daemon, pid];
    pids.extend(runner);
    assert_all_gone(&pids, "outlived the SIGKILLed host").await;
}

/// `/proc/<pid>/environ` as `NAME=value` strings.
fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc environ");
    bytes
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

const SECRET: (&str, &str) = ("BACKWORKS_ADMIN_TOKEN", "s3cret-admin-token");

#[tokio::test]
async fn children_do_not_inherit_the_hosts_secrets() {
    let ps = FaultServer::start_with_env(
        &format!(
            "\n  py:\n    command: {}\n  lib:\n    path: libfaulty.so\n    isolation: process\n",
            python(fixture("echo.py"), &[])
        ),
        "",
        &[SECRET, ("REGION", "eu-west")],
    )
    .await;
    let secret = format!("{}={}", SECRET.0, SECRET.1);
    assert!(
        environ(ps.server.pid()).contains(&secret),
        "the host has the secret"
    );
    for plugin in ["py", "lib"] {
        let (pid, runner) = child_pids(&ps, plugin).await;
        for pid in std::iter::once(pid).chain(runner) {
            let env = environ(pid);
            assert!(
                !env.iter().any(|v| v.starts_with("BACKWORKS_ADMIN_TOKEN=")),
                "{plugin} (pid {pid}) got the admin token: {env:?}"
            );
            assert!(
                !env.iter().any(|v| v.starts_with("REGION=")),
                "{plugin} (pid {pid}) got a variable nobody passed: {env:?}"
            );
            assert!(
                env.iter().any(|v| v.starts_with("PATH=")),
                "{plugin} (pid {pid}) has PATH: {env:?}"
            );
        }
    }
    ps.assert_control_serves().await;
}

#[tokio::test]
async fn a_plugins_env_passes_and_sets_only_what_it_names() {
    let ps = FaultServer::start_with_env(
        &format!(
            "\n  py:\n    command: {}\n    \
             env: {{ pass: [REGION], set: {{ MODE: \"${{MODE_SOURCE}}\", WORKERS: 4 }} }}\n",
            python(fixture("echo.py"), &[])
        ),
        "  py: { path: /py, methods: [POST], plugin: py, hooks: [] }\n",
        &[SECRET, ("REGION", "eu-west"), ("MODE_SOURCE", "m0de-v4lue")],
    )
    .await;
    let (pid, _) = child_pids(&ps, "py").await;
    let env = environ(pid);
    for wanted in ["REGION=eu-west", "MODE=m0de-v4lue", "WORKERS=4"] {
        assert!(env.iter().any(|v| v == wanted), "{wanted} in {env:?}");
    }
    for unwanted in ["BACKWORKS_ADMIN_TOKEN=", "MODE_SOURCE="] {
        assert!(
            !env.iter().any(|v| v.starts_with(unwanted)),
            "{unwanted} in {env:?}"
        );
    }
    let answer = ps
        .send(reqwest::Method::POST, "/py", b"hi".to_vec(), None)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    ps.assert_control_serves().await;
    let logs = ps.server.logs();
    assert!(
        !logs.contains("m0de-v4lue"),
        "a value from ${{VAR}} reached the log:\n{logs}"
    );
}

/// The host's resident memory, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The default bound on bytes waiting for a child to read them.
const MAX_OUTBOUND: u64 = 16 << 20;

#[tokio::test]
async fn a_child_that_stops_reading_costs_bounded_memory_answers_503_and_is_restarted() {
    // The call deadline is short, so that without a bound abandoned calls would pile up fast.
    let ps = FaultServer::start(
        &format!(
            "\n  sink:\n    command: {}\n    timeout_ms: 100\n{QUICK_RESTART}",
            python(fixture("stop_reading.py"), &[])
        ),
        "  sink: { path: /sink, methods: [POST], plugin: sink, hooks: [] }\n",
    )
    .await;
    let host = ps.server.pid();
    let baseline = resident_bytes(host);
    let ps = Arc::new(ps);
    let stop = Arc::new(AtomicBool::new(false));
    let overloaded = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    // A bounded client: 8 requests at a time, 256 KiB each.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ps, stop) = (ps.clone(), stop.clone());
            let (overloaded, answered) = (overloaded.clone(), answered.clone());
            tokio::spawn(async move {
                let body = vec![b'x'; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let answer = ps
                        .send(reqwest::Method::POST, "/sink", body.clone(), None)
                        .await;
                    answered.fetch_add(1, Ordering::Relaxed);
                    if answer.status == 503 && answer.body["error"]["kind"] == "overloaded" {
                        assert_eq!(answer.body["error"]["plugin"], "sink", "{}", answer.body);
                        overloaded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Before the bound is reached: the deadline (504); in flight when the
                        // child is killed, 502; while it restarts, 503.
                        assert!(
                            [502, 503, 504].contains(&answer.status),
                            "{}: {}",
                            answer.status,
                            answer.body
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    let mut peak = baseline;
    let mut restarted: Option<Value> = None;
    let mut checks = 0u32;
    while restarted.is_none() && Instant::now() < deadline {
        for _ in 0..10 {
            peak = peak.max(resident_bytes(host));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        checks += 1;
        if checks.is_multiple_of(5) {
            ps.assert_control_serves().await;
        }
        let entry = ps.plugin("sink").await;
        if entry[admin::PROCESS]["restarts"].as_u64() >= Some(1) {
            restarted = Some(entry);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a flooding client");
    }
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "host RSS: baseline {} MiB, peak {} MiB (+{} MiB) over {} requests",
        baseline >> 20,
        peak >> 20,
        grown >> 20,
        answered.load(Ordering::Relaxed)
    );
    // The bound twice over, plus room for the requests in flight and the allocator.
    let allowed = 2 * MAX_OUTBOUND + (32 << 20);
    assert!(
        grown < allowed,
        "the host grew by {} MiB (allowed {} MiB) while the child read nothing",
        grown >> 20,
        allowed >> 20
    );
    assert!(
        overloaded.load(Ordering::Relaxed) > 0,
        "no call was refused as overloaded"
    );
    let entry = restarted.expect("the child that reads nothing is restarted");
    let last_crash = entry[admin::PROCESS]["last_crash"]
        .as_str()
        .unwrap_or_default();
    assert!(last_crash.starts_with("unresponsive"), "{entry}");
    ps.assert_control_serves().await;
}

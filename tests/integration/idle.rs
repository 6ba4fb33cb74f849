//! Idle plugins cost no thread: a library's runtime starts its threads (`workers:`) when the plugin
//! first waits, once however many calls wait at once, and never for calls that do not wait. Counts
//! the server's threads by name in `/proc/PID/task`; nothing here is timed.

use std::io::Write;

use crate::support::{Server, client, rust_plugin};

/// The name the SDK gives the threads of a plugin library's runtime.
const RUNTIME_THREAD: &str = "bw-plugin-rt";

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read the server's tasks")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Every thread of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read the server's tasks")
        .count()
}

/// `n` concurrent `GET path`, each answered 200.
async fn all_ok(server: &Server, path: &str, n: usize) {
    let http = client();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (http.clone(), server.url(path));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200, "{path}");
    }
}

#[tokio::test]
async fn plugins_start_runtime_threads_only_when_they_wait_and_then_as_many_as_configured() {
    // A second async-clock library, distinct content (one byte more), so it has a runtime of its
    // own: two plugins from one file would share one.
    let dir = tempfile::tempdir().expect("tempdir");
    let pooled = dir.path().join("libasync_clock_pooled.so");
    let mut bytes = std::fs::read(rust_plugin("async_clock")).expect("read async-clock");
    bytes.push(0);
    std::fs::File::create(&pooled)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write the copy");
    let yaml = format!(
        r#"
plugin_dirs: ["{{{{plugins}}}}"]
plugins:
  request-id:
    path: librequest_id.so
    hooks: [before_request, after_response]
  hello:
    path: libhello.so
    config: {{ greeting: "Hello" }}
  kv-store:
    path: libkv_store.so
  clock:
    path: libasync_clock.so
  pooled:
    path: "{}"
    workers: 3
endpoints:
  hello: {{ path: "/hello/{{name}}", plugin: hello }}
  kv: {{ path: /kv, plugin: kv-store }}
  sleep: {{ path: "/sleep/{{ms}}", plugin: clock }}
  echo: {{ path: /tcp-echo, plugin: pooled, hooks: [] }}
"#,
        pooled.display()
    );
    let server = Server::start(&yaml);
    let pid = server.pid();

    // Five plugins started and initialized, and two hooks on every request: no waiting, no thread.
    assert_eq!(threads_named(pid, RUNTIME_THREAD), 0, "after start");
    let after_start = threads(pid);
    all_ok(&server, "/hello/idle", 50).await;
    all_ok(&server, "/kv", 50).await;
    assert_eq!(
        threads_named(pid, RUNTIME_THREAD),
        0,
        "after calls that never wait"
    );
    // Whatever its name: no thread at all was started for them (the host's blocking threads of
    // start-up may only have ended since).
    assert!(
        threads(pid) <= after_start,
        "{} > {after_start}",
        threads(pid)
    );

    // Many first calls that all wait at once: the plugin's one thread, started once.
    all_ok(&server, "/sleep/50", 100).await;
    assert_eq!(threads_named(pid, RUNTIME_THREAD), 1, "after clock waited");
    all_ok(&server, "/sleep/1", 20).await;
    assert_eq!(threads_named(pid, RUNTIME_THREAD), 1, "started once");

    // `workers: 3`: a pool of three, and the thread that drives the sockets first polls created.
    all_ok(&server, "/tcp-echo", 50).await;
    assert_eq!(
        threads_named(pid, RUNTIME_THREAD),
        1 + 4,
        "after pooled waited"
    );
}

//! The embedder's path: plugin-host's `axum_embed` example, built and run as it ships, loading the
//! real `hello` plugin from a folder and serving HTTP through it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{client, root, rust_plugin, target_dir};

/// The `axum_embed` example binary, built once per run with the tests' cargo and profile (a no-op
/// after `cargo test --workspace`, which builds the examples).
fn example() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = target_dir();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(root()).args([
            "build",
            "--quiet",
            "-p",
            "backworks-plugin-host",
            "--example",
            "axum_embed",
        ]);
        if target.file_name().and_then(|p| p.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        if let Some(dir) = target.parent() {
            cmd.env("CARGO_TARGET_DIR", dir);
        }
        let status = cmd
            .status()
            .expect("run cargo build for the axum_embed example");
        assert!(status.success(), "building the axum_embed example failed");
        target.join("examples").join("axum_embed")
    })
}

/// The running example, killed when dropped.
struct Embedded {
    child: Child,
    base: String,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the example on a free port over `folder`, its messages going to `log`, and waits for the
/// address it prints.
fn start(folder: &Path, log: &Path) -> Embedded {
    let mut child = Command::new(example())
        .arg(folder)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start the axum_embed example");
    let stdout = child.stdout.take().expect("the example's stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut embedded = Embedded {
        child,
        base: String::new(),
    };
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let logs = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the example did not print the address it listens on:\n{logs}")
        });
    embedded.base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    embedded
}

#[tokio::test]
async fn the_axum_embed_example_serves_hello_and_the_public_error_body() {
    let plugins = tempfile::tempdir().expect("tempdir");
    let lib = format!("libhello.{}", std::env::consts::DLL_EXTENSION);
    std::fs::copy(rust_plugin("hello"), plugins.path().join(&lib)).expect("copy libhello");
    // A file that is no plugin is skipped, not fatal.
    std::fs::write(
        plugins
            .path()
            .join(format!("libjunk.{}", std::env::consts::DLL_EXTENSION)),
        b"junk",
    )
    .expect("write junk");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("embed.log");
    let embedded = start(plugins.path(), &log);
    let http = client();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.contains("started hello 0.1.0"), "{logs}");
    assert!(logs.contains("not a shared library"), "{logs}");

    let res = http
        .get(format!("{}/hello/ana", embedded.base))
        .send()
        .await
        .expect("GET /hello/ana");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.expect("a JSON body");
    assert_eq!(body, json!({ "message": "Hello, ana!" }));

    // The plugin refuses another method; the embedder answers with the host's public error body.
    let res = http
        .delete(format!("{}/hello/ana", embedded.base))
        .header("x-request-id", "embed-1")
        .send()
        .await
        .expect("DELETE /hello/ana");
    assert_eq!(res.status(), 405);
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(
        body,
        json!({ "error": {
            "kind": "status",
            "plugin": "hello",
            "message": "DELETE /hello/ana is not served; use GET",
            "request_id": "embed-1",
        }})
    );
}

//! From `backworks plugin new` to a request served by the installed plugin on another "machine",
//! with nothing written by hand: new → build → test (the testkit, through the real loader) →
//! pack (its config schema included) → sign → publish → install from an index over HTTP →
//! serve. Then the installed plugin's schema refuses a wrong config at its line and column.
//!
//! The generated crate builds with the workspace's `Cargo.lock` (copied in, so the same versions
//! and no registry lookups: `--offline`) into a target folder of its own under this workspace's
//! `target/`, kept between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{
    Server, backworks, backworks_ok as ok, client, get_json, output_text as text, root, serve_dir,
    target_dir,
};

/// Runs `cargo ARGS` in `crate_dir` with the shared target folder, asserting it succeeds.
fn cargo(crate_dir: &Path, target: &Path, args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target)
        // The testkit's runner, for the checks that run the plugin in a child of its own.
        .env("BACKWORKS_BIN", env!("CARGO_BIN_EXE_backworks"))
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{}",
        crate_dir.display(),
        text(&out)
    );
    text(&out)
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_plugin_goes_from_plugin_new_to_a_verified_install_serving_requests() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("greeter");

    // 1. `plugin new`: a crate depending on this checkout's SDK and testkit.
    let created = ok(&["plugin", "new", "greeter", "--path", &s(&project)]);
    assert!(
        created.contains("created Rust plugin `greeter`"),
        "{created}"
    );
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&s(&root().join("plugin-sdk"))),
        "{manifest}"
    );
    std::fs::copy(root().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();

    // 2. Build it and run its generated tests, as generated.
    let target: PathBuf = target_dir().join("plugin-new-e2e");
    cargo(&project, &target, &["build", "--release"]);
    let library = target.join("release/libgreeter.so");
    assert!(library.is_file(), "{}", library.display());
    let tested = cargo(&project, &target, &["test"]);
    for test in [
        "passes_the_conformance_battery",
        "greets_with_the_configured_greeting",
        "the_hook_rejects_a_request_without_the_api_key",
        "a_config_of_the_wrong_type_is_refused_before_the_plugin_starts",
    ] {
        assert!(tested.contains(&format!("{test} ... ok")), "{tested}");
    }

    // 3. Keys, pack (signed as it is packed; the schema comes from the plugin), publish.
    ok(&[
        "plugin",
        "keygen",
        "-W",
        "-p",
        &s(&dir.path().join("author.pub")),
        "-s",
        &s(&dir.path().join("author.key")),
    ]);
    let public = std::fs::read_to_string(dir.path().join("author.pub")).unwrap();
    let key = public.lines().nth(1).unwrap().trim().to_owned();
    let packed = ok(&[
        "plugin",
        "pack",
        &s(&library),
        "-s",
        &s(&dir.path().join("author.key")),
        "--readme",
        &s(&project.join("README.md")),
        "--out",
        &s(&dir.path().join("out")),
    ]);
    let package = PathBuf::from(
        packed
            .lines()
            .next()
            .unwrap()
            .split(": plugin")
            .next()
            .unwrap(),
    );
    assert!(package.is_file(), "{packed}");
    let index = dir.path().join("index");
    ok(&["plugin", "publish", &s(&package), "--index", &s(&index)]);
    let url = serve_dir(&index);

    // 4. Another machine: a server trusting the author's key, the index over HTTP.
    let base = format!(
        "plugin_dirs: [plugins]\ntrust:\n  keys:\n    - {key}\n  require_signatures: true\n\
         marketplace:\n  index: {url}\n"
    );
    let server = Server::start(&base);
    let config = s(server.config_path());
    let with_greeter = |greeting: &str| {
        format!(
            "{base}plugins:\n  greeter:\n    type: marketplace\n    version: \"^0.1\"\n    \
             hooks: [before_request]\n    config:\n      greeting: {greeting}\n\
             endpoints:\n  hi: {{ path: \"/hello/{{name}}\", plugin: greeter }}\n"
        )
    };
    server.rewrite_config(&with_greeter("Hi"));
    let installed = ok(&["plugin", "install", "greeter@^0.1", "-c", &config]);
    assert!(
        installed.contains("installed `greeter` 0.1.0"),
        "{installed}"
    );
    ok(&["validate", "-c", &config]);

    // 5. A reload picks it up; the request goes through its hook and its endpoint.
    let reload = client()
        .post(server.admin_url("/_backworks/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap());
    let answer = get_json(server.url("/hello/ana")).await;
    assert_eq!(answer["message"], "Hi, ana!", "{answer}");
    let about: Value = get_json(server.admin_url("/_backworks/plugins/greeter")).await;
    assert_eq!(about["version"], "0.1.0", "{about}");

    // 6. The schema travelled with it: a wrong type is refused at its line and column.
    server.rewrite_config(&with_greeter("[1, 2]"));
    let refused = backworks(&["validate", "-c", &config]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains(":14:17: plugin \"greeter\": config field /greeting"),
        "{message}"
    );
}

/// `plugin new --lang python`: its tests pass as generated, the conformance battery included
/// (through `backworks plugin check`).
#[test]
fn a_new_python_plugin_passes_its_generated_tests() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("py-greeter");
    ok(&[
        "plugin",
        "new",
        "py-greeter",
        "--lang",
        "python",
        "--path",
        &s(&project),
    ]);
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v"])
        .current_dir(&project)
        .env("BACKWORKS", env!("CARGO_BIN_EXE_backworks"))
        .output()
        .expect("run python3");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("test_passes_the_conformance_battery") && !shown.contains("skipped"),
        "{shown}"
    );

    // Packed as its README says, the schema it declares in its manifest travels with it.
    ok(&[
        "plugin",
        "keygen",
        "-W",
        "-p",
        &s(&dir.path().join("k.pub")),
        "-s",
        &s(&dir.path().join("k.key")),
    ]);
    let packed = ok(&[
        "plugin",
        "pack",
        &s(&project.join("plugin.py")),
        "--name",
        "py-greeter",
        "--version",
        "0.1.0",
        "--include",
        &s(&project.join("backworks_plugin.py")),
        "--key",
        &s(&dir.path().join("k.key")),
        "--readme",
        &s(&project.join("README.md")),
        "--out",
        &s(dir.path()),
    ]);
    let package = dir.path().join("py-greeter-0.1.0-any.bwpkg");
    assert!(package.is_file(), "{packed}");
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&package)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("schema.json") && listing.contains("backworks_plugin.py"),
        "{listing}"
    );
}

/// `plugin new --lang c`: `make` builds it and `make check` passes the conformance battery; its
/// metadata declares the hook and a schema the host enforces.
#[test]
fn a_new_c_plugin_builds_and_passes_the_battery() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("c-greeter");
    ok(&[
        "plugin",
        "new",
        "c-greeter",
        "--lang",
        "c",
        "--path",
        &s(&project),
    ]);
    for target in [None, Some("check")] {
        let out = Command::new("make")
            .args(target)
            .current_dir(&project)
            .env("BACKWORKS", env!("CARGO_BIN_EXE_backworks"))
            .output()
            .expect("run make");
        assert!(out.status.success(), "make {target:?}:\n{}", text(&out));
    }
    let inspected = backworks(&[
        "plugin",
        "inspect",
        &s(&project.join("libc_greeter.so")),
        "--json",
    ]);
    assert!(inspected.status.success(), "{}", text(&inspected));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        inspected["hooks_implemented"],
        serde_json::json!(["before_request"])
    );
}

//! The `backworks` commands: inspect, list (on disk, and live through a running server's admin
//! API), validate; and the example configs in the repository, which must stay valid.

use std::path::Path;

use serde_json::Value;

use crate::support::{
    Server, backworks, c_fixture, client, panic_abort_plugin, root, rust_plugin, rust_plugins,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inspect_reports_metadata_and_verdict() {
    let lib = rust_plugin("hello");
    let out = backworks(&["plugin", "inspect", lib.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "hello");
    assert_eq!(json["version"], "0.1.0");
    assert_eq!(json["sdk_version"], backworks_plugin_sdk::SDK_VERSION);
    assert_eq!(
        json["abi"],
        format!(
            "{}.{}",
            backworks_plugin_sdk::abi::ABI_MAJOR,
            backworks_plugin_sdk::abi::ABI_MINOR
        )
    );
    assert_eq!(json["compatible"], true);

    let human = backworks(&["plugin", "inspect", lib.to_str().unwrap()]);
    assert!(text(&human.stdout).contains("compatible:  yes"));

    let wrong = c_fixture("wrong_abi_major");
    let out = backworks(&["plugin", "inspect", wrong.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["compatible"], false);
    let problem = json["problem"].as_str().unwrap();
    assert!(
        problem.contains("plugin ABI 2.0 is incompatible") && problem.contains("1.x"),
        "{problem}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.so");
    std::fs::write(&junk, [0x7f, b'E', b'L', b'F', 1, 2, 3]).unwrap();
    let out = backworks(&["plugin", "inspect", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("not a shared library"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn list_shows_configured_and_discovered_plugins_without_loading() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backworks.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{admin: {{port: {}}}}}\nplugin_dirs: [\"{}\"]\nplugins:\n  greeter:\n    path: libhello.so\n  off:\n    path: libkv_store.so\n    enabled: false\n  static:\n    type: builtin\nendpoints:\n  hi: {{ path: /hi, plugin: greeter }}\n",
            // Nothing listens on port 1 (a privileged port no test binds), so the list is the
            // on-disk view.
            1,
            rust_plugins().display()
        ),
    )
    .unwrap();
    let out = backworks(&["plugin", "list", "-c", config.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["source"], "disk");
    let rows = out["plugins"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned().unwrap();
    assert_eq!(row("greeter")["plugin_name"], "hello");
    assert_eq!(row("greeter")["compatible"], true);
    assert_eq!(row("off")["state"], "disabled");
    assert_eq!(row("static")["type"], "builtin");
    // Unconfigured plugin files in plugin_dirs are listed too.
    assert!(
        rows.iter()
            .any(|r| r["configured"] == false && r["plugin_name"] == "async-clock"),
        "{rows:?}"
    );
    let table = backworks(&["plugin", "list", "-c", config.to_str().unwrap()]);
    assert!(text(&table.stdout).contains("greeter"));
}

#[test]
fn list_shows_the_live_state_of_a_running_server() {
    let server = Server::start(
        "plugin_dirs: [\"{{plugins}}\"]\nplugins:\n  greeter:\n    path: libhello.so\n  off:\n    path: libkv_store.so\n    enabled: false\nendpoints:\n  hi:\n    path: /hello/{name}\n    plugin: greeter\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backworks.yaml");
    std::fs::write(&config, "plugins:\n  greeter:\n    path: libhello.so\n").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hi = client().get(server.url("/hello/ana")).send().await.unwrap();
        assert_eq!(hi.status(), 200);
    });
    let args = [
        "plugin",
        "list",
        "-c",
        config.to_str().unwrap(),
        "--admin-url",
        &server.admin,
    ];
    let out = backworks(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["source"], "live", "{out}");
    let plugins = out["plugins"].as_array().unwrap();
    let greeter = plugins.iter().find(|p| p["name"] == "greeter").unwrap();
    assert_eq!(greeter["state"], "active", "{greeter}");
    assert_eq!(greeter["kind"], "library", "{greeter}");
    assert_eq!(greeter["breaker"]["state"], "closed", "{greeter}");
    assert_eq!(greeter["stats"]["calls"], 1, "{greeter}");
    let off = plugins.iter().find(|p| p["name"] == "off").unwrap();
    assert_eq!(off["state"], "disabled", "{off}");
    let table = text(&backworks(&args).stdout);
    assert!(table.contains("(live, from http://127.0.0.1:"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("greeter") && l.contains("active") && l.contains("closed")),
        "{table}"
    );
    // With --admin-url, no config file is needed for the live view.
    let missing = dir.path().join("nowhere.yaml");
    let out = backworks(&[
        "plugin",
        "list",
        "-c",
        missing.to_str().unwrap(),
        "--admin-url",
        &server.admin,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["source"], "live", "{out}");
}

#[test]
fn validate_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "plugins:\n  a:\n    path: x.so\n    enabled: maybe\n",
            ":4:14:",
        ),
        (
            "plugins:\n  a:\n    path: x.so\nendpoints:\n  e:\n    path: /e\n    plugin: b\n",
            ":7:13: endpoint `e` names unknown plugin `b`",
        ),
        (
            "plugins:\n  a: {path: x.so, colour: red}\n",
            ":2:19: unknown field `colour`",
        ),
        (
            "plugins:\n  a:\n    path: x.so\n    config: {k: \"${BACKWORKS_TEST_UNSET}\"}\n",
            ":4:17: environment variable `BACKWORKS_TEST_UNSET` is not set",
        ),
    ];
    for (yaml, expected) in cases {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = backworks(&["validate", "-c", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("bad.yaml{expected}")),
            "expected {expected:?} in {stderr}"
        );
    }
    // A valid config whose plugin file is incompatible fails validation, naming the plugin.
    let wrong = c_fixture("newer_sdk");
    let file = dir.path().join("ok.yaml");
    std::fs::write(
        &file,
        format!("plugins:\n  newer:\n    path: {}\n", wrong.display()),
    )
    .unwrap();
    let out = backworks(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("plugin `newer`") && stderr.contains("1.0.0"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_broken_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "server:\n  port: lots\n").unwrap();
    let out = backworks(&["serve", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("broken.yaml:2:"),
        "{}",
        text(&out.stderr)
    );
}

/// Every config in the repository parses and checks: backworks.yaml and each ```yaml block of
/// docs/configuration.md.
#[test]
fn repository_configs_are_valid() {
    backworks::config::load(&root().join("backworks.yaml")).expect("backworks.yaml");
    for doc in ["docs/configuration.md", "docs/operations.md"] {
        let path = root().join(doc);
        let Ok(text) = std::fs::read_to_string(&path) else {
            panic!("{} is missing", path.display());
        };
        let mut blocks = 0;
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim_start().starts_with("```yaml") {
                let block: Vec<&str> = lines
                    .by_ref()
                    .take_while(|l| !l.trim_start().starts_with("```"))
                    .collect();
                let env = |name: &str| Some(format!("<{name}>"));
                backworks::config::parse_str_with_env(&block.join("\n"), Path::new(doc), &env)
                    .unwrap_or_else(|e| panic!("yaml block {} of {doc}: {e}", blocks + 1));
                blocks += 1;
            }
        }
        assert!(blocks > 0, "{doc} has no yaml examples");
    }
}

/// The demo's `plugin list` (backworks.yaml, on-disk view) after a build of the whole workspace
/// shows the example plugins and no test fixture: the fixtures' libraries are example targets
/// (in `target/<profile>/examples`, which the demo does not scan) and the broken C libraries are
/// compiled into `target/<profile>/c-plugins`.
///
/// The demo scans `target/release`; the tests run in their own profile, whose folder holds the
/// same files once the tests have built every plugin and fixture, so the demo's config is read
/// with that folder in place of `target/release`.
#[test]
fn the_demos_plugin_list_shows_no_test_fixture() {
    // Builds every Rust plugin and fixture, and one broken C library, as the tests do.
    rust_plugins();
    crate::support::c_fixture("wrong_magic");
    let demo = std::fs::read_to_string(root().join("backworks.yaml")).expect("backworks.yaml");
    let (scanned, local) = ("  - target/release\n", "  - plugins\n");
    assert!(
        demo.contains(scanned) && demo.contains(local),
        "the demo's plugin_dirs changed:\n{demo}"
    );
    let profile_dir = crate::support::target_dir();
    let yaml = demo
        .replace(scanned, &format!("  - \"{}\"\n", profile_dir.display()))
        .replace(
            local,
            &format!("  - \"{}\"\n", root().join("plugins").display()),
        );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backworks.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = backworks(&[
        "plugin",
        "list",
        "-c",
        config.to_str().unwrap(),
        "--json",
        "--admin-url",
        "http://127.0.0.1:9",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["source"], "disk", "{out}");
    let rows = out["plugins"].as_array().unwrap();

    // The example plugins are there, found in the profile's folder.
    for name in ["hello", "request-id", "kv-store", "async-clock"] {
        let row = rows
            .iter()
            .find(|r| r["plugin_name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {rows:?}"));
        let path = row["path"].as_str().unwrap_or_default();
        assert!(Path::new(path).starts_with(&profile_dir), "{row}");
    }
    // No fixture: not by its plugin name, nor by its file.
    let mut fixtures: Vec<String> = ["faulty", "noop", "broken_panic"]
        .iter()
        .map(|lib| format!("lib{lib}.so"))
        .collect();
    for entry in std::fs::read_dir(root().join("tests/fixtures/c")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            let stem = path.file_stem().unwrap().to_string_lossy();
            fixtures.push(format!("lib{stem}.so"));
        }
    }
    for row in rows {
        let file = Path::new(row["path"].as_str().unwrap_or_default())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            !fixtures.contains(&file)
                && !["faulty", "noop", "broken-panic"]
                    .contains(&row["plugin_name"].as_str().unwrap_or_default()),
            "a test fixture in the demo's list: {row}\n(in a target folder from before the \
             fixtures moved, delete the stale {}/lib{{faulty,noop,broken_panic}}.so)",
            profile_dir.display()
        );
    }
}

#[test]
fn validate_checks_that_a_command_plugins_program_exists() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backworks.yaml");
    let echo = root().join("tests/fixtures/process/echo.py");
    std::fs::write(
        &config,
        format!(
            "plugins:\n  echo:\n    command: [python3, \"{}\"]\nendpoints:\n  e: {{ path: /e, plugin: echo }}\n",
            echo.display()
        ),
    )
    .unwrap();
    let ok = backworks(&["validate", "-c", config.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    std::fs::write(
        &config,
        "plugins:\n  gone:\n    command: [./no-such-plugin.py]\nendpoints:\n  e: { path: /e, plugin: gone }\n",
    )
    .unwrap();
    let bad = backworks(&["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains(
            "plugin `gone`: program `./no-such-plugin.py` not found (looked next to the config file and on PATH)"
        ),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn a_panic_abort_plugin_is_valid_only_under_process_isolation() {
    let library = panic_abort_plugin();
    let human = backworks(&["plugin", "inspect", library.to_str().unwrap()]);
    assert_eq!(human.status.code(), Some(1), "not loadable in process");
    assert!(
        text(&human.stdout).contains("compatible:  only with `isolation: process`:"),
        "{}",
        text(&human.stdout)
    );
    let json = backworks(&["plugin", "inspect", library.to_str().unwrap(), "--json"]);
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (
            &json["panic"],
            &json["compatible"],
            &json["compatible_isolated"]
        ),
        (
            &Value::from("abort"),
            &Value::from(false),
            &Value::from(true)
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backworks.yaml");
    let write = |isolation: &str| {
        std::fs::write(
            &config,
            format!(
                "plugins:\n  aborter:\n    path: \"{}\"\n{isolation}endpoints:\n  e: {{ path: /e, plugin: aborter }}\n",
                library.display()
            ),
        )
        .unwrap();
    };
    write("    isolation: process\n");
    let ok = backworks(&["validate", "-c", config.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    write("");
    let bad = backworks(&["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("plugin `aborter`:")
            && text(&bad.stderr).contains("or run it with `isolation: process`"),
        "{}",
        text(&bad.stderr)
    );
}

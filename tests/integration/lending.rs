//! ABI 1.2's lent request: plugins that read the host's request in place (`handle_lent`) and
//! plugins built for older minors (1.1, 1.0), all served by this host; a lent call dropped while it
//! waits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backworks_plugin_host::{DynamicPlugin, Plugin, load_library};
use backworks_plugin_sdk::Request;
use backworks_plugin_sdk::abi::ABI_MINOR;
use serde_json::{Value, json};

use crate::support::{Server, backworks, client, root, rust_plugin, target_dir};

/// Compiles `src` with `-I include` and `defines` into `target/<profile>/c-plugins/lib<name>.so`.
fn compile(src: &str, include: &str, defines: &[&str], name: &str) -> PathBuf {
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("c-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("lib{name}.so"));
    let tmp = dir.join(format!("{name}.{}.tmp.so", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args([
            "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=c11",
        ])
        .args(defines)
        .arg("-I")
        .arg(root().join(include))
        .arg("-o")
        .arg(&tmp)
        .arg(root().join(src))
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "compiling {src}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// `tests/fixtures/c-abi-1.1/abi_1_1.c` against the frozen 1.1 header.
fn abi_1_1_plugin() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.1/abi_1_1.c",
        "tests/fixtures/c-abi-1.1/include",
        &[],
        "abi_1_1",
    )
}

/// The same source against today's header, opting into `handle_lent`.
fn lent_c_plugin() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.1/abi_1_1.c",
        "plugin-sdk/include",
        &["-DBW_FIXTURE_LENT"],
        "abi_1_2_lent",
    )
}

/// `tests/fixtures/c-abi-1.0/abi_1_0.c`, built as ABI 1.0 had its vtable.
fn abi_1_0_plugin() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.0/abi_1_0.c",
        "plugin-sdk/include",
        &[],
        "abi_1_0_lending",
    )
}

/// An instance named `name` of `library`, initialized with `config`.
async fn started(library: &Path, name: &str, config: Value) -> DynamicPlugin {
    let plugin = DynamicPlugin::new(load_library(library).unwrap(), name).unwrap();
    plugin.initialize(&config).await.unwrap();
    plugin
}

/// `GET path` with header `x-name: ana`.
fn get(path: &str) -> Request {
    let mut request = Request::new("GET", path);
    request.headers.insert("x-name", "ana");
    request
}

async fn body_of(plugin: &DynamicPlugin, path: &str) -> String {
    let response = plugin.handle(get(path)).await.unwrap();
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

fn inspected_abi(library: &Path) -> Value {
    let out = backworks(&["plugin", "inspect", library.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["abi"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_1_1_header_is_served_through_handle() {
    let old = abi_1_1_plugin();
    assert_eq!(inspected_abi(&old), "1.1");
    let library = load_library(&old).unwrap();
    assert!(library.vtable().handle_lent.is_none());
    assert_eq!(library.vtable().abi_minor, 1);
    let plugin = started(&old, "old", Value::Null).await;
    assert_eq!(
        body_of(&plugin, "/fx/1").await,
        "abi 1.1 copied GET /fx/1 ana"
    );

    // And by the server, over HTTP.
    let server = Server::start(&format!(
        "plugins:\n  old:\n    path: {}\nendpoints:\n  old: {{ path: \"/fx/{{id}}\", plugin: old }}\n",
        old.display()
    ));
    let res = client()
        .get(server.url("/fx/7"))
        .header("X-Name", "bo")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "abi 1.1 copied GET /fx/7 bo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_plugin_that_opts_in_is_served_through_handle_lent() {
    let lent = lent_c_plugin();
    assert_eq!(inspected_abi(&lent), format!("1.{ABI_MINOR}"));
    let plugin = started(&lent, "lent", Value::Null).await;
    assert_eq!(
        body_of(&plugin, "/fx/1").await,
        format!("abi 1.{ABI_MINOR} lent GET /fx/1 ana")
    );
    // Lending off (the benchmarks' A/B): the same library through its copying `handle`.
    let copying = DynamicPlugin::new(load_library(&lent).unwrap(), "copying")
        .unwrap()
        .without_lending();
    assert_eq!(
        body_of(&copying, "/fx/1").await,
        format!("abi 1.{ABI_MINOR} copied GET /fx/1 ana")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_abi_1_0_is_still_served() {
    let old = abi_1_0_plugin();
    assert_eq!(inspected_abi(&old), "1.0");
    let library = load_library(&old).unwrap();
    assert!(library.vtable().config_schema.is_none() && library.vtable().handle_lent.is_none());
    let plugin = started(&old, "old", json!({"limit": 1})).await;
    assert_eq!(body_of(&plugin, "/old").await, "old");
}

/// `faulty` reads its requests in place and holds the lent path across its `.await`s. A call
/// dropped while it waits (as the guard's deadline drops it) must cancel the plugin's task before
/// the host frees the request: afterwards the instance serves on, lent or not, and many calls
/// waiting at once each get their own answer. (No duration is asserted: the minute-long sleep is
/// only there to be dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_call_dropped_while_it_waits_is_cancelled_and_the_plugin_serves_on() {
    let faulty = rust_plugin("faulty");
    let library = load_library(&faulty).unwrap();
    assert!(library.vtable().handle_lent.is_some());
    let config = json!({"sleep_ms": 60_000, "only_path_suffix": "/slow"});
    let plugin = Arc::new(started(&faulty, "faulty", config.clone()).await);
    for round in 0..20 {
        let dropped =
            tokio::time::timeout(Duration::from_millis(5), plugin.handle(get("/x/slow"))).await;
        assert!(
            dropped.is_err(),
            "round {round}: a minute-long sleep answered"
        );
    }
    let response = plugin.handle(get("/x/fast")).await.unwrap();
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body, json!({"ok": true, "calls": 21}));

    let waiting = started(&faulty, "waiting", json!({"sleep_ms": 20})).await;
    let waiting = Arc::new(waiting);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let plugin = waiting.clone();
            tokio::spawn(async move { plugin.handle(get(&format!("/x/{i}"))).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status, 200);
    }

    let copying = DynamicPlugin::new(load_library(&faulty).unwrap(), "copying")
        .unwrap()
        .without_lending();
    copying.initialize(&config).await.unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(5), copying.handle(get("/x/slow"))).await;
    assert!(dropped.is_err());
    assert_eq!(copying.handle(get("/x/fast")).await.unwrap().status, 200);
}

//! ABI 1.2's lent request: plugins that read the host's request in place (`handle_lent`) and
//! plugins built for older minors (1.1, 1.0), all served by this host; a lent call dropped while it
//! waits. ABI 1.3's hooks that answer at once (`*_now`), beside a hook plugin built for 1.2. ABI
//! 1.4's endpoint that answers at once (`handle_now`), beside the same plugin built for 1.3.

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

/// The same source against the frozen 1.3 header, opting into `handle_lent`: a 160-byte vtable
/// without `handle_now`.
fn abi_1_3_lent_plugin() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.1/abi_1_1.c",
        "tests/fixtures/c-abi-1.3/include",
        &["-DBW_FIXTURE_LENT"],
        "abi_1_3_lent",
    )
}

/// The same source against today's header, with ABI 1.4's `handle_now` as well.
fn now_c_plugin() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.1/abi_1_1.c",
        "plugin-sdk/include",
        &["-DBW_FIXTURE_LENT", "-DBW_FIXTURE_NOW"],
        "abi_1_4_now",
    )
}

/// `tests/fixtures/c-abi-1.2/hooks.c` against the frozen 1.2 header.
fn abi_1_2_hooks() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.2/hooks.c",
        "tests/fixtures/c-abi-1.2/include",
        &[],
        "abi_1_2_hooks",
    )
}

/// The same source against the frozen 1.3 header, with ABI 1.3's `*_now` hooks: a 160-byte
/// vtable.
fn abi_1_3_now_hooks() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.2/hooks.c",
        "tests/fixtures/c-abi-1.3/include",
        &["-DBW_FIXTURE_NOW"],
        "abi_1_3_now_hooks",
    )
}

/// The same source against today's header, with the `*_now` hooks.
fn now_c_hooks() -> PathBuf {
    compile(
        "tests/fixtures/c-abi-1.2/hooks.c",
        "plugin-sdk/include",
        &["-DBW_FIXTURE_NOW"],
        "now_hooks",
    )
}

/// A server with the 1.1 fixture's endpoint at `/fx/{id}` behind the hook plugin at `hooks`.
fn behind_hooks(hooks: &Path) -> Server {
    behind_hooks_with(hooks, "")
}

/// As [`behind_hooks`], with `settings` (lines of YAML) added to the hook plugin's entry.
fn behind_hooks_with(hooks: &Path, settings: &str) -> Server {
    Server::start(&format!(
        "plugins:\n  endpoint:\n    path: {}\n  hooks:\n    path: {}\n    hooks: [before_request, after_response]\n{settings}endpoints:\n  fx: {{ path: \"/fx/{{id}}\", plugin: endpoint }}\n",
        abi_1_1_plugin().display(),
        hooks.display()
    ))
}

/// `GET path` of `server`: the status, the response's `x-hook` and the body.
async fn hooked(server: &Server, path: &str) -> (u16, Option<String>, String) {
    let res = client().get(server.url(path)).send().await.unwrap();
    let hook = res
        .headers()
        .get("x-hook")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), hook, res.text().await.unwrap())
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

/// A hook plugin built for 1.2 is called through its `*_lent` entries (the host reads none of the
/// 1.3 entries past its 144 bytes); the same plugin built for 1.3 through its `*_now` entries,
/// whose headers cross through the host's sink. Each answer names the entry that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_built_for_1_2_and_for_1_3_are_each_called_through_their_own_entries() {
    let old = abi_1_2_hooks();
    assert_eq!(inspected_abi(&old), "1.2");
    let library = load_library(&old).unwrap();
    assert_eq!(library.vtable().abi_minor, 2);
    assert!(library.vtable().before_request_lent.is_some());
    assert!(library.vtable().before_request_now.is_none());
    assert!(library.vtable().after_response_now.is_none());
    // Built against the 1.3 header: the host copies its 160 bytes, `_now` hooks included.
    let now = abi_1_3_now_hooks();
    assert_eq!(inspected_abi(&now), "1.3");
    let library = load_library(&now).unwrap();
    assert_eq!(
        (library.vtable().abi_minor, library.vtable().size),
        (3, 160)
    );
    assert!(library.vtable().before_request_now.is_some());
    assert!(library.vtable().after_response_now.is_some());
    assert!(library.vtable().handle_now.is_none());
    assert_eq!(inspected_abi(&now_c_hooks()), format!("1.{ABI_MINOR}"));

    let server = behind_hooks(&old);
    assert_eq!(
        hooked(&server, "/fx/1").await,
        (
            200,
            Some("lent".to_owned()),
            "abi 1.1 copied GET /fx/1 lent-hook".to_owned()
        )
    );
    for now in [now, now_c_hooks()] {
        let server = behind_hooks(&now);
        assert_eq!(
            hooked(&server, "/fx/1").await,
            (
                200,
                Some("now".to_owned()),
                "abi 1.1 copied GET /fx/1 now-hook".to_owned()
            ),
            "{}",
            now.display()
        );
    }
}

/// A `*_now` hook that breaks the ABI's rules, as a careless C author might: one that answers
/// with a pending task, and one that sends a header value that is not UTF-8 and goes on although
/// the sink refused it. Each fails that call (`before_request` fails closed: the client gets an
/// error, the endpoint does not run), names the plugin in the log, and the next request is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_now_hook_that_waits_or_sends_bad_text_fails_only_its_call() {
    let server = behind_hooks(&now_c_hooks());
    for path in ["/fx/pending", "/fx/bad-utf8"] {
        let (status, _, body) = hooked(&server, path).await;
        assert!(status >= 500, "{path}: {status} {body}");
        assert!(
            !body.contains("abi 1.1"),
            "{path}: the endpoint ran: {body}"
        );
        let (status, hook, body) = hooked(&server, "/fx/2").await;
        assert_eq!(
            (status, hook.as_deref(), body.as_str()),
            (200, Some("now"), "abi 1.1 copied GET /fx/2 now-hook"),
            "after {path}"
        );
    }
    let logs = server.logs();
    assert!(
        logs.contains("plugin `hooks` answered `before_request_now` with a pending call"),
        "{logs}"
    );
    assert!(
        logs.contains("plugin `hooks` set a header value that is not UTF-8"),
        "{logs}"
    );

    // The failures count against the hook plugin's breaker as any call's do: once it opens, its
    // hook is refused without a call, and the chain fails closed with that refusal. (By rate: the
    // plugin's `after_response` still answers each rejected request, so failures are never
    // consecutive.)
    let server = behind_hooks_with(
        &now_c_hooks(),
        "    breaker: { failure_rate: 0.3, min_calls: 3, cooldown_ms: 600000 }\n",
    );
    for _ in 0..2 {
        assert!(hooked(&server, "/fx/bad-utf8").await.0 >= 500);
    }
    let (status, _, body) = hooked(&server, "/fx/3").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit_open"), "{body}");
}

/// An endpoint built for 1.3 is served through `handle_lent` (the host reads nothing past its
/// 160 bytes); the same endpoint built for 1.4 through `handle_now`, alone, behind a hook chain
/// (whose `_now` hooks run around it) and under `isolation: process` (the child calls the same
/// entry), and through `handle_lent` where a caller of the library API awaits a call. Each
/// answer names the entry that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_built_for_1_3_and_for_1_4_are_each_served_through_their_own_entries() {
    let old = abi_1_3_lent_plugin();
    assert_eq!(inspected_abi(&old), "1.3");
    let library = load_library(&old).unwrap();
    assert_eq!(
        (library.vtable().abi_minor, library.vtable().size),
        (3, 160)
    );
    assert!(library.vtable().handle_lent.is_some() && library.vtable().handle_now.is_none());
    let now = now_c_plugin();
    assert_eq!(inspected_abi(&now), format!("1.{ABI_MINOR}"));
    assert!(load_library(&now).unwrap().vtable().handle_now.is_some());
    // An embedder awaiting `Plugin::handle` gets the lent entry, which the plugin keeps too.
    let plugin = started(&now, "now", Value::Null).await;
    assert_eq!(
        body_of(&plugin, "/fx/1").await,
        format!("abi 1.{ABI_MINOR} lent GET /fx/1 ana")
    );

    let server = Server::start(&format!(
        "plugins:\n  old:\n    path: {}\n  now:\n    path: {}\n  isolated:\n    path: {}\n    isolation: process\n  hooks:\n    path: {}\n    hooks: [before_request, after_response]\nendpoints:\n  old: {{ path: \"/old/{{id}}\", plugin: old, hooks: [] }}\n  now: {{ path: \"/now/{{id}}\", plugin: now, hooks: [] }}\n  hooked: {{ path: \"/hooked/{{id}}\", plugin: now, hooks: [hooks] }}\n  isolated: {{ path: \"/isolated/{{id}}\", plugin: isolated, hooks: [] }}\n",
        old.display(),
        now.display(),
        now.display(),
        now_c_hooks().display()
    ));
    let get = |path: &str| client().get(server.url(path)).header("X-Name", "bo").send();
    let res = get("/old/7").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "abi 1.3 lent GET /old/7 bo");
    let res = get("/now/7").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        format!("abi 1.{ABI_MINOR} now GET /now/7 bo")
    );
    let res = get("/isolated/9").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        format!("abi 1.{ABI_MINOR} now GET /isolated/9 bo")
    );
    assert_eq!(
        hooked(&server, "/hooked/8").await,
        (
            200,
            Some("now".to_owned()),
            format!("abi 1.{ABI_MINOR} now GET /hooked/8 now-hook")
        )
    );
}

/// A `handle_now` that answers with a pending task, as a careless C author might write it: that
/// call fails (502, with nothing of the plugin's output), the task is released unstarted, the
/// plugin is named in the log, the next request is served, and the failures count against the
/// plugin's breaker as any call's do; a neighbouring plugin answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_now_endpoint_that_waits_fails_only_its_call() {
    let config = |breaker: &str| {
        format!(
            "plugins:\n  now:\n    path: {}\n{breaker}  control:\n    path: {}\nendpoints:\n  now: {{ path: \"/fx/{{id}}\", plugin: now }}\n  control: {{ path: \"/control/{{id}}\", plugin: control }}\n",
            now_c_plugin().display(),
            abi_1_1_plugin().display()
        )
    };
    let server = Server::start(&config(""));
    for round in 1..=3 {
        let (status, _, body) = hooked(&server, "/fx/pending").await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("invalid_response"), "{body}");
        let (status, _, body) = hooked(&server, "/fx/2").await;
        assert_eq!(
            (status, body),
            (200, format!("abi 1.{ABI_MINOR} now GET /fx/2 -"))
        );
        let (_, _, body) = hooked(&server, "/fx/released").await;
        assert_eq!(body, format!("released {round}"));
    }
    let logs = server.logs();
    assert!(
        logs.contains("plugin `now` answered `handle_now` with a pending call"),
        "{logs}"
    );

    let server = Server::start(&config(
        "    breaker: { consecutive_failures: 3, cooldown_ms: 600000 }\n",
    ));
    for _ in 0..3 {
        assert_eq!(hooked(&server, "/fx/pending").await.0, 502);
    }
    let (status, _, body) = hooked(&server, "/fx/3").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit_open"), "{body}");
    // A neighbouring plugin answered throughout and still does.
    assert_eq!(
        hooked(&server, "/control/4").await,
        (200, None, "abi 1.1 copied GET /control/4 -".to_owned())
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

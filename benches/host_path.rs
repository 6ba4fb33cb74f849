//! What a no-op endpoint call costs on each layer of the host, side by side in one run:
//!
//! - `bare_vtable`: one call of the plugin library's `handle` through the C vtable, with a prebuilt
//!   request; the floor under everything else.
//! - `builtin_trait` / `dylib_trait`: the same no-op plugin through the host's `Plugin` trait,
//!   compiled in (`BuiltinPlugin`) versus loaded from its `.so` (`DynamicPlugin`).
//! - `builtin_server` / `dylib_server`: the whole server path without the socket: axum routing,
//!   request conversion, hook chain, plugin call, response conversion.
//!
//! Run with `cargo bench --bench host_path`; method and results are in BENCHMARKS.md.

use std::sync::Arc;

use axum::body::Body;
use backworks::config;
use backworks_plugin_host::{BuiltinPlugin, DynamicPlugin, Plugin, PluginHost, loader};
use backworks_plugin_sdk::abi::{BwKvList, BwRequest, BwStr};
use backworks_plugin_sdk::{BackworksPlugin, Request};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

fn noop_library() -> std::path::PathBuf {
    // benches run from target/<profile>/deps; the noop cdylib is built next to it.
    let exe = std::env::current_exe().expect("bench executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let lib = dir.join(format!("libnoop.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build --release -p backworks-example-noop` first",
        lib.display()
    );
    lib
}

fn request() -> Request {
    let mut request = Request::new("GET", "/noop/42");
    request.params.push(("id".into(), "42".into()));
    request.headers.insert("host", "localhost");
    request
}

fn server(host: &Arc<PluginHost>, rt: &tokio::runtime::Runtime, yaml: &str) -> axum::Router {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backworks.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let config = config::load(&path).expect("bench config");
    rt.block_on(backworks::server::start_plugins(&config, host));
    backworks::server::router(&config, host.clone())
}

fn http_request() -> axum::http::Request<Body> {
    axum::http::Request::get("/noop/42")
        .header("host", "localhost")
        .body(Body::empty())
        .expect("request")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let lib = noop_library();
    let dylib = Arc::new(
        DynamicPlugin::new(loader::load(&lib).expect("load noop"), "noop").expect("instance"),
    );
    let builtin = Arc::new(BuiltinPlugin::new("noop", "0.1.0", "", noop::Noop));
    rt.block_on(async {
        dylib
            .initialize(&serde_json::Value::Null)
            .await
            .expect("init");
        builtin
            .inner()
            .initialize(serde_json::Value::Null)
            .await
            .expect("init");
    });

    let mut group = c.benchmark_group("noop_call");
    let method = b"GET";
    let path = b"/noop/42";
    let bare = BwRequest {
        method: BwStr::new(method),
        path: BwStr::new(path),
        params: BwKvList::EMPTY,
        query: BwKvList::EMPTY,
        headers: BwKvList::EMPTY,
        body: BwStr::EMPTY,
    };
    group.bench_function("bare_vtable", |b| b.iter(|| dylib.bare_handle(&bare)));
    let req = request();
    group.bench_function("builtin_trait", |b| {
        b.to_async(&rt).iter(|| builtin.handle(req.clone()))
    });
    group.bench_function("dylib_trait", |b| {
        b.to_async(&rt).iter(|| dylib.handle(req.clone()))
    });

    let builtin_host = Arc::new(PluginHost::new());
    builtin_host.register_builtin("noop", |name| {
        Arc::new(BuiltinPlugin::new(name, "0.1.0", "", noop::Noop))
    });
    let builtin_app = server(
        &builtin_host,
        &rt,
        "plugins:\n  noop:\n    type: builtin\nendpoints:\n  noop:\n    path: /noop/{id}\n    plugin: noop\n",
    );
    let dylib_host = Arc::new(PluginHost::new());
    let dylib_app = server(
        &dylib_host,
        &rt,
        &format!(
            "plugins:\n  noop:\n    type: external\n    path: {}\nendpoints:\n  noop:\n    path: /noop/{{id}}\n    plugin: noop\n",
            lib.display()
        ),
    );
    group.bench_function("builtin_server", |b| {
        b.to_async(&rt)
            .iter(|| builtin_app.clone().oneshot(http_request()))
    });
    group.bench_function("dylib_server", |b| {
        b.to_async(&rt)
            .iter(|| dylib_app.clone().oneshot(http_request()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! What a no-op endpoint call costs on each layer of the host, side by side in one run:
//!
//! - `bare_vtable`: one call of the plugin library's `handle` through the C vtable, with a prebuilt
//!   request; the floor under everything else.
//! - `builtin_trait` / `dylib_trait`: the same no-op plugin through the host's `Plugin` trait,
//!   compiled in (`BuiltinPlugin`) versus loaded from its `.so` (`DynamicPlugin`).
//! - `builtin_guarded` / `dylib_guarded`: the same behind the call guard with the default policy
//!   (circuit breaker, concurrency limit, deadline, stats), as the server runs every plugin.
//! - `builtin_server` / `dylib_server`: the whole server path without the socket: axum routing,
//!   request conversion, hook chain, call guard, plugin call, per-endpoint metrics, response
//!   conversion.
//!
//! Run with `cargo bench --bench host_path`; method and results are in BENCHMARKS.md.
//!
//! For instruction counts, which stay put on a noisy machine, the same binary runs one row a fixed
//! number of times without criterion when `HOST_PATH_CALLS` is set:
//!
//! ```sh
//! HOST_PATH_CALLS=20000 HOST_PATH_ROW=dylib_server \
//!     valgrind --tool=callgrind target/release/deps/host_path-<hash>
//! ```
//!
//! Run it with two counts; the difference of the totals divided by the difference of the counts is
//! the instructions of one call.

use std::sync::Arc;

use axum::body::Body;
use backworks::config;
use backworks_plugin_host::{
    BuiltinPlugin, CallPolicy, DynamicPlugin, Guarded, Lifecycle, Plugin, PluginHost, PluginState,
    load_library,
};
use backworks_plugin_sdk::abi::{BwKvList, BwRequest, BwStr};
use backworks_plugin_sdk::{BackworksPlugin, Request};
use criterion::Criterion;
use tower::ServiceExt;

mod noop_fixture;

/// Every row, in the order criterion runs them.
const ROWS: [&str; 7] = [
    "bare_vtable",
    "builtin_trait",
    "dylib_trait",
    "builtin_guarded",
    "dylib_guarded",
    "builtin_server",
    "dylib_server",
];

fn server(host: &Arc<PluginHost>, rt: &tokio::runtime::Runtime, yaml: &str) -> axum::Router {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backworks.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let config = config::load(&path).expect("bench config");
    rt.block_on(backworks::server::start_plugins(&config, host))
        .expect("bench plugins start");
    backworks::server::router(&config, host.clone())
}

fn http_request() -> axum::http::Request<Body> {
    axum::http::Request::get("/noop/42")
        .header("host", "localhost")
        .body(Body::empty())
        .expect("request")
}

/// The plugins and servers every row calls, set up once.
struct Fixture {
    rt: tokio::runtime::Runtime,
    dylib: Arc<DynamicPlugin>,
    builtin: Arc<BuiltinPlugin<noop::Noop>>,
    /// The same two behind the call guard (breaker, concurrency limit, deadline, stats) with the
    /// default policy, as the server runs every plugin.
    builtin_guarded: Guarded,
    dylib_guarded: Guarded,
    builtin_app: axum::Router,
    dylib_app: axum::Router,
    request: Request,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let lib = noop_fixture::library();
        let dylib = Arc::new(
            DynamicPlugin::new(load_library(&lib).expect("load noop"), "noop").expect("instance"),
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
        let guarded = |plugin: Arc<dyn Plugin>| {
            let lifecycle = Arc::new(Lifecycle::new("noop", PluginState::Active));
            Guarded::new(plugin, CallPolicy::default(), lifecycle)
        };
        Fixture {
            rt,
            builtin_guarded: guarded(builtin.clone()),
            dylib_guarded: guarded(dylib.clone()),
            dylib,
            builtin,
            builtin_app,
            dylib_app,
            request: noop_fixture::request("GET"),
        }
    }
}

/// The prebuilt request of `bare_vtable`: method and path only.
fn bare_request() -> BwRequest {
    BwRequest {
        method: BwStr::new(b"GET"),
        path: BwStr::new(b"/noop/42"),
        params: BwKvList::EMPTY,
        query: BwKvList::EMPTY,
        headers: BwKvList::EMPTY,
        body: BwStr::EMPTY,
    }
}

fn bench(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("noop_call");
    let bare = bare_request();
    group.bench_function("bare_vtable", |b| b.iter(|| f.dylib.bare_handle(&bare)));
    group.bench_function("builtin_trait", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin.handle(f.request.clone()))
    });
    group.bench_function("dylib_trait", |b| {
        b.to_async(&f.rt).iter(|| f.dylib.handle(f.request.clone()))
    });
    group.bench_function("builtin_guarded", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin_guarded.handle(f.request.clone()))
    });
    group.bench_function("dylib_guarded", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_guarded.handle(f.request.clone()))
    });
    group.bench_function("builtin_server", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin_app.clone().oneshot(http_request()))
    });
    group.bench_function("dylib_server", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_app.clone().oneshot(http_request()))
    });
    group.finish();
}

/// Runs row `row` `calls` times without criterion, checking every answer is a 200.
fn count(f: &Fixture, row: &str, calls: u64) {
    let bare = bare_request();
    f.rt.block_on(async {
        for _ in 0..calls {
            let status = match row {
                "bare_vtable" => f.dylib.bare_handle(&bare),
                "builtin_trait" => f
                    .builtin
                    .handle(f.request.clone())
                    .await
                    .map_or(0, |r| r.status),
                "dylib_trait" => f
                    .dylib
                    .handle(f.request.clone())
                    .await
                    .map_or(0, |r| r.status),
                "builtin_guarded" => f
                    .builtin_guarded
                    .handle(f.request.clone())
                    .await
                    .map_or(0, |r| r.status),
                "dylib_guarded" => f
                    .dylib_guarded
                    .handle(f.request.clone())
                    .await
                    .map_or(0, |r| r.status),
                "builtin_server" => f
                    .builtin_app
                    .clone()
                    .oneshot(http_request())
                    .await
                    .map_or(0, |r| r.status().as_u16()),
                "dylib_server" => f
                    .dylib_app
                    .clone()
                    .oneshot(http_request())
                    .await
                    .map_or(0, |r| r.status().as_u16()),
                other => panic!("unknown row {other:?}; rows: {ROWS:?}"),
            };
            assert_eq!(status, 200, "row {row}");
        }
    });
}

fn main() {
    let fixture = Fixture::new();
    if let Ok(calls) = std::env::var("HOST_PATH_CALLS") {
        let calls = calls.parse().expect("HOST_PATH_CALLS is a number");
        let row = std::env::var("HOST_PATH_ROW").unwrap_or_else(|_| "dylib_server".to_owned());
        count(&fixture, &row, calls);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &fixture);
    criterion.final_summary();
}

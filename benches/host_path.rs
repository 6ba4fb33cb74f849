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
//! - `dylib_*_copy`: the `dylib_*` rows with lending off, so the same library is served through
//!   its copying `handle` (the path of a plugin built for ABI 1.1) instead of `handle_lent`: the
//!   A/B of ABI 1.2's lent request in one run.
//! - `*_sync`: the same no-op as a synchronous endpoint (`NoopSync`, `HANDLE_SYNC`), built in and
//!   loaded from `libnoop_sync.so`, which the guard (`Guarded::handle_now`) and the server call
//!   at once, without a future: the built-in's `handle_sync` directly, the library through ABI
//!   1.4's `handle_now`.
//!
//! Run with `cargo bench --bench host_path`; method and results are in BENCHMARKS.md.
//!
//! After criterion, every row runs again in a plain loop that prints, per call, the CPU time of the
//! process and the allocations: the host's (this binary's counting global allocator) and the whole
//! process's, the plugin library's own included (a library allocates through its own global
//! allocator, straight from the C library, so the bench re-runs itself with `count_mallocs.c`,
//! compiled with `cc`, preloaded to count those; without a C compiler that column is left out).
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

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
const ROWS: [&str; 14] = [
    "bare_vtable",
    "builtin_trait",
    "dylib_trait",
    "dylib_trait_copy",
    "builtin_guarded",
    "dylib_guarded",
    "dylib_guarded_copy",
    "builtin_server",
    "dylib_server",
    "dylib_server_copy",
    "builtin_guarded_sync",
    "dylib_guarded_sync",
    "builtin_server_sync",
    "dylib_server_sync",
];

/// The global allocator: the system's, counting every allocation (reallocations included).
struct Counting;

static HOST_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; counting is an
// atomic add that neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HOST_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HOST_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HOST_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Set in the re-run of this bench with `count_mallocs.c` preloaded.
const PRELOADED_VAR: &str = "HOST_PATH_COUNT_MALLOCS";

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn clock_gettime(clock: i32, time: *mut [i64; 2]) -> i32;
}

/// The process's allocation count from the preloaded `count_mallocs.c`, if it is preloaded.
fn process_allocations() -> Option<u64> {
    // SAFETY: `dlsym` with RTLD_DEFAULT (null on glibc) and a NUL-terminated name; the symbol,
    // when present, is `count_mallocs.c`'s `unsigned long long backworks_bench_allocations(void)`.
    unsafe {
        let symbol = dlsym(
            std::ptr::null_mut(),
            c"backworks_bench_allocations".as_ptr(),
        );
        if symbol.is_null() {
            return None;
        }
        let count: extern "C" fn() -> u64 = std::mem::transmute(symbol);
        Some(count())
    }
}

/// CPU time of the whole process (every thread), in nanoseconds.
fn process_cpu_ns() -> u64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut time = [0i64; 2];
    // SAFETY: a valid clock id and a pointer to a `struct timespec`-sized buffer.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    time[0] as u64 * 1_000_000_000 + time[1] as u64
}

/// Compiles `count_mallocs.c` next to this binary; `None` when there is no C compiler.
fn count_mallocs_library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lib = exe.parent()?.join("libbackworks_count_mallocs.so");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/count_mallocs.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(cc)
        .args(["-shared", "-fPIC", "-O2", "-std=c11", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .ok()?;
    built.success().then_some(lib)
}

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
    /// The same library with lending off: served through its copying `handle`.
    dylib_copy: Arc<DynamicPlugin>,
    builtin: Arc<BuiltinPlugin<noop::Noop>>,
    /// The same two behind the call guard (breaker, concurrency limit, deadline, stats) with the
    /// default policy, as the server runs every plugin.
    builtin_guarded: Guarded,
    dylib_guarded: Guarded,
    dylib_copy_guarded: Guarded,
    builtin_app: axum::Router,
    dylib_app: axum::Router,
    dylib_copy_app: axum::Router,
    /// The synchronous no-op (`NoopSync`) behind its guard and in a server, built in and from
    /// `libnoop_sync.so`.
    builtin_sync_guarded: Guarded,
    dylib_sync_guarded: Guarded,
    builtin_sync_app: axum::Router,
    dylib_sync_app: axum::Router,
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
        let dylib_copy = Arc::new(
            DynamicPlugin::new(load_library(&lib).expect("load noop"), "noop")
                .expect("instance")
                .without_lending(),
        );
        let sync_lib = noop_fixture::sync_library();
        let dylib_sync = Arc::new(
            DynamicPlugin::new(load_library(&sync_lib).expect("load noop_sync"), "noop")
                .expect("instance"),
        );
        let builtin = Arc::new(BuiltinPlugin::new("noop", "0.1.0", "", noop::Noop));
        let builtin_sync = Arc::new(BuiltinPlugin::new("noop", "0.1.0", "", noop::NoopSync));
        rt.block_on(async {
            for dylib in [&dylib, &dylib_copy, &dylib_sync] {
                dylib
                    .initialize(&serde_json::Value::Null)
                    .await
                    .expect("init");
            }
            builtin
                .inner()
                .initialize(serde_json::Value::Null)
                .await
                .expect("init");
            builtin_sync
                .inner()
                .initialize(serde_json::Value::Null)
                .await
                .expect("init");
        });
        let builtin_yaml = "plugins:\n  noop:\n    type: builtin\nendpoints:\n  noop:\n    path: /noop/{id}\n    plugin: noop\n";
        let builtin_host = Arc::new(PluginHost::new());
        builtin_host.register_builtin("noop", |name| {
            Arc::new(BuiltinPlugin::new(name, "0.1.0", "", noop::Noop))
        });
        let builtin_app = server(&builtin_host, &rt, builtin_yaml);
        let builtin_sync_host = Arc::new(PluginHost::new());
        builtin_sync_host.register_builtin("noop", |name| {
            Arc::new(BuiltinPlugin::new(name, "0.1.0", "", noop::NoopSync))
        });
        let builtin_sync_app = server(&builtin_sync_host, &rt, builtin_yaml);
        let dylib_yaml = |lib: &std::path::Path| {
            format!(
                "plugins:\n  noop:\n    type: external\n    path: {}\nendpoints:\n  noop:\n    path: /noop/{{id}}\n    plugin: noop\n",
                lib.display()
            )
        };
        let dylib_sync_app = server(&Arc::new(PluginHost::new()), &rt, &dylib_yaml(&sync_lib));
        let dylib_yaml = dylib_yaml(&lib);
        let dylib_app = server(&Arc::new(PluginHost::new()), &rt, &dylib_yaml);
        // The same server with lending off for the instances it creates.
        DynamicPlugin::set_lending(false);
        let dylib_copy_app = server(&Arc::new(PluginHost::new()), &rt, &dylib_yaml);
        DynamicPlugin::set_lending(true);
        let guarded = |plugin: Arc<dyn Plugin>| {
            let lifecycle = Arc::new(Lifecycle::new("noop", PluginState::Active));
            Guarded::new(plugin, CallPolicy::default(), lifecycle)
        };
        Fixture {
            rt,
            builtin_guarded: guarded(builtin.clone()),
            dylib_guarded: guarded(dylib.clone()),
            dylib_copy_guarded: guarded(dylib_copy.clone()),
            builtin_sync_guarded: guarded(builtin_sync),
            dylib_sync_guarded: guarded(dylib_sync),
            builtin_sync_app,
            dylib_sync_app,
            dylib,
            dylib_copy,
            builtin,
            builtin_app,
            dylib_app,
            dylib_copy_app,
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
    group.bench_function("dylib_trait_copy", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_copy.handle(f.request.clone()))
    });
    group.bench_function("builtin_guarded", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin_guarded.handle(f.request.clone()))
    });
    group.bench_function("dylib_guarded", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_guarded.handle(f.request.clone()))
    });
    group.bench_function("dylib_guarded_copy", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_copy_guarded.handle(f.request.clone()))
    });
    group.bench_function("builtin_server", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin_app.clone().oneshot(http_request()))
    });
    group.bench_function("dylib_server", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_app.clone().oneshot(http_request()))
    });
    group.bench_function("dylib_server_copy", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_copy_app.clone().oneshot(http_request()))
    });
    // As the server calls them: at once through `handle_now`, no future.
    group.bench_function("builtin_guarded_sync", |b| {
        b.iter(|| f.builtin_sync_guarded.handle_now(&f.request))
    });
    group.bench_function("dylib_guarded_sync", |b| {
        b.iter(|| f.dylib_sync_guarded.handle_now(&f.request))
    });
    group.bench_function("builtin_server_sync", |b| {
        b.to_async(&f.rt)
            .iter(|| f.builtin_sync_app.clone().oneshot(http_request()))
    });
    group.bench_function("dylib_server_sync", |b| {
        b.to_async(&f.rt)
            .iter(|| f.dylib_sync_app.clone().oneshot(http_request()))
    });
    group.finish();
}

/// The status of `guarded`'s call of `request` at once (`handle_now`).
fn now(guarded: &Guarded, request: &Request) -> u16 {
    match guarded.handle_now(request) {
        Some(answer) => answer.map_or(0, |r| r.status),
        None => panic!("the synchronous noop cannot answer at once"),
    }
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
                "dylib_trait_copy" => f
                    .dylib_copy
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
                "dylib_guarded_copy" => f
                    .dylib_copy_guarded
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
                "dylib_server_copy" => f
                    .dylib_copy_app
                    .clone()
                    .oneshot(http_request())
                    .await
                    .map_or(0, |r| r.status().as_u16()),
                "builtin_guarded_sync" => now(&f.builtin_sync_guarded, &f.request),
                "dylib_guarded_sync" => now(&f.dylib_sync_guarded, &f.request),
                "builtin_server_sync" => f
                    .builtin_sync_app
                    .clone()
                    .oneshot(http_request())
                    .await
                    .map_or(0, |r| r.status().as_u16()),
                "dylib_server_sync" => f
                    .dylib_sync_app
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

/// Prints, for every row, the CPU time of the process and the allocations per call, over a loop of
/// `calls` after a warm-up.
fn per_call(f: &Fixture, calls: u64) {
    println!(
        "\nper call, {calls} calls a row after {} of warm-up:",
        calls / 10
    );
    println!(
        "{:<20} {:>12} {:>18} {:>26}",
        "row", "CPU ns", "host allocations", "process allocations"
    );
    for row in ROWS {
        count(f, row, calls / 10);
        let (host, process, cpu) = (
            HOST_ALLOCATIONS.load(Ordering::Relaxed),
            process_allocations(),
            process_cpu_ns(),
        );
        count(f, row, calls);
        let cpu = (process_cpu_ns() - cpu) as f64 / calls as f64;
        let host = (HOST_ALLOCATIONS.load(Ordering::Relaxed) - host) as f64 / calls as f64;
        let process = match (process, process_allocations()) {
            (Some(before), Some(after)) => format!("{:.2}", (after - before) as f64 / calls as f64),
            _ => "(not preloaded)".to_owned(),
        };
        println!("{row:<20} {cpu:>12.0} {host:>18.2} {process:>26}");
    }
}

fn main() {
    // Re-run with `count_mallocs.c` preloaded, so the plugin library's allocations are counted too
    // (not for a fixed count of calls, whose instructions are counted in this very process).
    if std::env::var_os(PRELOADED_VAR).is_none()
        && std::env::var_os("HOST_PATH_CALLS").is_none()
        && let Some(lib) = count_mallocs_library()
    {
        let status = Command::new(std::env::current_exe().expect("bench executable"))
            .args(std::env::args_os().skip(1))
            .env("LD_PRELOAD", lib)
            .env(PRELOADED_VAR, "1")
            .status()
            .expect("re-run the bench");
        std::process::exit(status.code().unwrap_or(1));
    }
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
    let calls = std::env::var("HOST_PATH_PER_CALL")
        .map(|n| n.parse().expect("HOST_PATH_PER_CALL is a number"))
        .unwrap_or(100_000);
    per_call(&fixture, calls);
}

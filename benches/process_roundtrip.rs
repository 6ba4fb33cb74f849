//! What a call costs through a process-isolated plugin, beside the same call in process, same run:
//!
//! - `in_process`: the `noop` plugin library loaded in the host (`DynamicPlugin`), through the
//!   host's `Plugin` trait;
//! - `process`: the same library in a child process (`ProcessPlugin`: the `backworks` binary as
//!   the runner), through the same trait: the request out as JSON-RPC over a socket, the plugin
//!   call in the child, the answer back.
//!
//! - `process_spin`: the same with `spin: 50 µs` (`spin_us: 50` in `backworks.yaml`): while calls
//!   come close together, each side polls for up to 50 µs for the next message instead of
//!   sleeping at once (see `plugin-host/src/protocol/spin.rs`);
//! - `pipe_floor`: no plugin at all: a 100-byte line through `cat` and back over two pipes, with
//!   blocking reads on one thread. It is the floor this machine puts under any process round trip
//!   at the moment of the run (it moves a lot on a shared VM), printed beside the others.
//!
//! Each call is a `POST` with a 100-byte body. Both run on a current-thread tokio runtime, as a
//! server's request task runs on a worker with the protocol client's tasks beside it. Criterion
//! gives means and medians; after it, a plain loop records every call's latency and prints p50,
//! p90 and p99 for both (the brief's targets for `process`: p50 ≤ 20 µs, p99 ≤ 200 µs).
//!
//! Run with `cargo build --release -p backworks-fixture-noop --example noop` then
//! `cargo bench --bench process_roundtrip`; method and results are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backworks_plugin_host::{
    DynamicPlugin, Lifecycle, Plugin, PluginSource, PluginState, ProcessPlugin, ProcessSettings,
    load_library,
};
use backworks_plugin_sdk::Request;
use criterion::{Criterion, criterion_group, criterion_main};

mod noop_fixture;

/// Calls measured one by one for the percentiles, after as many warm-up calls.
const SAMPLES: usize = 20_000;

/// p50, p90 and p99 of `SAMPLES` calls of `plugin.handle`, after as many warm-up calls.
fn percentiles(
    rt: &tokio::runtime::Runtime,
    plugin: &dyn Plugin,
    request: &Request,
) -> [Duration; 3] {
    rt.block_on(async {
        let mut latencies = Vec::with_capacity(SAMPLES);
        for i in 0..2 * SAMPLES {
            let start = Instant::now();
            let response = plugin.handle(request.clone()).await.expect("noop answers");
            let elapsed = start.elapsed();
            assert_eq!(response.status, 200);
            if i >= SAMPLES {
                latencies.push(elapsed);
            }
        }
        quantiles(latencies)
    })
}

/// p50, p90 and p99 of `SAMPLES` 100-byte line round trips through `cat`.
fn pipe_floor() -> [Duration; 3] {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cat");
    let mut to_cat = cat.stdin.take().expect("cat stdin");
    let mut from_cat = BufReader::new(cat.stdout.take().expect("cat stdout"));
    let line = format!("{}\n", "x".repeat(100));
    let mut echoed = String::new();
    let mut latencies = Vec::with_capacity(SAMPLES);
    for i in 0..2 * SAMPLES {
        let start = Instant::now();
        to_cat.write_all(line.as_bytes()).expect("write to cat");
        echoed.clear();
        from_cat.read_line(&mut echoed).expect("read from cat");
        if i >= SAMPLES {
            latencies.push(start.elapsed());
        }
    }
    drop(to_cat);
    let _ = cat.wait();
    quantiles(latencies)
}

fn quantiles(mut latencies: Vec<Duration>) -> [Duration; 3] {
    latencies.sort_unstable();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    [at(50), at(90), at(99)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lib = noop_fixture::library();
    let in_process: Arc<dyn Plugin> = Arc::new(
        DynamicPlugin::new(load_library(&lib).expect("load noop"), "noop").expect("instance"),
    );
    let settings = ProcessSettings {
        // The `backworks` binary calls the child entry point first thing in `main`.
        runner: Some(vec![
            env!("CARGO_BIN_EXE_backworks").to_owned(),
            backworks_plugin_host::CHILD_ARG.to_owned(),
        ]),
        ..ProcessSettings::default()
    };
    let start_child = |settings: &ProcessSettings| -> Arc<dyn Plugin> {
        rt.block_on(async {
            let lifecycle = Arc::new(Lifecycle::new("noop", PluginState::Loading));
            let source = PluginSource::Library(lib.clone());
            let plugin = ProcessPlugin::start("noop", &source, settings, lifecycle)
                .await
                .expect("start the noop child");
            plugin
                .initialize(&serde_json::Value::Null)
                .await
                .expect("init");
            Arc::new(plugin)
        })
    };
    let process = start_child(&settings);
    let process_spin = start_child(&ProcessSettings {
        spin: Duration::from_micros(50),
        ..settings.clone()
    });
    rt.block_on(in_process.initialize(&serde_json::Value::Null))
        .expect("init");

    let mut req = noop_fixture::request("POST");
    req.body = vec![b'x'; 100];
    let mut group = c.benchmark_group("process_roundtrip");
    group.bench_function("in_process", |b| {
        b.to_async(&rt).iter(|| in_process.handle(req.clone()))
    });
    group.bench_function("process", |b| {
        b.to_async(&rt).iter(|| process.handle(req.clone()))
    });
    group.bench_function("process_spin", |b| {
        b.to_async(&rt).iter(|| process_spin.handle(req.clone()))
    });
    group.finish();

    let rows = [
        ("in_process", percentiles(&rt, in_process.as_ref(), &req)),
        ("process", percentiles(&rt, process.as_ref(), &req)),
        (
            "process_spin",
            percentiles(&rt, process_spin.as_ref(), &req),
        ),
        ("pipe_floor", pipe_floor()),
    ];
    for (name, [p50, p90, p99]) in rows {
        println!(
            "process_roundtrip/{name}: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs ({SAMPLES} calls)",
            p50.as_secs_f64() * 1e6,
            p90.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
        );
    }
    rt.block_on(async {
        let _ = process.shutdown().await;
        let _ = process_spin.shutdown().await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

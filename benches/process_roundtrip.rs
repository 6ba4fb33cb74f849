//! What a call costs through a process-isolated plugin, beside the same call in process, same run:
//!
//! - `in_process`: the `noop` plugin library loaded in the host (`DynamicPlugin`), through the
//!   host's `Plugin` trait;
//! - `process`: the same library in a child process (`ProcessPlugin`: the `backworks` binary as
//!   the runner) with the **default** settings, through the same trait: the request out as
//!   JSON-RPC over a socket, the plugin call in the child, the answer back;
//! - `process_spin_50` and `process_spin_0`: the same with `spin_us: 50` and `spin_us: 0` set
//!   explicitly (poll up to 50 µs for the next message while messages come close together, or
//!   never; see `plugin-host/src/protocol/spin.rs`), so a change of default shows beside both;
//! - `process_body_0` and `process_body_64k`: the default child with no body and with a 64 KiB
//!   body (percentiles only): what the body's base64 and JSON cost;
//! - `python`: `tests/fixtures/process/noop_sdk.py`, the same no-op endpoint written with the
//!   Python SDK, default settings;
//! - `pipe_floor`: no plugin at all: a 100-byte line through `cat` and back over two pipes, with
//!   blocking reads on one thread. It is the floor this machine puts under any process round trip
//!   at the moment of the run (it moves a lot on a shared VM), printed beside the others.
//!
//! Each call is a `POST` with a 100-byte body. All run on a current-thread tokio runtime, as a
//! server's request task runs on a worker with the protocol client's tasks beside it. Criterion
//! gives means and medians; after it, a plain loop records every call's latency and prints p50,
//! p90 and p99 (the targets for `process`: p50 ≤ 20 µs, p99 ≤ 200 µs) and the CPU time per call
//! of the bench process and of the child together (all their threads, from
//! `/proc/PID/task/*/schedstat`). Last, `idle`: the CPU the bench process and every child use
//! over 10 s without calls, right after the loops (target ≈ 0: an idle plugin must not spin).
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

/// CPU time used so far by every thread of process `pid`, in nanoseconds (0 if it is gone).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time used so far by this process and the given children, in nanoseconds.
fn cpu_with(children: &[u32]) -> u64 {
    cpu_ns(std::process::id()) + children.iter().map(|&pid| cpu_ns(pid)).sum::<u64>()
}

/// p50, p90 and p99 of `SAMPLES` calls of `plugin.handle`, after as many warm-up calls, and the
/// CPU time per call of this process and the plugin's child together.
fn percentiles(
    rt: &tokio::runtime::Runtime,
    plugin: &dyn Plugin,
    children: &[u32],
    request: &Request,
) -> ([Duration; 3], Duration) {
    rt.block_on(async {
        let mut latencies = Vec::with_capacity(SAMPLES);
        let mut cpu_before = 0;
        for i in 0..2 * SAMPLES {
            if i == SAMPLES {
                cpu_before = cpu_with(children);
            }
            let start = Instant::now();
            let response = plugin.handle(request.clone()).await.expect("noop answers");
            let elapsed = start.elapsed();
            assert_eq!(response.status, 200);
            if i >= SAMPLES {
                latencies.push(elapsed);
            }
        }
        let cpu = cpu_with(children) - cpu_before;
        (
            quantiles(latencies),
            Duration::from_nanos(cpu / SAMPLES as u64),
        )
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
    let start_child = |source: PluginSource, settings: &ProcessSettings| -> Arc<ProcessPlugin> {
        rt.block_on(async {
            let lifecycle = Arc::new(Lifecycle::new("noop", PluginState::Loading));
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
    let library = || PluginSource::Library(lib.clone());
    let with_spin = |us| ProcessSettings {
        spin: Duration::from_micros(us),
        ..settings.clone()
    };
    let python_script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/process/noop_sdk.py"
    );
    let children = [
        ("process", start_child(library(), &settings)),
        ("process_spin_50", start_child(library(), &with_spin(50))),
        ("process_spin_0", start_child(library(), &with_spin(0))),
        (
            "python",
            start_child(
                PluginSource::Command(vec!["python3".into(), python_script.into()]),
                &settings,
            ),
        ),
    ];
    rt.block_on(in_process.initialize(&serde_json::Value::Null))
        .expect("init");

    let mut req = noop_fixture::request("POST");
    req.body = vec![b'x'; 100];
    let mut group = c.benchmark_group("process_roundtrip");
    group.bench_function("in_process", |b| {
        b.to_async(&rt).iter(|| in_process.handle(req.clone()))
    });
    for (name, plugin) in &children {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| plugin.handle(req.clone()))
        });
    }
    group.finish();

    let pids: Vec<u32> = children
        .iter()
        .filter_map(|(_, p)| p.supervision().pid)
        .collect();
    let mut rows = vec![(
        "in_process",
        percentiles(&rt, in_process.as_ref(), &[], &req),
    )];
    for (name, plugin) in &children {
        let pid: Vec<u32> = plugin.supervision().pid.into_iter().collect();
        rows.push((*name, percentiles(&rt, plugin.as_ref(), &pid, &req)));
    }
    // What the body's size costs (its base64 and JSON both ways): the default child again, with
    // no body and with 64 KiB.
    let default_child = &children[0].1;
    let pid: Vec<u32> = default_child.supervision().pid.into_iter().collect();
    for (name, size) in [("process_body_0", 0), ("process_body_64k", 64 << 10)] {
        let mut sized = req.clone();
        sized.body = (0..size).map(|i| (i % 251) as u8).collect();
        rows.push((name, percentiles(&rt, default_child.as_ref(), &pid, &sized)));
    }
    for (name, ([p50, p90, p99], cpu)) in rows {
        println!(
            "process_roundtrip/{name}: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, \
             CPU {:.2} µs/call ({SAMPLES} calls)",
            p50.as_secs_f64() * 1e6,
            p90.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            cpu.as_secs_f64() * 1e6,
        );
    }
    let [p50, p90, p99] = pipe_floor();
    println!(
        "process_roundtrip/pipe_floor: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs ({SAMPLES} calls)",
        p50.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
    );

    // Idle: nothing calls any plugin for 10 s (the runtime sleeps in `block_on`).
    let idle = Duration::from_secs(10);
    let before = cpu_with(&pids);
    rt.block_on(async { tokio::time::sleep(idle).await });
    let used = cpu_with(&pids) - before;
    println!(
        "process_roundtrip/idle: {:.2} ms CPU in {} s, this process and {} children together",
        used as f64 / 1e6,
        idle.as_secs(),
        pids.len(),
    );
    rt.block_on(async {
        for (_, plugin) in &children {
            let _ = plugin.shutdown().await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

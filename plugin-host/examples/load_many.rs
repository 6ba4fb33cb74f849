//! Times discovering, checking, loading and initializing N distinct plugin libraries, as
//! `backworks serve` does at start-up, and says what they cost while they idle:
//! `cargo run --release -p backworks-plugin-host --example load_many -- LIB [N] [serial|parallel]`.
//!
//! It writes N copies of `LIB` into a fresh folder, each with different trailing bytes (so each
//! is distinct content, as N different plugins would be), then times
//! [`discover`] and starting every file found, in one of two ways:
//!
//! - `parallel`: the path of `backworks serve`: a [`PluginHost`] on a multi-thread runtime records
//!   every plugin, then starts them all at once ([`PluginHost::start_all`]): each library loaded
//!   under strict file checks on the blocking pool, one per core at a time, then its instance
//!   and `initialize`.
//! - `serial`: one at a time, each phase timed: [`load_checked`] (file checks, a read lease on
//!   the file or the kernel's copy into a sealed memfd, metadata, `dlopen`, vtable), an
//!   instance, its `initialize`.
//!
//! `BACKWORKS_PRIVATE_COPY=memfd` in the environment measures the copied load instead.
//! Without a mode it runs itself once in each, serial first, each in a fresh process. Each prints
//! the total and per plugin, the CPU time of the process, then, from `/proc/self`, the threads,
//! descriptors and resident memory the N idle plugins added. BENCHMARKS.md has the figures and
//! how the memory is counted.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backworks_plugin_host::{
    DynamicPlugin, LoadPolicy, PRIVATE_COPY_ENV, Plugin, PluginHost, PluginSource, PluginSpec,
    ScanDir, copy_store, discover, load_checked,
};

/// What `/proc/self` says about this process, in KiB for the memory fields.
struct Usage {
    threads: usize,
    fds: usize,
    /// `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` of `status`; `Pss`, `Pss_Anon`, `Pss_File`,
    /// `Pss_Shmem` of `smaps_rollup`.
    kib: BTreeMap<&'static str, i64>,
}

const STATUS_FIELDS: [&str; 4] = ["VmRSS", "RssAnon", "RssFile", "RssShmem"];
const ROLLUP_FIELDS: [&str; 4] = ["Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"];

impl Usage {
    fn now() -> Usage {
        let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
        let mut kib = BTreeMap::new();
        for (file, fields) in [
            ("/proc/self/status", &STATUS_FIELDS),
            ("/proc/self/smaps_rollup", &ROLLUP_FIELDS),
        ] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for line in text.lines() {
                let mut words = line.split_whitespace();
                let (Some(key), Some(value)) = (words.next(), words.next()) else {
                    continue;
                };
                if let Some(field) = fields.iter().find(|f| key == format!("{f}:")) {
                    kib.insert(*field, value.parse().unwrap_or(0));
                }
            }
        }
        Usage {
            threads: count("/proc/self/task"),
            fds: count("/proc/self/fd"),
            kib,
        }
    }

    fn kib(&self, field: &str) -> i64 {
        self.kib.get(field).copied().unwrap_or(0)
    }
}

/// CPU time of the whole process, every thread (user and system), from `/proc/self/stat`, in
/// clock ticks of 10 ms (Linux's `USER_HZ` is 100). The steady figure on a busy machine, where
/// wall time mostly says how often others ran.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lib = args
        .first()
        .expect("usage: load_many LIB [N] [serial|parallel]");
    let n: usize = args
        .get(1)
        .map_or(100, |n| n.parse().expect("N is a number"));
    match args.get(2).map(String::as_str) {
        Some(mode @ ("serial" | "parallel")) => run(lib, n, mode),
        Some(other) => panic!("unknown mode {other}: serial or parallel"),
        None => {
            for mode in ["serial", "parallel"] {
                let status = std::process::Command::new(std::env::current_exe().expect("self"))
                    .args([lib, &n.to_string(), mode])
                    .status()
                    .expect("run load_many");
                assert!(status.success(), "{mode}: {status}");
            }
        }
    }
}

fn run(lib: &str, n: usize, mode: &str) {
    let bytes = std::fs::read(lib).expect("read LIB");
    let dir = tempfile::tempdir().expect("temporary folder");
    for i in 0..n {
        let path = dir.path().join(format!("libp{i}.so"));
        let mut file = std::fs::File::create(&path).expect("create copy");
        file.write_all(&bytes).expect("write copy");
        file.write_all(&(i as u64).to_le_bytes())
            .expect("write trailer");
    }
    drop(bytes);
    let config = serde_json::json!({});
    let before;
    let start;
    let discovered;
    let cpu;
    let mut phases = None;
    // Kept to the end: the idle plugins.
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    let host = Arc::new(PluginHost::new());
    if mode == "serial" {
        // The host's calls run on a runtime of its own; a current-thread one, so that every
        // thread counted below is one the plugins started.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("host runtime");
        let policy = LoadPolicy::default();
        before = Usage::now();
        start = Instant::now();
        let found = discover(&[ScanDir {
            path: dir.path().to_owned(),
            recursive: false,
        }]);
        discovered = start.elapsed();
        let (mut loading, mut creating, mut initializing) = Default::default();
        let cpu_before = process_cpu();
        for (i, path) in found.files.iter().enumerate() {
            let phase = Instant::now();
            let library = load_checked(path, &policy).expect("load");
            loading += phase.elapsed();
            let phase = Instant::now();
            let plugin = DynamicPlugin::new(library, &format!("p{i}")).expect("instance");
            creating += phase.elapsed();
            let phase = Instant::now();
            runtime
                .block_on(plugin.initialize(&config))
                .expect("initialize");
            initializing += phase.elapsed();
            plugins.push(Arc::new(plugin));
        }
        cpu = process_cpu().saturating_sub(cpu_before);
        phases = Some((loading, creating, initializing));
    } else {
        // As `backworks serve` runs: a multi-thread runtime, the host's default blocking pool;
        // counted from before it is built, and dropped before the end is counted.
        before = Usage::now();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("host runtime");
        start = Instant::now();
        let found = discover(&[ScanDir {
            path: dir.path().to_owned(),
            recursive: false,
        }]);
        discovered = start.elapsed();
        let cpu_before = process_cpu();
        let specs: Vec<PluginSpec> = found
            .files
            .iter()
            .enumerate()
            .map(|(i, path)| {
                PluginSpec::new(
                    &format!("p{i}"),
                    PluginSource::Library(path.clone()),
                    config.clone(),
                )
            })
            .collect();
        let started = runtime.block_on(host.start_all(&specs));
        cpu = process_cpu().saturating_sub(cpu_before);
        plugins.extend(started.into_iter().map(|p| p.expect("start")));
        // The runtime's workers and blocking threads go; the plugins stay, idle.
        drop(runtime);
    }
    let total = start.elapsed();
    let after = Usage::now();
    let count = plugins.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{mode}: {count} plugins ({} KiB each, {}): discover {:.2} ms, \
         discover+check+load+instance+initialize {:.1} ms ({:.3} ms per plugin); \
         CPU of the process (every thread) {:.0} ms ({:.3} ms per plugin)",
        std::fs::metadata(lib).map_or(0, |m| m.len() / 1024),
        match std::env::var(PRIVATE_COPY_ENV).as_deref() {
            Ok("memfd" | "directory") => format!("private copies in {}", copy_store().as_str()),
            _ => format!(
                "in place under a lease where granted, else copies in {}",
                copy_store().as_str()
            ),
        },
        ms(discovered),
        ms(total),
        ms(total) / count as f64,
        ms(cpu),
        ms(cpu) / count as f64
    );
    if let Some((loading, creating, initializing)) = phases {
        println!(
            "{mode}: wall: load_checked {:.1} ms, instance_new {:.1} ms, initialize {:.1} ms",
            ms(loading),
            ms(creating),
            ms(initializing),
        );
    }
    let per = |delta: i64| delta as f64 / count as f64;
    println!(
        "{mode}: idle: threads {} -> {} ({:+.2} per plugin), descriptors {} -> {} ({:+.2} per plugin)",
        before.threads,
        after.threads,
        per(after.threads as i64 - before.threads as i64),
        before.fds,
        after.fds,
        per(after.fds as i64 - before.fds as i64),
    );
    for field in STATUS_FIELDS.iter().chain(&ROLLUP_FIELDS) {
        let delta = after.kib(field) - before.kib(field);
        println!(
            "{mode}: idle: {field:<9} {:>9} KiB -> {:>9} KiB: {:>8.1} KiB per plugin",
            before.kib(field),
            after.kib(field),
            per(delta)
        );
    }
    drop(host);
}

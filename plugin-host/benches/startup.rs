//! Start-up: inspecting 100 plugin files, and discovering, checking, verifying and loading 100.
//!
//! ```sh
//! cargo build --release -p backworks-example-hello
//! cargo bench -p backworks-plugin-host --bench startup
//! ```
//!
//! The files are 100 copies of the release `hello` example plugin (`target/release/libhello.so`),
//! each with 8 different bytes appended, so that each is distinct content as 100 different plugins
//! would be (identical bytes share one private copy, one `dlopen` and one signature check, which
//! would measure nothing), each signed with a binding trusted comment
//! (`backworks-plugin name=… version=… sha256=…`), mode `0644` in a `0700` folder. Page cache warm.
//!
//! Rows:
//! - `inspect_100`: [`inspect`] each file (metadata read without loading, compatibility judged);
//!   target < 50 ms. `read_100` beside it: only reading the 100 files.
//! - `load_100_*`: [`discover`] the folder, then check, verify and load every file under strict
//!   file checks with signatures required: one by one with [`load_checked`] (`serial`, as
//!   `PluginHost::start` does one plugin), and with [`load_checked_all`] (`parallel`); target
//!   < 300 ms. `load_100_serial_unsigned` is the same without signature checks;
//!   `load_100_identical` is 100 files of one content (100 names for one plugin). Libraries are
//!   never unloaded and checked contents are remembered per process, so every sample of these
//!   rows runs in a fresh process (this bench binary started again), which times itself from
//!   `discover` to the last library loaded. Instances are not created. The `*_cpu` rows are the
//!   same runs' CPU time (user + system, every thread of the process), which a busy machine
//!   moves much less than the wall clock.
//! - `sha256_100`, `minisign_100`: the two hashes of a verified load, 100 files' bytes in memory:
//!   SHA-256 (the private copy's key and the signature binding), and `minisign-verify`'s check
//!   (BLAKE2b-512 of the bytes, which an `ED` signature signs, and two Ed25519 checks).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backworks_plugin_host::{
    FileChecks, LoadPolicy, ScanDir, TrustPolicy, TrustedKey, TrustedKeys, check_library, discover,
    inspect, load_checked, load_checked_all, metadata_from_bytes, sha256_hex, signature_path,
};
use criterion::{Criterion, SamplingMode};
use sha2::Digest as _;

const FILES: usize = 100;
const CHILD_ENV: &str = "BACKWORKS_STARTUP_BENCH_CHILD";

fn hello() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/libhello.so");
    assert!(
        path.exists(),
        "build the release hello plugin first: cargo build --release -p backworks-example-hello"
    );
    path
}

/// A folder of `FILES` signed copies of `original`: distinct (a trailer each) or identical.
fn plugin_dir(
    original: &[u8],
    distinct: bool,
    pair: &minisign::KeyPair,
) -> (tempfile::TempDir, Vec<(PathBuf, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata_from_bytes(Path::new("libhello.so"), original).unwrap();
    let files = (0..FILES)
        .map(|i| {
            let mut bytes = original.to_vec();
            if distinct {
                bytes.extend_from_slice(&(i as u64).to_le_bytes());
            }
            let path = dir.path().join(format!("libp{i:03}.so"));
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(&bytes))
                .unwrap();
            let comment = format!(
                "backworks-plugin name={} version={} sha256={}",
                meta.name,
                meta.version,
                sha256_hex(&bytes)
            );
            let sig = minisign::sign(None, &pair.sk, &bytes[..], Some(&comment), None).unwrap();
            std::fs::write(signature_path(&path), sig.to_string()).unwrap();
            (path, bytes)
        })
        .collect();
    (dir, files)
}

/// In a fresh process: discover `dir` and load every library in it the way `mode` says; prints
/// the nanoseconds it took.
fn child(mode: &str, dir: &Path, key: &str) {
    let trust = Arc::new(TrustPolicy {
        keys: TrustedKeys::new([TrustedKey::parse(key).unwrap()]),
        require_signatures: true,
    });
    let policy = |signed: bool| LoadPolicy {
        file_checks: FileChecks::Strict,
        verify: signed.then(|| {
            let trust = trust.clone();
            let verify: backworks_plugin_host::Verifier =
                Arc::new(move |path: &Path, bytes: &[u8], sha256: &[u8; 32]| {
                    // The copies are all the `hello` plugin: configured as `hello`.
                    check_library(path, bytes, sha256, &trust, "hello").map(|_| ())
                });
            verify
        }),
    };
    let cpu = cpu_time();
    let start = Instant::now();
    let found = discover(&[ScanDir {
        path: dir.to_owned(),
        recursive: false,
    }]);
    assert_eq!(found.files.len(), FILES);
    let libraries = match mode {
        "parallel" | "identical" => {
            let files: Vec<_> = found.files.into_iter().map(|f| (f, policy(true))).collect();
            load_checked_all(&files)
        }
        "serial" | "serial_unsigned" => {
            let policy = policy(mode == "serial");
            found
                .files
                .iter()
                .map(|f| load_checked(f, &policy))
                .collect()
        }
        other => panic!("unknown mode {other}"),
    };
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu;
    for library in &libraries {
        assert!(library.is_ok(), "{library:?}");
    }
    println!("{} {}", elapsed.as_nanos(), cpu.as_nanos());
}

/// The CPU time this process has used so far, all threads, user and system.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// Runs `iters` fresh processes of `mode` and adds up the times they measured: wall-clock, or CPU
/// time with `cpu`.
fn in_fresh_processes(mode: &str, dir: &Path, key: &str, iters: u64, cpu: bool) -> Duration {
    (0..iters)
        .map(|_| {
            let out = Command::new(std::env::current_exe().unwrap())
                .env(CHILD_ENV, format!("{mode} {key} {}", dir.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let mut times = stdout.split_whitespace().map(|t| t.parse::<u64>().unwrap());
            let (wall, used) = (times.next().unwrap(), times.next().unwrap());
            Duration::from_nanos(if cpu { used } else { wall })
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let key = pair.pk.to_base64();
    let original = std::fs::read(hello()).unwrap();
    let (distinct_dir, distinct) = plugin_dir(&original, true, &pair);
    let (identical_dir, _) = plugin_dir(&original, false, &pair);
    println!(
        "{FILES} files of {} bytes, {} cores",
        original.len(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );

    let mut group = c.benchmark_group("startup");
    group.bench_function("inspect_100", |b| {
        b.iter(|| {
            for (path, _) in &distinct {
                let inspection = inspect(path).unwrap();
                assert!(inspection.compatibility.is_ok());
            }
        })
    });
    group.bench_function("read_100", |b| {
        b.iter(|| {
            for (path, _) in &distinct {
                std::hint::black_box(std::fs::read(path).unwrap());
            }
        })
    });
    group.bench_function("sha256_100", |b| {
        b.iter(|| {
            for (_, bytes) in &distinct {
                std::hint::black_box(sha2::Sha256::digest(bytes));
            }
        })
    });
    let public = minisign_verify::PublicKey::from_base64(&key).unwrap();
    let signatures: Vec<_> = distinct
        .iter()
        .map(|(path, _)| {
            let text = std::fs::read_to_string(signature_path(path)).unwrap();
            minisign_verify::Signature::decode(&text).unwrap()
        })
        .collect();
    group.bench_function("minisign_100", |b| {
        b.iter(|| {
            for ((_, bytes), signature) in distinct.iter().zip(&signatures) {
                public.verify(bytes, signature, false).unwrap();
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("startup");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for (row, mode, dir) in [
        ("load_100_serial_unsigned", "serial_unsigned", &distinct_dir),
        ("load_100_serial", "serial", &distinct_dir),
        ("load_100_parallel", "parallel", &distinct_dir),
        ("load_100_identical", "identical", &identical_dir),
    ] {
        for cpu in [false, true] {
            let row = if cpu {
                format!("{row}_cpu")
            } else {
                row.to_owned()
            };
            group.bench_function(&row, |b| {
                b.iter_custom(|iters| in_fresh_processes(mode, dir.path(), &key, iters, cpu))
            });
        }
    }
    group.finish();
}

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let mut args = args.splitn(3, ' ');
        let (mode, key, dir) = (
            args.next().unwrap(),
            args.next().unwrap(),
            args.next().unwrap(),
        );
        child(mode, Path::new(dir), key);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}

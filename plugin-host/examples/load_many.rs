//! Times discovering, checking and loading N distinct plugin libraries, as `backworks serve` does
//! at start-up: `cargo run --release -p backworks-plugin-host --example load_many -- LIB [N]`.
//!
//! It writes N copies of `LIB` into a fresh folder, each with one different trailing byte (so each
//! is distinct content with its own private copy, as N different plugins would be), then times
//! [`discover`], and for each file [`load_checked`] under strict file checks (checks, one read,
//! SHA-256, metadata, sealed copy, `dlopen`, vtable) and an instance. Prints the total and per
//! plugin. BENCHMARKS.md has the figures.

use std::io::Write;
use std::time::Instant;

use backworks_plugin_host::{
    DynamicPlugin, LoadPolicy, ScanDir, copy_store, discover, load_checked,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let lib = args.next().expect("usage: load_many LIB [N]");
    let n: usize = args
        .next()
        .map_or(100, |n| n.parse().expect("N is a number"));
    let bytes = std::fs::read(&lib).expect("read LIB");
    let dir = tempfile::tempdir().expect("temporary folder");
    for i in 0..n {
        let path = dir.path().join(format!("libp{i}.so"));
        let mut file = std::fs::File::create(&path).expect("create copy");
        file.write_all(&bytes).expect("write copy");
        file.write_all(&(i as u64).to_le_bytes())
            .expect("write trailer");
    }
    let policy = LoadPolicy::default();
    let start = Instant::now();
    let found = discover(&[ScanDir {
        path: dir.path().to_owned(),
        recursive: false,
    }]);
    let discovered = start.elapsed();
    let mut plugins = Vec::new();
    for (i, path) in found.files.iter().enumerate() {
        let library = load_checked(path, &policy).expect("load");
        plugins.push(DynamicPlugin::new(library, &format!("p{i}")).expect("instance"));
    }
    let total = start.elapsed();
    println!(
        "{} plugins ({} KiB each, private copies in {}): discover {:.2} ms, discover+check+load+instance {:.1} ms ({:.2} ms per plugin)",
        plugins.len(),
        bytes.len() / 1024,
        copy_store().as_str(),
        discovered.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / plugins.len() as f64
    );
}

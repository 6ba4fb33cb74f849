//! The `noop` fixture (`tests/fixtures/plugins/noop`) as the benches load and call it: its library
//! file, built beside the bench binary, and the request every row sends it.

use std::path::PathBuf;

use backworks_plugin_sdk::Request;

/// The `noop` cdylib of this build's profile; panics saying how to build it when it is missing.
pub fn library() -> PathBuf {
    example_library("noop")
}

/// The `noop_sync` cdylib (the same no-op as a synchronous endpoint, `NoopSync`), as
/// [`library`].
#[allow(
    dead_code,
    reason = "only the host_path bench calls it; process_roundtrip shares this module"
)]
pub fn sync_library() -> PathBuf {
    example_library("noop_sync")
}

/// The fixture's example target `name` as a library file of this build's profile.
fn example_library(name: &str) -> PathBuf {
    // benches run from target/<profile>/deps; the noop cdylibs, example targets of the fixture,
    // are built in target/<profile>/examples.
    let exe = std::env::current_exe().expect("bench executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let lib = dir
        .join("examples")
        .join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build --release -p backworks-fixture-noop --examples` first",
        lib.display()
    );
    lib
}

/// `{method} /noop/42`, as the router hands it over: path parameter `id` = `42` and a `host`
/// header, no body.
pub fn request(method: &str) -> Request {
    let mut request = Request::new(method, "/noop/42");
    request.params.push(("id".into(), "42".into()));
    request.headers.insert("host", "localhost");
    request
}

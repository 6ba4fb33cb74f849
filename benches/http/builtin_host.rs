//! The host of the HTTP benchmark's built-in row (`benches/http/run.sh`): `backworks serve` as the
//! binary runs it, with the `hello` example plugin compiled in as a built-in named `hello`, so the
//! same endpoint can be served without a library. It exists only for the benchmark: the product
//! does not ship the example plugin.
//!
//! ```text
//! cargo run --release -p backworks-http-bench --example http_builtin_host -- bench.yaml
//! ```
//!
//! The config names `hello` with `type: builtin`; the log says `backworks listening on
//! http://ADDR` once it serves, as `backworks serve` does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use backworks_plugin_host::{BuiltinPlugin, PluginHost};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    backworks_plugin_host::child_main_if_requested();
    // The same log set-up as `backworks serve`: `info` unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(backworks::logging::RedactingStderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: http_builtin_host CONFIG")?;
    let config = backworks::config::load(std::path::Path::new(&path))?;
    let ip: IpAddr = config.server.host.parse()?;
    let addr = SocketAddr::new(ip, config.server.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let host = Arc::new(PluginHost::new());
        host.set_load_policy(backworks::server::load_policy(&config));
        backworks::builtins::register(&host);
        host.register_builtin("hello", |name| {
            Arc::new(BuiltinPlugin::new(
                name,
                env!("CARGO_PKG_VERSION"),
                "the hello example plugin, compiled in for the benchmark",
                hello::Hello::default(),
            ))
        });
        backworks::server::serve(config, addr, host).await
    })
}

//! The servers of the HTTP benchmark, `benches/http/run.sh`, as example targets of this package
//! (`cargo build --release -p backworks-http-bench --examples`):
//!
//! - `http_axum_baseline`: `GET /hello/{name}` as a plain axum route, and with `--request-id`
//!   behind tower-http's request-id layers, the work of the `request-id` hook plugin;
//! - `http_builtin_host`: `backworks serve` with the `hello` example plugin compiled in.
//!
//! The library itself is empty: a package needs a target that is not an example, and these
//! servers are examples so that building the workspace does not build them.

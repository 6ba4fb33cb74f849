//! The baseline of the HTTP benchmark (`benches/http/run.sh`): the `hello` plugin's greeting,
//! `GET /hello/{name}` → `{"message":"Hello, <name>!"}`, written as a plain axum route and served
//! with `axum::serve` on a default multi-threaded tokio runtime, as an axum service would be.
//!
//! ```text
//! cargo run --release --example http_axum_baseline -- 127.0.0.1:0
//! ```
//!
//! It prints `listening on http://ADDR` once it serves.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use serde_json::{Value, json};

/// The same answer as the `hello` plugin's `GET /hello/{name}`.
async fn hello(Path(name): Path<String>) -> Json<Value> {
    Json(json!({ "message": format!("Hello, {name}!") }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/hello/{name}", get(hello));
    axum::serve(listener, app).await
}

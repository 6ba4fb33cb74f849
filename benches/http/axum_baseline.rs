//! The baseline of the HTTP benchmark (`benches/http/run.sh`): the `hello` plugin's greeting,
//! `GET /hello/{name}` → `{"message":"Hello, <name>!"}`, written as a plain axum route and served
//! with `axum::serve` on a default multi-threaded tokio runtime, as an axum service would be.
//!
//! With `--request-id`, the route has the `request-id` hook plugin's work in front of it, as an
//! axum service does that work: tower-http's request-id layers. A request without an
//! `x-request-id` gets a new id of the plugin's form (23 bytes), and the response carries the
//! request's id. That is the like-for-like baseline of the benchmark's `hook` row, which does this
//! work through the plugin; the plain route stays the baseline of every row. (tower-http's layers
//! cost fewer instructions than the same work in an `axum::middleware::from_fn`: 22,700 a request
//! against 24,100, the plain route 18,600; the stronger baseline of the two.)
//!
//! ```text
//! cargo run --release -p backworks-http-bench --example http_axum_baseline -- 127.0.0.1:0 [--request-id]
//! ```
//!
//! It prints `listening on http://ADDR` once it serves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::get;
use serde_json::{Value, json};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The same answer as the `hello` plugin's `GET /hello/{name}`.
async fn hello(Path(name): Path<String>) -> Json<Value> {
    Json(json!({ "message": format!("Hello, {name}!") }))
}

/// Makes the ids of requests that come without one.
#[derive(Clone)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(next_id()))
    }
}

/// This process's prefix of every id (the plugin's is random per instance; any value costs the
/// same here).
const PREFIX: u64 = 0x0005_eedb_a5e0_f1d5;

/// Makes ids unique within this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new id of the plugin's form: `<11 digits of the prefix>-<11 digits of a counter>`, in the
/// URL-safe base64 alphabet, most significant digit first.
fn next_id() -> HeaderValue {
    const DIGITS: usize = 11;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let write = |out: &mut [u8], n: u64| {
        for (place, digit) in out.iter_mut().rev().enumerate() {
            *digit = ALPHABET[(n >> (place * 6)) as usize & 0x3f];
        }
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [b'-'; 2 * DIGITS + 1];
    write(&mut id[..DIGITS], PREFIX);
    write(&mut id[DIGITS + 1..], n);
    HeaderValue::from_bytes(&id).expect("the id is visible ASCII")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .map_err(std::io::Error::other)?;
    let with_request_id = match args.next().as_deref() {
        None => false,
        Some("--request-id") => true,
        Some(other) => {
            return Err(std::io::Error::other(format!(
                "unknown argument `{other}` (expected `--request-id`)"
            )));
        }
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let mut app = Router::new().route("/hello/{name}", get(hello));
    if with_request_id {
        let header = HeaderName::from_static("x-request-id");
        app = app.layer(
            tower::ServiceBuilder::new()
                // Outermost: gives the request an id when it has none; then the response gets
                // the request's id.
                .layer(SetRequestIdLayer::new(header.clone(), MakeId))
                .layer(PropagateRequestIdLayer::new(header)),
        );
    }
    axum::serve(listener, app).await
}

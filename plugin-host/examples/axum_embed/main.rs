//! A small axum service of its own that embeds the plugin host: it loads every compatible plugin
//! library in a folder and serves `/hello/{name}` through the `hello` example plugin.
//!
//! ```text
//! cargo build -p backworks-example-hello
//! mkdir -p plugins && cp target/debug/libhello.so plugins/
//! cargo run -p backworks-plugin-host --example axum_embed -- plugins 127.0.0.1:3000
//! curl http://127.0.0.1:3000/hello/ana        # {"message":"Hello, ana!"}
//! curl -X DELETE http://127.0.0.1:3000/hello/ana  # 405, the public JSON error body
//! ```
//!
//! The embedder's path: [`discover`] lists the folder without opening anything, [`inspect`] reads
//! each file's metadata without running its code and says whether this host can load it,
//! [`PluginHost::start`] loads and initializes it behind its call guard, and a failed call becomes
//! the public error body with [`error_response`]. It prints `listening on http://ADDR` once it
//! serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::any;
use backworks_plugin_host::{
    CallError, Plugin, PluginHost, PluginSource, PluginSpec, Request, Response, ScanDir,
    child_main_if_requested, discover, error_response, inspect,
};

/// The plugin that serves the route.
const PLUGIN: &str = "hello";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A process-isolated plugin runs in this executable started again as its runner: that call
    // must come first. (This example runs its plugins in process, so it returns at once.)
    child_main_if_requested();

    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().unwrap_or_else(|| "plugins".to_owned()));
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:3000").parse()?;

    let host = Arc::new(PluginHost::new());
    load_folder(&host, folder).await;
    if host.get(PLUGIN).is_none() {
        return Err(format!("no active `{PLUGIN}` plugin; see the messages above").into());
    }

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(host.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    host.shutdown().await;
    Ok(())
}

/// Starts every plugin in `folder` this host can load, named as its metadata says, with an empty
/// config. A file that is not a plugin, or one that fails to start, is reported and skipped.
async fn load_folder(host: &PluginHost, folder: PathBuf) {
    let found = discover(&[ScanDir {
        path: folder,
        recursive: false,
    }]);
    for error in &found.errors {
        eprintln!("skipped: {error}");
    }
    for path in found.files {
        let inspection = match inspect(&path) {
            Ok(inspection) => inspection,
            Err(error) => {
                eprintln!("skipped: {error}");
                continue;
            }
        };
        if let Err(error) = &inspection.compatibility {
            eprintln!("skipped: {error}");
            continue;
        }
        let name = inspection.metadata.name.clone();
        let spec = PluginSpec::new(&name, PluginSource::Library(path), serde_json::json!({}));
        match host.start(&spec).await {
            Ok(_) => eprintln!("started {name} {}", inspection.metadata.version),
            Err(error) => eprintln!("not started: {error}"),
        }
    }
}

/// The service's router: `/hello/{name}`, any method, served by the plugin.
fn app(host: Arc<PluginHost>) -> Router {
    Router::new()
        .route("/hello/{name}", any(hello))
        .with_state(host)
}

/// Hands the request to the plugin as the SDK's [`Request`] and its answer back as HTTP.
async fn hello(
    State(host): State<Arc<PluginHost>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let mut request = Request::new(method.as_str(), format!("/hello/{name}"));
    request.params.push(("name".into(), name.into()));
    for (header, value) in &headers {
        if let Ok(value) = value.to_str() {
            request.headers.append(header.as_str(), value);
        }
    }
    request.body = body.to_vec();

    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let response = match host.get(PLUGIN) {
        Some(plugin) => match answer(plugin.as_ref(), request).await {
            Ok(response) => response,
            // The plugin's own client errors keep their message; anything else (a panic, a
            // timeout, an open breaker) gets a fixed one, its details logged with the request id.
            Err(error) => error_response(PLUGIN, &error, request_id),
        },
        None => return (StatusCode::SERVICE_UNAVAILABLE, "plugin not active").into_response(),
    };
    into_http(response)
}

/// The plugin's answer to `request`: at once, without a future, when its endpoint never waits
/// (`hello`'s does not), else awaited.
async fn answer(plugin: &dyn Plugin, request: Request) -> Result<Response, CallError> {
    match plugin.handle_now(&request) {
        Some(answer) => answer,
        None => plugin.handle(request).await,
    }
}

/// The SDK's [`Response`] as an HTTP response; a status or header HTTP cannot carry is a 502.
fn into_http(response: Response) -> HttpResponse {
    let Ok(status) = StatusCode::from_u16(response.status) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers.iter() {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return StatusCode::BAD_GATEWAY.into_response(),
        }
    }
    (status, headers, response.body).into_response()
}

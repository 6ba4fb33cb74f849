//! `backworks serve`: start the configured plugins and serve the configured endpoints through them.
//!
//! The call path of a request: the edge (`edge`: listener, accept loop, connection cap, header,
//! idle and body timeouts) hands an endpoint's request straight to `handle` (`dispatch`: the
//! direct table), anything else to axum's router, whose endpoint routes call the same `handle`;
//! `handle` builds the SDK request, runs the endpoint's hook chain around the endpoint plugin's
//! `handle`, and turns the plugin's response — or its error, as a JSON body naming it — into the
//! HTTP response.

mod admin;
mod convert;
mod dispatch;
mod edge;
pub mod health;
pub mod metrics;
pub mod reload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::RawPathParams;
use axum::extract::rejection::RawPathParamsRejection;
use axum::http::Method;
use axum::http::request::Parts;
use axum::routing::{MethodFilter, MethodRouter, on};
use backworks_plugin_host::error_response;
use backworks_plugin_host::{
    CallError, Guarded, Hook, HookChain, HookCounts, Isolation, Observer, Plugin, PluginHost,
    PluginSource, PluginSpec, PluginState,
};
use backworks_plugin_sdk::{PluginError, Response, Text};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::config::{Config, EndpointConfig, PluginConfig, PluginKind};
use metrics::EndpointStats;

pub use dispatch::Served;
pub use edge::reserve_descriptor_table;

/// Everything an endpoint needs at request time, resolved once at start-up.
struct Endpoint {
    plugin_name: String,
    stats: Arc<EndpointStats>,
    max_request_body: usize,
    /// `Err` with the reason when the endpoint cannot be served (plugin disabled or failed, or a
    /// hook plugin unavailable): the endpoint then answers 503 rather than run without its hooks.
    /// The reason is logged and shown on the admin API, never in a public body.
    target: Result<(Arc<Guarded>, HookChain), String>,
}

/// What the hooks of one plugin share across every endpoint's chain: its failure counts and its
/// observe subscription.
#[derive(Debug, Clone)]
pub struct HookShare {
    /// The plugin.
    pub name: String,
    /// The plugin's generation this share belongs to: a reload that keeps the generation keeps
    /// the share (its counts and its observer's queue).
    pub generation: u64,
    /// Its hook failures, by outcome.
    pub counts: Arc<HookCounts>,
    /// Its observe subscription.
    pub observer: Option<Arc<Observer>>,
}

/// One [`HookShare`] per configured plugin with hooks that is active: the one `carry` has for its
/// current generation, or a new one (observers start here).
fn hook_shares(config: &Config, host: &PluginHost, carry: &Carry) -> Vec<HookShare> {
    config
        .plugins
        .iter()
        .filter(|p| p.enabled && p.has_hooks())
        .filter_map(|p| {
            let plugin = host.get(&p.name)?;
            let generation = host.current_generation(&p.name).unwrap_or(0);
            let kept = carry
                .shares
                .iter()
                .find(|s| s.name == p.name && s.generation == generation);
            if let Some(kept) = kept {
                return Some(kept.clone());
            }
            Some(HookShare {
                name: p.name.clone(),
                generation,
                counts: Arc::default(),
                observer: p.observe.then(|| Observer::start(plugin, p.observe_queue)),
            })
        })
        .collect()
}

/// An endpoint's path parameters, by name, percent-decoded.
type PathParams = Vec<(Text, Text)>;

/// What one serving generation hands to the next: endpoint counters by endpoint name, and each
/// plugin's hook share, so that a reload keeps the counts of what it did not change.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    stats: BTreeMap<String, Arc<EndpointStats>>,
    shares: Vec<HookShare>,
}

/// Starts every configured plugin on `host`, all at once. A plugin that fails is logged, recorded
/// in its `Error` state and skipped; the others start regardless. An `important: true` plugin
/// that fails stops start-up: the error names it and says why (the first such plugin in config
/// order, once every start has ended; one whose file is missing stops it before anything starts).
///
/// Every plugin is recorded first, in config order (disabled ones as `Disabled`, the others as
/// `Loading`), so the host's records keep that order whichever start finishes first.
pub async fn start_plugins(config: &Config, host: &PluginHost) -> anyhow::Result<()> {
    let mut starting = Vec::new();
    for plugin in &config.plugins {
        let source = match plugin_source(config, plugin) {
            Ok(source) => source,
            Err(missing) => {
                let reason = missing.to_string();
                let _ = host.record(&plugin.name, None, PluginState::Error(reason.clone()), None);
                if plugin.important {
                    anyhow::bail!("important plugin `{}` cannot start: {reason}", plugin.name);
                }
                continue;
            }
        };
        if !plugin.enabled {
            let _ = host.record(&plugin.name, Some(source), PluginState::Disabled, None);
            continue;
        }
        starting.push((plugin, host.prepare(&plugin_spec(config, plugin, source))));
    }
    let started =
        futures_util::future::join_all(starting.into_iter().map(|(plugin, prepared)| async move {
            match prepared {
                Ok(prepared) => (plugin, host.start_prepared(prepared).await.map(drop)),
                Err(error) => (plugin, Err(error)),
            }
        }))
        .await;
    let mut important = None;
    for (plugin, result) in started {
        // The host logs the failure and records the plugin's Error state; a config that fails
        // the plugin's schema is reported here too, each violation at its place in the file.
        let Err(error) = result else { continue };
        for located in plugin
            .config_map
            .errors(&plugin.name, &error)
            .unwrap_or_default()
        {
            tracing::error!(plugin = plugin.name, "{located}");
        }
        if plugin.important && important.is_none() {
            important = Some(anyhow::anyhow!(
                "important plugin `{}` cannot start: {}",
                plugin.name,
                start_error(plugin, &error)
            ));
        }
    }
    important.map_or(Ok(()), Err)
}

/// Why `plugin` did not start, as the operator should read it: for a config that fails the
/// plugin's schema, each violation at its place (`plugin `hello` failed to start:
/// backworks.yaml:7:17: plugin "hello": config field /greeting: …`, violations joined by `; `),
/// anything else as the host says it.
pub(crate) fn start_error(
    plugin: &PluginConfig,
    error: &backworks_plugin_host::HostError,
) -> String {
    match plugin.config_map.errors(&plugin.name, error) {
        Some(located) => format!(
            "plugin `{}` failed to start: {}",
            plugin.name,
            located
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        None => error.to_string(),
    }
}

/// A plugin library that is in none of the places its `path` can mean.
#[derive(Debug, thiserror::Error)]
#[error("plugin file not found; looked at {}", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct LibraryNotFound {
    /// Every place looked at, in order.
    pub tried: Vec<std::path::PathBuf>,
}

/// Where `plugin`'s code comes from: its library file found through `plugin_dirs`, or every
/// place that was looked at.
pub(crate) fn plugin_source(
    config: &Config,
    plugin: &PluginConfig,
) -> Result<PluginSource, LibraryNotFound> {
    Ok(match &plugin.kind {
        PluginKind::Builtin => PluginSource::Builtin(plugin.name.clone()),
        PluginKind::Command { argv } => PluginSource::Command(argv.clone()),
        // `config::load` resolves it into a library or a command through `backworks.lock`.
        PluginKind::Marketplace { .. } => return Err(LibraryNotFound { tried: Vec::new() }),
        PluginKind::External { path } if !plugin.enabled => PluginSource::Library(path.clone()),
        PluginKind::External { .. } => config
            .resolve_plugin_path(plugin)
            .map(PluginSource::Library)
            .map_err(|tried| LibraryNotFound { tried })?,
    })
}

/// What a plugin file must pass before the host loads it, from `trust:`.
pub fn load_policy(config: &Config) -> backworks_plugin_host::LoadPolicy {
    backworks_plugin_host::LoadPolicy {
        file_checks: config.trust.file_checks,
        ..Default::default()
    }
}

/// What the host needs to start `plugin` from `source`.
pub(crate) fn plugin_spec(
    config: &Config,
    plugin: &PluginConfig,
    source: PluginSource,
) -> PluginSpec {
    let mut spec = PluginSpec::new(&plugin.name, source, plugin.config.clone());
    spec.policy = plugin.policy.clone();
    spec.hooks = plugin.called_hooks();
    spec.interpolated = plugin.config_map.interpolated().to_vec();
    spec.isolation = plugin.isolation.clone();
    spec.workers = plugin.workers;
    if let Isolation::Process(settings) = &mut spec.isolation {
        settings
            .working_dir
            .get_or_insert_with(|| config.base_dir.clone());
    }
    spec
}

fn resolve(
    config: &Config,
    host: &PluginHost,
    shares: &[HookShare],
    carry: &Carry,
    endpoint: &EndpointConfig,
) -> Endpoint {
    let unavailable = |name: &str| match host.state(name) {
        Some(state @ PluginState::Error(_)) => {
            format!("plugin `{name}` failed to start ({})", state_reason(&state))
        }
        Some(state) => format!("plugin `{name}` is {}", state.as_str()),
        None => format!("plugin `{name}` is not configured"),
    };
    let target = (|| {
        let plugin = active(host, &endpoint.plugin).ok_or_else(|| unavailable(&endpoint.plugin))?;
        let mut hooks = Vec::new();
        for hook in config.hook_chain(endpoint) {
            let plugin = active(host, &hook.name);
            let share = shares.iter().find(|s| s.name == hook.name);
            let (plugin, share) = match (plugin, share) {
                (Some(plugin), Some(share)) => (plugin, share),
                // An observer that is not running costs its observations, never the endpoint.
                _ if hook.observe => {
                    tracing::warn!(
                        endpoint = endpoint.name,
                        "observer `{}` is not running: {}",
                        hook.name,
                        unavailable(&hook.name)
                    );
                    continue;
                }
                _ => return Err(unavailable(&hook.name)),
            };
            hooks.push(Hook {
                plugin,
                before_request: hook.before_request,
                after_response: hook.after_response,
                observer: share.observer.clone(),
                counts: share.counts.clone(),
            });
        }
        Ok((plugin, HookChain::new(hooks)))
    })();
    if let Err(reason) = &target {
        tracing::warn!(
            endpoint = endpoint.name,
            "endpoint will answer 503: {reason}"
        );
    }
    Endpoint {
        plugin_name: endpoint.plugin.clone(),
        stats: carry
            .stats
            .get(&endpoint.name)
            .filter(|s| s.plugin == endpoint.plugin)
            .cloned()
            .unwrap_or_else(|| Arc::new(EndpointStats::new(&endpoint.name, &endpoint.plugin))),
        max_request_body: config.server.max_request_body,
        target,
    }
}

/// The call guard of plugin `name` while it is active (what [`PluginHost::get`] answers), as its
/// concrete type: the request path calls it without boxing each call's future.
fn active(host: &PluginHost, name: &str) -> Option<Arc<Guarded>> {
    host.guarded(name)
        .filter(|g| g.lifecycle().state() == PluginState::Active)
}

fn state_reason(state: &PluginState) -> &str {
    match state {
        PluginState::Error(reason) => reason,
        _ => "",
    }
}

/// The public router: every configured endpoint, plus `/health` and `/ready`.
pub fn router(config: &Config, host: Arc<PluginHost>) -> Router {
    routers(config, host, &Carry::default(), None)
        .0
        .into_router()
}

/// The public router, and the admin router (`/_backworks/*`, `/metrics`, `/health`, `/ready`, and
/// `/_backworks/reload` when a `reloader` is given) that reports on it, for the plugins `host`
/// serves now; and what the next generation carries over (counters and observers of what a
/// reload does not change).
pub fn routers(
    config: &Config,
    host: Arc<PluginHost>,
    carry: &Carry,
    reloader: Option<std::sync::Weak<reload::Reloader>>,
) -> (Served, Router, Carry) {
    // Endpoints sharing a path share one method router.
    let mut by_path: BTreeMap<&str, MethodRouter> = BTreeMap::new();
    let mut direct = dispatch::DirectBuilder::default();
    let mut stats = Vec::with_capacity(config.endpoints.len());
    let shares = hook_shares(config, &host, carry);
    for endpoint_config in &config.endpoints {
        let endpoint = Arc::new(resolve(config, &host, &shares, carry, endpoint_config));
        stats.push(endpoint.stats.clone());
        for method in &endpoint_config.methods {
            let filter = method_filter(method);
            if let Ok(method) = Method::from_bytes(method.as_bytes()) {
                direct.endpoint(&endpoint_config.path, method, endpoint.clone());
            }
            let endpoint = endpoint.clone();
            // A GET route answers HEAD too (axum routes HEAD to it when the path has no HEAD
            // route of its own): the plugin sees a GET, hyper sends the head without the body.
            let head_as_get = filter == MethodFilter::GET;
            // The whole request, not `Parts` and a body extractor: axum's `Parts` extractor
            // clones the head (header map and extensions) on every request.
            let handler = move |params: Result<RawPathParams, RawPathParamsRejection>,
                                request: axum::extract::Request| {
                let endpoint = endpoint.clone();
                async move {
                    let params = match params {
                        Ok(params) => params.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                        Err(rejection) => {
                            return edge::reply::bad_path_parameter(&rejection, request.headers());
                        }
                    };
                    handle(endpoint, params, request, head_as_get).await
                }
            };
            let route = by_path.remove(endpoint_config.path.as_str());
            let route = match route {
                Some(route) => route.on(filter, handler),
                None => on(filter, handler),
            };
            by_path.insert(&endpoint_config.path, route);
        }
    }
    let mut router = Router::new();
    for (path, route) in by_path {
        router = router.route(path, route);
    }
    let important: Vec<String> = config
        .plugins
        .iter()
        .filter(|p| p.important)
        .map(|p| p.name.clone())
        .collect();
    let health_state = health::HealthState {
        host: host.clone(),
        important: important.into(),
    };
    let health = Router::new()
        .route("/health", axum::routing::get(health::health))
        .route("/ready", axum::routing::get(health::ready))
        .with_state(health_state.clone());
    direct.router_path("/health");
    direct.router_path("/ready");
    let next = Carry {
        stats: stats
            .iter()
            .map(|s| (s.endpoint.clone(), s.clone()))
            .collect(),
        shares: shares.clone(),
    };
    let metrics = Arc::new(metrics::Metrics::new(host.clone(), stats, shares));
    let admin = admin::router(config, host, metrics, health_state, reloader);
    // Unknown paths and wrong methods get the JSON error shape too.
    let public = router
        .merge(health)
        .fallback(edge::reply::not_found)
        .method_not_allowed_fallback(edge::reply::method_not_allowed);
    let admin = admin
        .fallback(edge::reply::not_found)
        .method_not_allowed_fallback(edge::reply::method_not_allowed);
    (Served::with_direct(public, direct.build()), admin, next)
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        "PATCH" => MethodFilter::PATCH,
        "HEAD" => MethodFilter::HEAD,
        "OPTIONS" => MethodFilter::OPTIONS,
        "TRACE" => MethodFilter::TRACE,
        // The config admits only the methods above (see `SERVED_METHODS` in config validation).
        _ => MethodFilter::CONNECT,
    }
}

/// The request body, read whole, at most `limit` bytes (`server.max_request_body`): over it, the
/// 413 the client gets. A body hyper knows to be empty (a `GET` without one) is not read at all:
/// no limit, buffer or timer to set up.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, CallError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    if HttpBody::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(CallError::Plugin(PluginError::Status {
                status: 413,
                message: format!(
                    "request body is over the limit of {limit} bytes (server.max_request_body)"
                ),
            }))
        }
        Err(error) => Err(CallError::Plugin(PluginError::BadRequest(format!(
            "cannot read the request body: {error}"
        )))),
    }
}

/// Serves `request` by `endpoint` with the route's decoded path `params`: reads the body (under
/// the endpoint's limit), builds the SDK request, runs the endpoint's hook chain around its
/// plugin (or the plugin alone), and counts the answer. With `head_as_get`, a `HEAD` is served as
/// the `GET` it stands for.
///
/// Every request's future is this one, moved into its box by the edge, so it is kept small: a
/// body hyper knows to be empty (a `GET`) is not read at all and the SDK request is built before
/// the future is, which then holds neither the HTTP head nor the body; a request with a body
/// keeps its head and body in a box while the body is read.
fn handle<B>(
    endpoint: Arc<Endpoint>,
    params: PathParams,
    request: axum::http::Request<B>,
    head_as_get: bool,
) -> impl Future<Output = axum::response::Response> + Send + 'static
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = request.into_parts();
    if head_as_get && parts.method == Method::HEAD {
        parts.method = Method::GET;
    }
    let prepared = if HttpBody::is_end_stream(&body) {
        Prepared::Ready(prepare(&endpoint, params, &parts, Ok(Bytes::new())))
    } else {
        Prepared::Body(Box::new((parts, params, body)))
    };
    async move {
        let request = match prepared {
            Prepared::Ready(request) => request,
            Prepared::Body(unread) => {
                let (parts, params, body) = *unread;
                let body = read_body(body, endpoint.max_request_body).await;
                prepare(&endpoint, params, &parts, body)
            }
        };
        let started = endpoint.stats.started();
        let response = match (request, &endpoint.target) {
            (Ok(request), Ok((plugin, hooks))) => {
                let response = if hooks.is_empty() {
                    call(plugin, request).await
                } else {
                    // Boxed: the chain's future is several times the size of a plain call's.
                    Box::pin(hooks.run(request, |request| call_shared(plugin, request))).await
                };
                convert::into_http(&endpoint.plugin_name, response)
            }
            (Err(refusal), _) => refusal,
            (Ok(_), Err(_)) => unreachable!("`prepare` refuses an endpoint that cannot be served"),
        };
        endpoint.stats.record(response.status().as_u16(), started);
        response
    }
}

/// A request on its way to its endpoint: its SDK request (or the host's refusal) when its body
/// was known to be empty, else its HTTP head, path parameters and body, to be read.
enum Prepared<B> {
    Ready(Result<backworks_plugin_sdk::Request, axum::response::Response>),
    Body(Box<(Parts, PathParams, B)>),
}

/// The SDK request of `parts` and `body`, or the host's refusal: the endpoint cannot be served (its
/// plugin or a hook plugin is not active: 503), or its body could not be read (413, 400, 408).
#[expect(
    clippy::result_large_err,
    reason = "the refusal goes straight back to the handler by value, as a response always does"
)]
fn prepare(
    endpoint: &Endpoint,
    params: PathParams,
    parts: &Parts,
    body: Result<Bytes, CallError>,
) -> Result<backworks_plugin_sdk::Request, axum::response::Response> {
    let refuse = |error: CallError| {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        convert::into_http(
            &endpoint.plugin_name,
            error_response(&endpoint.plugin_name, &error, request_id),
        )
    };
    if let Err(reason) = &endpoint.target {
        return Err(refuse(CallError::Unavailable(reason.clone())));
    }
    let body = body.map_err(refuse)?;
    Ok(convert::request_from_parts(parts, params, body))
}

/// [`call`] of a request a hook chain shares, which a library plugin then reads without a copy.
/// (Written out rather than sharing an `async` helper with `call`: one more nested future costs
/// every request ~400 instructions of moves, measured.)
async fn call_shared(plugin: &Guarded, request: Arc<backworks_plugin_sdk::Request>) -> Response {
    let request_id = request.header("x-request-id").map(Text::from);
    let answer = match plugin.handle_now(&request) {
        Some(answer) => answer,
        None => plugin.handle_shared(request).await,
    };
    match answer {
        Ok(response) => response,
        Err(error) => error_response(&Plugin::info(plugin).name, &error, request_id.as_deref()),
    }
}

async fn call(plugin: &Guarded, request: backworks_plugin_sdk::Request) -> Response {
    // The request id of an error body comes from the request; keep its header (a cheap copy of
    // short inline text) only in case the call fails.
    let request_id = request.header("x-request-id").map(Text::from);
    // A library whose endpoint never waits answers at once, without a future (ABI 1.4).
    let answer = match plugin.handle_now(&request) {
        Some(answer) => answer,
        None => plugin.handle(request).await,
    };
    match answer {
        Ok(response) => response,
        Err(error) => error_response(&Plugin::info(plugin).name, &error, request_id.as_deref()),
    }
}

/// Serves `config` on `addr` (and the admin API on its own address) until Ctrl-C or SIGTERM, then
/// shuts every plugin down.
pub async fn serve(config: Config, addr: SocketAddr, host: Arc<PluginHost>) -> anyhow::Result<()> {
    #[cfg(unix)]
    let sighup = reload::listen_for_sighup();
    if let Err(error) = start_plugins(&config, &host).await {
        host.shutdown().await;
        return Err(error);
    }
    // One round of health checks before serving, so `/ready` has answers from the start.
    health::check_all(&host, config.health.timeout).await;
    let monitor = tokio::spawn(health::monitor(host.clone(), config.health.clone()));
    let reload = config.reload.clone();
    let reloader = reload::Reloader::new(config.clone(), host.clone());
    let (app, admin_app) = (reloader.public_routes(), reloader.admin_routes());
    #[cfg(unix)]
    let hangups = tokio::spawn(reload::on_sighup(reloader.clone(), sighup));
    let watcher = reload
        .watch
        .then(|| tokio::spawn(reload::watch(reloader.clone(), reload.watch_interval)));
    let edge = config.server.edge.clone();
    let listener = edge::bind(addr, edge.backlog)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let admin = match &config.server.admin {
        Some(admin) => {
            let ip: std::net::IpAddr = admin.host.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{}: server.admin.host `{}` is not an IP address",
                    config.source.display(),
                    admin.host
                )
            })?;
            let admin_addr = SocketAddr::new(ip, admin.port);
            let listener = edge::bind(admin_addr, edge.backlog).map_err(|e| {
                anyhow::anyhow!("cannot listen on {admin_addr} (server.admin): {e}")
            })?;
            let bound = listener.local_addr()?;
            tracing::info!(address = %bound, "admin API listening on http://{bound}");
            let cap = edge::ADMIN_CONNECTIONS.min(edge.max_connections);
            Some(tokio::spawn(edge::serve(
                listener,
                admin_app,
                edge.clone(),
                cap,
                shutdown_signal(),
            )))
        }
        None => None,
    };
    let max_connections = edge::connection_cap(edge.max_connections, config.plugins.len());
    tracing::info!(
        address = %local,
        endpoints = config.endpoints.len(),
        plugins = config.plugins.len(),
        max_connections,
        backlog = edge::effective_backlog(edge.backlog),
        "backworks listening on http://{local}"
    );
    edge::serve(listener, app, edge, max_connections, shutdown_signal()).await;
    monitor.abort();
    #[cfg(unix)]
    hangups.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    tracing::info!("shutting down plugins");
    host.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn status_of(error: CallError) -> (u16, String) {
        match error {
            CallError::Plugin(PluginError::Status { status, message }) => (status, message),
            CallError::Plugin(PluginError::BadRequest(message)) => (400, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_is_read_whole_up_to_the_limit_and_an_empty_one_not_at_all() {
        // Known empty: the fast path.
        assert!(HttpBody::is_end_stream(&Body::empty()));
        assert_eq!(read_body(Body::empty(), 0).await.unwrap(), "");
        // Not known empty: read, even when it turns out empty or sits exactly at the limit.
        let chunks = |parts: Vec<&'static str>| {
            Body::from_stream(futures_util::stream::iter(
                parts.into_iter().map(Ok::<_, std::io::Error>),
            ))
        };
        assert!(!HttpBody::is_end_stream(&chunks(vec![])));
        assert_eq!(read_body(chunks(vec![]), 0).await.unwrap(), "");
        assert_eq!(
            read_body(chunks(vec!["ab", "cd"]), 4).await.unwrap(),
            "abcd"
        );
        assert_eq!(read_body(Body::from("abcd"), 4).await.unwrap(), "abcd");
        // One byte over: the 413, naming the setting.
        let (status, message) =
            status_of(read_body(chunks(vec!["ab", "cde"]), 4).await.unwrap_err());
        assert_eq!(status, 413);
        assert_eq!(
            message,
            "request body is over the limit of 4 bytes (server.max_request_body)"
        );
        // A body that fails is the client's bad request.
        let failing = Body::from_stream(futures_util::stream::iter([
            Ok("ab"),
            Err(std::io::Error::other("reset")),
        ]));
        let (status, message) = status_of(read_body(failing, 100).await.unwrap_err());
        assert_eq!(status, 400);
        assert!(
            message.starts_with("cannot read the request body: "),
            "{message}"
        );
    }
}

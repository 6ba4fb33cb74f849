//! `backworks serve`: start the configured plugins and serve the configured endpoints through them.
//!
//! The call path of a request: axum routes it (the endpoint's path and methods) to [`serve_endpoint`],
//! which builds the SDK request, runs the endpoint's hook chain around the endpoint plugin's
//! `handle`, and turns the plugin's response — or its error, as a JSON body naming it — into the
//! HTTP response.

mod convert;
mod health;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::RawPathParams;
use axum::http::request::Parts;
use axum::routing::{MethodFilter, MethodRouter, on};
use backworks_plugin_host::hooks::error_response;
use backworks_plugin_host::{
    Hook, HookChain, Plugin, PluginHost, PluginSource, PluginSpec, PluginState,
};
use backworks_plugin_sdk::{PluginError, Response};
use bytes::Bytes;

use crate::config::{Config, EndpointConfig, PluginKind};

/// Everything an endpoint needs at request time, resolved once at start-up.
struct Endpoint {
    plugin_name: String,
    /// `Err` with the reason when the endpoint cannot be served (plugin disabled or failed, or a
    /// hook plugin unavailable): the endpoint then answers 503 rather than run without its hooks.
    target: Result<(Arc<dyn Plugin>, HookChain), String>,
}

/// Starts every configured plugin on `host`. A plugin that fails is logged, recorded in its `Error`
/// state and skipped; the others start regardless.
pub async fn start_plugins(config: &Config, host: &PluginHost) {
    for plugin in &config.plugins {
        if !plugin.enabled {
            tracing::info!(plugin = plugin.name, "plugin disabled in config");
            let source = match &plugin.kind {
                PluginKind::Builtin => PluginSource::Builtin(plugin.name.clone()),
                PluginKind::External { path } => PluginSource::Library(path.clone()),
            };
            let _ = host.record(&plugin.name, Some(source), PluginState::Disabled, None);
            continue;
        }
        let source = match &plugin.kind {
            PluginKind::Builtin => PluginSource::Builtin(plugin.name.clone()),
            PluginKind::External { .. } => match config.resolve_plugin_path(plugin) {
                Ok(path) => PluginSource::Library(path),
                Err(tried) => {
                    let tried: Vec<_> = tried.iter().map(|p| p.display().to_string()).collect();
                    let reason = format!("plugin file not found; looked at {}", tried.join(", "));
                    tracing::error!(plugin = plugin.name, "{reason}");
                    let _ = host.record(&plugin.name, None, PluginState::Error(reason), None);
                    continue;
                }
            },
        };
        let spec = PluginSpec::new(&plugin.name, source, plugin.config.clone());
        // The host logs the failure and records the plugin's Error state.
        let _ = host.start(&spec).await;
    }
}

fn resolve(config: &Config, host: &PluginHost, endpoint: &EndpointConfig) -> Endpoint {
    let unavailable = |name: &str| match host.state(name) {
        Some(state @ PluginState::Error(_)) => {
            format!("plugin `{name}` failed to start ({})", state_reason(&state))
        }
        Some(state) => format!("plugin `{name}` is {}", state.as_str()),
        None => format!("plugin `{name}` is not configured"),
    };
    let target = (|| {
        let plugin = host
            .get(&endpoint.plugin)
            .ok_or_else(|| unavailable(&endpoint.plugin))?;
        let mut hooks = Vec::new();
        for hook in config.hook_chain(endpoint) {
            let plugin = host
                .get(&hook.name)
                .ok_or_else(|| unavailable(&hook.name))?;
            hooks.push(Hook {
                plugin,
                before_request: hook.before_request,
                after_response: hook.after_response,
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
        target,
    }
}

fn state_reason(state: &PluginState) -> &str {
    match state {
        PluginState::Error(reason) => reason,
        _ => "",
    }
}

/// The router of every configured endpoint, plus `/health`.
pub fn router(config: &Config, host: Arc<PluginHost>) -> Router {
    // Endpoints sharing a path share one method router.
    let mut by_path: BTreeMap<&str, MethodRouter> = BTreeMap::new();
    for endpoint_config in &config.endpoints {
        let endpoint = Arc::new(resolve(config, &host, endpoint_config));
        for method in &endpoint_config.methods {
            let filter = method_filter(method);
            let endpoint = endpoint.clone();
            let handler = move |params: RawPathParams, parts: Parts, body: Bytes| {
                let endpoint = endpoint.clone();
                async move { serve_endpoint(&endpoint, params, parts, body).await }
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
    let health = Router::new()
        .route("/health", axum::routing::get(health::health))
        .with_state(health::HealthState { host });
    router.merge(health)
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

async fn serve_endpoint(
    endpoint: &Endpoint,
    params: RawPathParams,
    parts: Parts,
    body: Bytes,
) -> axum::response::Response {
    let (plugin, hooks) = match &endpoint.target {
        Ok(target) => target,
        Err(reason) => {
            let error = PluginError::Unavailable(reason.clone());
            return convert::into_http(
                &endpoint.plugin_name,
                error_response(&endpoint.plugin_name, &error),
            );
        }
    };
    let params = params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let request = convert::request_from_parts(&parts, params, body);
    let response = if hooks.is_empty() {
        call(plugin.as_ref(), request).await
    } else {
        hooks
            .run(request, |request| call(plugin.as_ref(), request))
            .await
    };
    convert::into_http(&endpoint.plugin_name, response)
}

async fn call(plugin: &dyn Plugin, request: backworks_plugin_sdk::Request) -> Response {
    match plugin.handle(request).await {
        Ok(response) => response,
        Err(error) => error_response(&plugin.info().name, &error),
    }
}

/// Serves `config` on `addr` until Ctrl-C or SIGTERM, then shuts every plugin down.
pub async fn serve(config: Config, addr: SocketAddr, host: Arc<PluginHost>) -> anyhow::Result<()> {
    start_plugins(&config, &host).await;
    let app = router(&config, host.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        address = %local,
        endpoints = config.endpoints.len(),
        plugins = config.plugins.len(),
        "backworks listening on http://{local}"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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

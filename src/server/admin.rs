//! The admin listener: `GET /_backworks/plugins`, `GET /_backworks/plugins/{name}`, `/metrics`,
//! and `/health` and `/ready` again, on an address of its own (off the public port).
//!
//! With `server.admin.token` set, every request must carry `Authorization: Bearer <token>`;
//! the comparison takes the same time whatever the guess.

use backworks_plugin_host::redact;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backworks_plugin_host::{PluginHost, PluginStatus};
use serde_json::{Value, json};

use super::health::{self, HealthState};
use super::metrics::Metrics;
use super::reload::{ReloadReport, Reloader};
use crate::config::{Config, PluginKind};

/// What the operator configured about each plugin, for the admin API.
#[derive(Debug, Clone)]
struct Configured {
    hooks: Vec<&'static str>,
    important: bool,
    isolation: &'static str,
    kind: &'static str,
}

#[derive(Clone)]
struct AdminState {
    host: Arc<PluginHost>,
    metrics: Arc<Metrics>,
    configured: Arc<HashMap<String, Configured>>,
}

/// The admin router for `config`'s plugins on `host`.
pub fn router(
    config: &Config,
    host: Arc<PluginHost>,
    metrics: Arc<Metrics>,
    health: HealthState,
    reloader: Option<Weak<Reloader>>,
) -> Router {
    let configured = config
        .plugins
        .iter()
        .map(|p| {
            let kind = match p.kind {
                PluginKind::Builtin => "builtin",
                PluginKind::External { .. } => "library",
                PluginKind::Command { .. } => "command",
                // `config::load` resolves these into the two above.
                PluginKind::Marketplace { .. } => "marketplace",
            };
            let isolation = match p.isolation {
                backworks_plugin_host::Isolation::InProcess => "in_process",
                backworks_plugin_host::Isolation::Process(_) => "process",
            };
            let about = Configured {
                hooks: p.hook_points(),
                important: p.important,
                isolation,
                kind,
            };
            (p.name.clone(), about)
        })
        .collect();
    let state = AdminState {
        host,
        metrics,
        configured: Arc::new(configured),
    };
    let token = config
        .server
        .admin
        .as_ref()
        .and_then(|a| a.token.clone())
        .map(Arc::<str>::from);
    let health_routes = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .with_state(health);
    let reload_routes = match reloader {
        Some(reloader) => Router::new()
            .route(
                "/_backworks/reload",
                axum::routing::post(reload).get(last_reload),
            )
            .with_state(reloader),
        None => Router::new(),
    };
    Router::new()
        .route("/_backworks/plugins", get(plugins))
        .route("/_backworks/plugins/{name}", get(plugin))
        .route("/metrics", get(prometheus))
        .with_state(state)
        .merge(health_routes)
        .merge(reload_routes)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = token.clone();
                async move { authorize(token.as_deref(), request, next).await }
            },
        ))
}

/// `POST /_backworks/reload`: reloads; 200 with the report when the new config serves, 409 with
/// the report's errors when the reload was refused (the running generation goes on serving).
async fn reload(State(reloader): State<Weak<Reloader>>) -> Response {
    let Some(reloader) = reloader.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // In a task of its own: a client that goes away must not cancel a reload halfway.
    let Ok(report) = tokio::spawn(async move { reloader.reload().await }).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (status, Json(redacted(&report))).into_response()
}

/// `GET /_backworks/reload`: the last reload's report (`null` before the first).
async fn last_reload(State(reloader): State<Weak<Reloader>>) -> Response {
    let report = reloader.upgrade().and_then(|r| r.last());
    Json(report.map(|r| redacted(&r)).unwrap_or(Value::Null)).into_response()
}

/// A reload report as JSON, with every secret redacted from its messages (errors may quote a
/// plugin's message); field by field, so that the JSON's own text is never touched.
fn redacted(report: &ReloadReport) -> Value {
    let mut report = report.clone();
    for message in report.errors.iter_mut().chain(report.warnings.iter_mut()) {
        *message = redact(message).into_owned();
    }
    serde_json::to_value(&report).unwrap_or(Value::Null)
}

async fn authorize(token: Option<&str>, request: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    if bearer_matches(request.headers(), token) {
        return next.run(request).await;
    }
    let body = json!({"error": {"kind": "unauthorized", "message":
        "the admin API needs `Authorization: Bearer <token>` (server.admin.token)"}});
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    // Constant time over the token's length: no early exit on the first differing byte.
    let expected = token.as_bytes();
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn plugins(State(state): State<AdminState>) -> Json<Value> {
    let plugins: Vec<Value> = state
        .host
        .statuses()
        .iter()
        .map(|status| describe(&state, status))
        .collect();
    Json(json!({ "plugins": plugins }))
}

async fn plugin(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.host.statuses().iter().find(|s| s.name == name) {
        Some(status) => Json(describe(&state, status)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"kind": "not_found",
                "message": format!("no plugin named `{name}`")}})),
        )
            .into_response(),
    }
}

async fn prometheus(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// One plugin as the admin API shows it.
fn describe(state: &AdminState, status: &PluginStatus) -> Value {
    let configured = state.configured.get(&status.name);
    let guard = state.host.guarded(&status.name);
    let lifecycle = state.host.lifecycle(&status.name);
    let events: Vec<Value> = lifecycle
        .map(|l| l.history())
        .unwrap_or_default()
        .into_iter()
        .map(|event| {
            json!({
                "at": humantime::format_rfc3339_millis(event.at).to_string(),
                "kind": event.kind.as_str(),
                "detail": redact(&event.detail),
            })
        })
        .collect();
    json!({
        "name": status.name,
        "version": status.metadata.as_ref().map(|m| m.version.clone()),
        "description": status.metadata.as_ref().map(|m| m.description.clone()),
        "kind": configured.map(|c| c.kind),
        "isolation": configured.map(|c| c.isolation),
        "hooks_enabled": configured.map(|c| &c.hooks),
        "hooks_implemented": status
            .metadata
            .as_ref()
            .and_then(|m| m.hooks)
            .map(|h| h.names().collect::<Vec<_>>()),
        "important": configured.is_some_and(|c| c.important),
        "generation": status.generation,
        "retired_generations": state.host.retired_generations(&status.name),
        "state": status.state.as_str(),
        "reason": match &status.state {
            backworks_plugin_host::PluginState::Error(reason) => Some(redact(reason)),
            _ => None,
        },
        "health": status.health.as_ref().map(|h| json!({
            "status": h.as_str(),
            "message": redact(h.message()),
        })),
        "breaker": guard.as_ref().map(|g| g.breaker_snapshot()),
        "stats": guard.as_ref().map(|g| g.stats().snapshot()),
        "process": status.supervision,
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "s3cret"));
        for (given, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cretX", false),
            ("Bearer S3cret", false),
            ("Basic s3cret", false),
            ("s3cret", false),
        ] {
            headers.insert(header::AUTHORIZATION, given.parse().unwrap());
            assert_eq!(bearer_matches(&headers, "s3cret"), ok, "{given}");
        }
    }
}

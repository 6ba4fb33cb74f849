//! Health: the monitor that polls every plugin's `health_check`, and the `/health` (liveness) and
//! `/ready` (readiness) routes that report what it found.
//!
//! The routes never call a plugin: they read the last report the monitor stored in each plugin's
//! [`Lifecycle`](backworks_plugin_host::Lifecycle), so a slow or hung `health_check` cannot slow
//! them down or pile up calls.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use backworks_plugin_host::{Plugin, PluginHost, PluginState, PluginStatus};
use backworks_plugin_sdk::Health;
use serde_json::{Value, json};

use crate::config::HealthConfig;

/// What the health routes read.
#[derive(Clone, Debug)]
pub struct HealthState {
    /// The plugins.
    pub host: Arc<PluginHost>,
    /// The plugins `/ready` waits for.
    pub important: Arc<[String]>,
}

/// Asks every active plugin for its health once, all at the same time, and stores the answers.
/// A check that takes longer than `timeout` (or panics) counts as Unhealthy.
pub async fn check_all(host: &PluginHost, timeout: Duration) {
    let checks = host.active().into_iter().map(|plugin| async move {
        let health = check_one(plugin.as_ref(), timeout).await;
        if let Some(lifecycle) = host.lifecycle(&plugin.info().name) {
            lifecycle.set_health(health);
        }
    });
    futures_util::future::join_all(checks).await;
}

pub(crate) async fn check_one(plugin: &dyn Plugin, timeout: Duration) -> Health {
    match tokio::time::timeout(timeout, plugin.health_check()).await {
        Ok(health) => health,
        Err(_) => Health::Unhealthy(format!(
            "health check did not answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Polls every plugin on `config.interval` until the task is dropped.
pub async fn monitor(host: Arc<PluginHost>, config: HealthConfig) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; start-up already ran a round.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        check_all(&host, config.timeout).await;
    }
}

fn breaker_open(host: &PluginHost, name: &str) -> bool {
    host.guarded(name)
        .is_some_and(|g| g.breaker_state() == backworks_plugin_host::BreakerState::Open)
}

fn plugin_entry(status: &PluginStatus) -> Value {
    let mut entry = json!({
        "name": status.name,
        "state": status.state.as_str(),
        "version": status.metadata.as_ref().map(|m| m.version.clone()),
    });
    if status.state == PluginState::Active {
        match &status.health {
            Some(health) => {
                // The message is the plugin's own text: for the admin API, not the public.
                entry["health"] = json!(health.as_str());
            }
            None => entry["health"] = json!("unknown"),
        }
    }
    entry
}

/// `GET /health`, liveness: `{"status": "ok" | "degraded", "plugins": [{"name", "state",
/// "version", "health", ...}]}`. `degraded` when an enabled plugin is not active or its last
/// report is not healthy. Always 200: the server itself is alive.
pub async fn health(State(state): State<HealthState>) -> Json<Value> {
    let statuses = state.host.statuses();
    let ok = statuses.iter().all(|s| {
        s.state == PluginState::Disabled
            || (s.state == PluginState::Active && s.health == Some(Health::Healthy))
    });
    let plugins: Vec<Value> = statuses.iter().map(plugin_entry).collect();
    Json(json!({
        "status": if ok { "ok" } else { "degraded" },
        "plugins": plugins,
    }))
}

/// `GET /ready`, readiness: 200 `{"ready": true}` when every plugin marked `important` is Active,
/// its circuit breaker is not open and its last health report is Healthy, else 503
/// `{"ready": false, "waiting_for": [...]}` naming each important plugin that is not, and why.
pub async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let mut waiting = Vec::new();
    let statuses = state.host.statuses();
    for name in state.important.iter() {
        let status = statuses.iter().find(|s| &s.name == name);
        let why = match status {
            None => Some("not started".to_owned()),
            Some(s) if s.state != PluginState::Active => {
                Some(format!("state {}", s.state.as_str()))
            }
            Some(_) if breaker_open(&state.host, name) => Some("circuit breaker open".to_owned()),
            Some(s) => match &s.health {
                Some(Health::Healthy) => None,
                Some(other) => Some(other.as_str().to_owned()),
                None => Some("no health report yet".to_owned()),
            },
        };
        if let Some(why) = why {
            waiting.push(json!({ "plugin": name, "reason": why }));
        }
    }
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": waiting })),
        )
    }
}

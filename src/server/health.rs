//! `GET /health`: every plugin's lifecycle state and, for active ones, its own health report.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use backworks_plugin_host::{PluginHost, PluginState};
use backworks_plugin_sdk::Health;
use serde_json::{Value, json};

/// How long a plugin's `health_check` may take before it counts as unhealthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HealthState {
    pub host: Arc<PluginHost>,
}

/// `{"status": "ok" | "degraded", "plugins": [{"name", "state", "version", "health", ...}]}`.
/// `degraded` when an enabled plugin is not active or reports itself degraded or unhealthy. Always
/// 200: this is liveness, and the server itself is alive.
pub async fn health(State(state): State<HealthState>) -> Json<Value> {
    let statuses = state.host.statuses();
    let checks = statuses.iter().map(|status| {
        let plugin = state.host.get(&status.name);
        async move {
            match plugin {
                Some(plugin) => tokio::time::timeout(HEALTH_TIMEOUT, plugin.health_check())
                    .await
                    .unwrap_or_else(|_| Health::Unhealthy("health check timed out".into())),
                None => Health::Unhealthy(String::new()),
            }
        }
    });
    let reports = futures_util::future::join_all(checks).await;
    let mut ok = true;
    let plugins: Vec<Value> = statuses
        .iter()
        .zip(reports)
        .map(|(status, health)| {
            let active = status.state == PluginState::Active;
            if status.state != PluginState::Disabled && (!active || health != Health::Healthy) {
                ok = false;
            }
            let mut entry = json!({
                "name": status.name,
                "state": status.state.as_str(),
                "version": status.metadata.as_ref().map(|m| m.version.clone()),
            });
            if let PluginState::Error(reason) = &status.state {
                entry["error"] = json!(reason);
            }
            if active {
                entry["health"] = json!(health.as_str());
                if !health.message().is_empty() {
                    entry["health_message"] = json!(health.message());
                }
            }
            entry
        })
        .collect();
    Json(json!({
        "status": if ok { "ok" } else { "degraded" },
        "plugins": plugins,
    }))
}

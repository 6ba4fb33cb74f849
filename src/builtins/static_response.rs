//! The `static` built-in: answers every request with the response written in its config.
//!
//! ```yaml
//! plugins:
//!   static:
//!     type: builtin
//!     config:
//!       status: 200                        # default 200
//!       headers: { x-served-by: backworks }  # optional
//!       body: { "version": "1.0" }         # JSON value (sent as JSON) or a string (sent as text)
//! ```

use std::sync::OnceLock;

use backworks_plugin_sdk::prelude::*;

/// Serves the fixed response of its config.
#[derive(Debug, Default)]
pub struct StaticResponse {
    response: OnceLock<Response>,
}

#[async_trait]
impl BackworksPlugin for StaticResponse {
    // It never waits: the server calls it at once, without a future (`Plugin::handle_now`).
    const HANDLE_SYNC: bool = true;

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let config = if config.is_null() { json!({}) } else { config };
        let Value::Object(map) = config else {
            return Err(PluginError::Config("config must be a map".into()));
        };
        for key in map.keys() {
            if !matches!(key.as_str(), "status" | "headers" | "body") {
                return Err(PluginError::Config(format!(
                    "unknown field `{key}` (expected status, headers, body)"
                )));
            }
        }
        let status = match map.get("status") {
            None => 200,
            Some(v) => v
                .as_u64()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| PluginError::Config(format!("`status` must be 100-599, got {v}")))?
                as u16,
        };
        let mut response = match map.get("body") {
            None | Some(Value::Null) => Response::new(status),
            Some(Value::String(text)) => Response::text(text.clone()).with_status(status),
            Some(value) => Response::json(value).with_status(status),
        };
        if let Some(headers) = map.get("headers") {
            let Value::Object(headers) = headers else {
                return Err(PluginError::Config("`headers` must be a map".into()));
            };
            for (name, value) in headers {
                let Value::String(value) = value else {
                    return Err(PluginError::Config(format!(
                        "header `{name}` must be a string"
                    )));
                };
                response.headers.insert(name.clone(), value.clone());
            }
        }
        self.response
            .set(response)
            .map_err(|_| PluginError::Config("initialized twice".into()))
    }

    fn handle_sync(&self, _request: LentRequest<'_>) -> PluginResult<Response> {
        self.response
            .get()
            .cloned()
            .ok_or_else(|| PluginError::Unavailable("not initialized".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_its_config() {
        let plugin = StaticResponse::default();
        plugin
            .initialize(json!({"status": 201, "headers": {"X-A": "b"}, "body": {"ok": true}}))
            .await
            .unwrap();
        let res = plugin.handle(Request::new("GET", "/")).await.unwrap();
        assert_eq!(res.status, 201);
        assert_eq!(res.headers.get("x-a"), Some("b"));
        assert_eq!(res.body, br#"{"ok":true}"#);
    }

    #[tokio::test]
    async fn rejects_bad_config() {
        let err = StaticResponse::default()
            .initialize(json!({"status": 99}))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: `status` must be 100-599, got 99"
        );
        let err = StaticResponse::default()
            .initialize(json!({"stauts": 200}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `stauts`"));
    }
}

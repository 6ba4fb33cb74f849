//! Errors a plugin returns, and the HTTP statuses the host answers them with.

/// What went wrong in a plugin call. The host answers the request with [`PluginError::status`] and a
/// JSON body `{"error": {"plugin", "kind", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The request is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The caller is not authenticated (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller may not do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The plugin's configuration is invalid (500; fails `initialize`).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Something the plugin depends on is unavailable (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The plugin failed (500).
    #[error("{0}")]
    Internal(String),
    /// Answer with this HTTP status.
    #[error("{message}")]
    Status {
        /// HTTP status, 400–599.
        status: u16,
        /// What happened.
        message: String,
    },
    /// The plugin panicked (500). Made by the SDK and the host, not by plugin code.
    #[error("plugin panicked: {0}")]
    Panic(String),
    /// The call was cancelled before it finished.
    #[error("call cancelled")]
    Cancelled,
    /// The call ran past its deadline (504). Made by the host.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The plugin is at its concurrency limit and the call was shed (503). Made by the host.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The plugin's circuit breaker is open and the plugin was not called (503). Made by the host.
    #[error("circuit open: {message}")]
    CircuitOpen {
        /// What happened.
        message: String,
        /// Seconds until the breaker lets a probe call through (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// The plugin's process died during the call (502). Made by the host.
    #[error("plugin crashed: {0}")]
    Crashed(String),
    /// The plugin answered something the host cannot accept: an oversized body, an invalid header,
    /// a malformed protocol message (502). Made by the host.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// The result of a plugin call.
pub type PluginResult<T> = Result<T, PluginError>;

/// Reads a plugin's config into `T`: `null` (no `config` in `backworks.yaml`) gives `T::default()`,
/// a map is deserialized, anything else or a mismatch is a [`PluginError::Config`] saying why.
///
/// ```
/// use backworks_plugin_sdk::{parse_config, PluginError};
///
/// #[derive(Default, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Config { greeting: Option<String> }
///
/// let c: Config = parse_config(serde_json::json!({"greeting": "Hi"})).unwrap();
/// assert_eq!(c.greeting.as_deref(), Some("Hi"));
/// assert!(parse_config::<Config>(serde_json::Value::Null).unwrap().greeting.is_none());
/// assert!(matches!(parse_config::<Config>(serde_json::json!([1])), Err(PluginError::Config(_))));
/// ```
pub fn parse_config<T: serde::de::DeserializeOwned + Default>(
    config: serde_json::Value,
) -> PluginResult<T> {
    match config {
        serde_json::Value::Null => Ok(T::default()),
        serde_json::Value::Object(_) => {
            serde_json::from_value(config).map_err(|e| PluginError::Config(e.to_string()))
        }
        other => Err(PluginError::Config(format!(
            "config must be a map, found {other}"
        ))),
    }
}

impl PluginError {
    /// The HTTP status the host answers this error with.
    ///
    /// ```
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::Unauthorized("no key".into()).status(), 401);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            PluginError::BadRequest(_) => 400,
            PluginError::Unauthorized(_) => 401,
            PluginError::Forbidden(_) => 403,
            PluginError::NotFound(_) => 404,
            PluginError::Unavailable(_) => 503,
            PluginError::Status { status, .. } if (400..=599).contains(status) => *status,
            PluginError::Cancelled => 503,
            PluginError::Timeout(_) => 504,
            PluginError::Overloaded(_) | PluginError::CircuitOpen { .. } => 503,
            PluginError::Crashed(_) | PluginError::InvalidResponse(_) => 502,
            _ => 500,
        }
    }

    /// A short machine-readable name of the variant (`"bad_request"`, `"panic"`, ...).
    ///
    /// ```
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::Panic("boom".into()).kind(), "panic");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::BadRequest(_) => "bad_request",
            PluginError::Unauthorized(_) => "unauthorized",
            PluginError::Forbidden(_) => "forbidden",
            PluginError::NotFound(_) => "not_found",
            PluginError::Config(_) => "config",
            PluginError::Unavailable(_) => "unavailable",
            PluginError::Internal(_) => "internal",
            PluginError::Status { .. } => "status",
            PluginError::Panic(_) => "panic",
            PluginError::Cancelled => "cancelled",
            PluginError::Timeout(_) => "timeout",
            PluginError::Overloaded(_) => "overloaded",
            PluginError::CircuitOpen { .. } => "circuit_open",
            PluginError::Crashed(_) => "crashed",
            PluginError::InvalidResponse(_) => "invalid_response",
        }
    }

    /// The message without the variant's prefix.
    ///
    /// ```
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::NotFound("no such key".into()).message(), "no such key");
    /// ```
    pub fn message(&self) -> &str {
        match self {
            PluginError::BadRequest(m)
            | PluginError::Unauthorized(m)
            | PluginError::Forbidden(m)
            | PluginError::NotFound(m)
            | PluginError::Config(m)
            | PluginError::Unavailable(m)
            | PluginError::Internal(m)
            | PluginError::Panic(m)
            | PluginError::Timeout(m)
            | PluginError::Overloaded(m)
            | PluginError::Crashed(m)
            | PluginError::InvalidResponse(m)
            | PluginError::CircuitOpen { message: m, .. }
            | PluginError::Status { message: m, .. } => m,
            PluginError::Cancelled => "call cancelled",
        }
    }

    /// The error for a panic payload caught by `catch_unwind`.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> PluginError {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        PluginError::Panic(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(PluginError::BadRequest(String::new()).status(), 400);
        assert_eq!(PluginError::Forbidden(String::new()).status(), 403);
        assert_eq!(PluginError::NotFound(String::new()).status(), 404);
        assert_eq!(PluginError::Config(String::new()).status(), 500);
        assert_eq!(PluginError::Internal(String::new()).status(), 500);
        assert_eq!(PluginError::Panic(String::new()).status(), 500);
        assert_eq!(PluginError::Timeout(String::new()).status(), 504);
        assert_eq!(PluginError::Overloaded(String::new()).status(), 503);
        assert_eq!(PluginError::Crashed(String::new()).status(), 502);
        assert_eq!(PluginError::InvalidResponse(String::new()).status(), 502);
        let open = PluginError::CircuitOpen {
            message: "5 failures in a row".into(),
            retry_after_secs: 3,
        };
        assert_eq!((open.status(), open.kind()), (503, "circuit_open"));
        let teapot = PluginError::Status {
            status: 418,
            message: "short and stout".into(),
        };
        assert_eq!(teapot.status(), 418);
        assert_eq!(teapot.to_string(), "short and stout");
        // A status outside 4xx/5xx is not an error status; the host answers 500.
        let ok = PluginError::Status {
            status: 200,
            message: String::new(),
        };
        assert_eq!(ok.status(), 500);
    }

    #[test]
    fn panic_payloads() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(
            PluginError::from_panic(caught.as_ref()),
            PluginError::Panic("boom 1".into())
        );
    }
}

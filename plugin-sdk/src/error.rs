//! Errors a plugin returns, and the HTTP statuses the host answers them with.

/// Declares [`ErrorKind`], the one table of error kinds: each kind's wire name, ABI code and HTTP
/// status, written once. Everything else (the ABI's codes, the wire protocol's `kind`, metric labels,
/// the host's answers) derives from it.
macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $kind:ident = $name:literal, $code:ident, $status:literal; )*) => {
        /// The kinds of error a plugin can return: its name on the wire, in error bodies and in
        /// metrics, its `BW_ERR_*` code on the ABI, and its HTTP status.
        ///
        /// ```
        /// use backworks_plugin_sdk::{ErrorKind, abi};
        /// assert_eq!(ErrorKind::NotFound.name(), "not_found");
        /// assert_eq!(ErrorKind::NotFound.abi_code(), abi::BW_ERR_NOT_FOUND);
        /// assert_eq!(ErrorKind::NotFound.status(), 404);
        /// assert_eq!(ErrorKind::from_name("not_found"), Some(ErrorKind::NotFound));
        /// assert_eq!(ErrorKind::from_abi_code(abi::BW_ERR_NOT_FOUND), Some(ErrorKind::NotFound));
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $( $(#[$doc])* $kind, )*
        }

        impl ErrorKind {
            /// Every kind, in ABI code order.
            pub const ALL: &'static [ErrorKind] = &[$( ErrorKind::$kind, )*];

            /// The kind's name: `kind` in error bodies, on the wire and in metrics.
            pub const fn name(self) -> &'static str {
                match self { $( ErrorKind::$kind => $name, )* }
            }

            /// The kind's `BW_ERR_*` code on the ABI.
            pub const fn abi_code(self) -> u32 {
                match self { $( ErrorKind::$kind => crate::abi::$code, )* }
            }

            /// The HTTP status an error of this kind is answered with ([`ErrorKind::Status`]
            /// carries its own; 500 is its fallback).
            pub const fn status(self) -> u16 {
                match self { $( ErrorKind::$kind => $status, )* }
            }

            /// The kind named `name`.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name { $( $name => Some(ErrorKind::$kind), )* _ => None }
            }

            /// The kind with the ABI code `code`.
            pub fn from_abi_code(code: u32) -> Option<ErrorKind> {
                ErrorKind::ALL.iter().copied().find(|k| k.abi_code() == code)
            }
        }
    };
}

error_kinds! {
    /// The plugin failed.
    Internal = "internal", BW_ERR_INTERNAL, 500;
    /// The plugin panicked; made by the SDK's shims, not by plugin code.
    Panic = "panic", BW_ERR_PANIC, 500;
    /// The request is malformed.
    BadRequest = "bad_request", BW_ERR_BAD_REQUEST, 400;
    /// The caller is not authenticated.
    Unauthorized = "unauthorized", BW_ERR_UNAUTHORIZED, 401;
    /// The caller may not do this.
    Forbidden = "forbidden", BW_ERR_FORBIDDEN, 403;
    /// No such resource.
    NotFound = "not_found", BW_ERR_NOT_FOUND, 404;
    /// The plugin's configuration is invalid.
    Config = "config", BW_ERR_CONFIG, 500;
    /// Something the plugin depends on is unavailable.
    Unavailable = "unavailable", BW_ERR_UNAVAILABLE, 503;
    /// The call was cancelled before it finished.
    Cancelled = "cancelled", BW_ERR_CANCELLED, 503;
    /// An HTTP status of the plugin's choice.
    Status = "status", BW_ERR_STATUS, 500;
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plugin says went wrong in a call. The host answers the request with
/// [`PluginError::status`] and a JSON body naming the plugin and the [`ErrorKind`].
///
/// These are the errors a plugin can return. What the host adds when it stops or refuses a call
/// (a timeout, an open breaker, a crashed child) is the host's own type, not this one.
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
    /// The plugin panicked (500). Made by the SDK's shims, not by plugin code.
    #[error("plugin panicked: {0}")]
    Panic(String),
    /// The call was cancelled before it finished.
    #[error("call cancelled")]
    Cancelled,
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
    /// The error of kind `kind` with `message`; `status` is used by [`ErrorKind::Status`] only.
    /// This is how an error read from the ABI or the wire protocol is rebuilt.
    ///
    /// ```
    /// use backworks_plugin_sdk::{ErrorKind, PluginError};
    /// let e = PluginError::new(ErrorKind::Status, 418, "short and stout".into());
    /// assert_eq!((e.kind(), e.status()), ("status", 418));
    /// ```
    pub fn new(kind: ErrorKind, status: u16, message: String) -> PluginError {
        match kind {
            ErrorKind::BadRequest => PluginError::BadRequest(message),
            ErrorKind::Unauthorized => PluginError::Unauthorized(message),
            ErrorKind::Forbidden => PluginError::Forbidden(message),
            ErrorKind::NotFound => PluginError::NotFound(message),
            ErrorKind::Config => PluginError::Config(message),
            ErrorKind::Unavailable => PluginError::Unavailable(message),
            ErrorKind::Internal => PluginError::Internal(message),
            ErrorKind::Status => PluginError::Status { status, message },
            ErrorKind::Panic => PluginError::Panic(message),
            ErrorKind::Cancelled => PluginError::Cancelled,
        }
    }

    /// The error's kind.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            PluginError::BadRequest(_) => ErrorKind::BadRequest,
            PluginError::Unauthorized(_) => ErrorKind::Unauthorized,
            PluginError::Forbidden(_) => ErrorKind::Forbidden,
            PluginError::NotFound(_) => ErrorKind::NotFound,
            PluginError::Config(_) => ErrorKind::Config,
            PluginError::Unavailable(_) => ErrorKind::Unavailable,
            PluginError::Internal(_) => ErrorKind::Internal,
            PluginError::Status { .. } => ErrorKind::Status,
            PluginError::Panic(_) => ErrorKind::Panic,
            PluginError::Cancelled => ErrorKind::Cancelled,
        }
    }

    /// The HTTP status the host answers this error with: its kind's, or for
    /// [`PluginError::Status`] its own when that is 400–599 (else 500).
    ///
    /// ```
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::Unauthorized("no key".into()).status(), 401);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            PluginError::Status { status, .. } if (400..=599).contains(status) => *status,
            _ => self.error_kind().status(),
        }
    }

    /// The name of the error's kind (`"bad_request"`, `"panic"`, ...): see [`ErrorKind::name`].
    ///
    /// ```
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::Panic("boom".into()).kind(), "panic");
    /// ```
    pub fn kind(&self) -> &'static str {
        self.error_kind().name()
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
        assert_eq!(PluginError::Unavailable(String::new()).status(), 503);
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
    fn every_kind_round_trips_through_its_name_and_abi_code() {
        let mut names = std::collections::HashSet::new();
        for &kind in ErrorKind::ALL {
            assert!(names.insert(kind.name()), "{kind} twice");
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
            assert_eq!(ErrorKind::from_abi_code(kind.abi_code()), Some(kind));
            let error = PluginError::new(kind, 418, "m".into());
            assert_eq!(error.error_kind(), kind);
        }
        assert_eq!(
            ErrorKind::from_name("timeout"),
            None,
            "a host kind, not a plugin's"
        );
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

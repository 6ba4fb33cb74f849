//! Why a call to a plugin failed: the plugin said so ([`PluginError`]), or the host ended or
//! refused the call. The two are kept apart, in the types and in the logs; both are answered with
//! an HTTP status and a kind name from one table each (the plugin's in the SDK's
//! [`ErrorKind`](backworks_plugin_sdk::ErrorKind), the host's here).

use backworks_plugin_sdk::{ErrorKind, PluginError};

/// Why a call to a plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin returned an error (or panicked: the SDK's shims turn a panic into
    /// [`PluginError::Panic`]).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The call ran past its deadline (504).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The plugin is at its concurrency limit, or not reading its input, and the call was shed
    /// (503).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The plugin's circuit breaker is open and the plugin was not called (503).
    #[error("circuit open: {message}")]
    CircuitOpen {
        /// Why the breaker opened.
        message: String,
        /// Seconds until the breaker lets a probe call through (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// The plugin's process died during the call (502).
    #[error("plugin crashed: {0}")]
    Crashed(String),
    /// The plugin answered something the host cannot accept: an oversized body, an invalid header,
    /// a malformed protocol message (502).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// The plugin cannot be called now: not started, restarting, or given up (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// How many kinds a call can fail with: the plugin's ([`ErrorKind::ALL`]) and the host's own
/// (`unavailable` is in both and counted once).
pub const KIND_COUNT: usize = ErrorKind::ALL.len() + HOST_KINDS.len() - 1;

/// Where the kinds the statistics count without an error at hand sit in [`CallError::kinds`].
pub(crate) const CANCELLED_INDEX: usize = ErrorKind::Cancelled as usize;
/// See [`CANCELLED_INDEX`].
pub(crate) const OVERLOADED_INDEX: usize = ErrorKind::ALL.len() + 1;
/// See [`CANCELLED_INDEX`].
pub(crate) const CIRCUIT_OPEN_INDEX: usize = ErrorKind::ALL.len() + 2;

/// The kinds the host itself adds, with their HTTP status: one table, beside the plugin's. The
/// last, `unavailable`, is a plugin kind too.
const HOST_KINDS: [(&str, u16); 6] = [
    ("timeout", 504),
    ("overloaded", 503),
    ("circuit_open", 503),
    ("crashed", 502),
    ("invalid_response", 502),
    ("unavailable", 503),
];

impl CallError {
    /// The HTTP status the call is answered with.
    ///
    /// ```
    /// use backworks_plugin_host::CallError;
    /// use backworks_plugin_sdk::PluginError;
    /// assert_eq!(CallError::Timeout("5 s".into()).status(), 504);
    /// assert_eq!(CallError::from(PluginError::NotFound("x".into())).status(), 404);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            CallError::Plugin(error) => error.status(),
            _ => HOST_KINDS
                .iter()
                .find(|(name, _)| *name == self.kind())
                .map_or(500, |(_, status)| *status),
        }
    }

    /// The kind's name, in error bodies and metrics: the plugin error's, or the host's.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Plugin(error) => error.kind(),
            CallError::Timeout(_) => HOST_KINDS[0].0,
            CallError::Overloaded(_) => HOST_KINDS[1].0,
            CallError::CircuitOpen { .. } => HOST_KINDS[2].0,
            CallError::Crashed(_) => HOST_KINDS[3].0,
            CallError::InvalidResponse(_) => HOST_KINDS[4].0,
            CallError::Unavailable(_) => HOST_KINDS[5].0,
        }
    }

    /// The message without the kind's prefix.
    pub fn message(&self) -> &str {
        match self {
            CallError::Plugin(error) => error.message(),
            CallError::Timeout(m)
            | CallError::Overloaded(m)
            | CallError::Crashed(m)
            | CallError::InvalidResponse(m)
            | CallError::Unavailable(m)
            | CallError::CircuitOpen { message: m, .. } => m,
        }
    }

    /// The host's error of kind `kind` (a name of the host's table) with `message`; `None` for a
    /// name that is not the host's. How an error read from the wire is rebuilt.
    pub fn from_host_kind(kind: &str, message: String, retry_after_secs: u64) -> Option<CallError> {
        Some(match kind {
            "timeout" => CallError::Timeout(message),
            "overloaded" => CallError::Overloaded(message),
            "circuit_open" => CallError::CircuitOpen {
                message,
                retry_after_secs,
            },
            "crashed" => CallError::Crashed(message),
            "invalid_response" => CallError::InvalidResponse(message),
            _ => return None,
        })
    }

    /// Whether this is an answer a plugin gives the client on purpose (400, 401, 403, 404, a 4xx
    /// status) rather than a failure: it does not count against the plugin's breaker, and a hook
    /// that returns it answers the request whatever its `on_failure` policy.
    pub fn is_client_error(&self) -> bool {
        match self {
            CallError::Plugin(
                PluginError::BadRequest(_)
                | PluginError::Unauthorized(_)
                | PluginError::Forbidden(_)
                | PluginError::NotFound(_),
            ) => true,
            CallError::Plugin(PluginError::Status { status, .. }) => (400..500).contains(status),
            _ => false,
        }
    }

    /// Whether the host made this error (rather than the plugin).
    pub fn is_host(&self) -> bool {
        !matches!(self, CallError::Plugin(_))
    }

    /// The plugin's error, when the plugin made it.
    pub fn as_plugin(&self) -> Option<&PluginError> {
        match self {
            CallError::Plugin(error) => Some(error),
            _ => None,
        }
    }

    /// Every kind name a call can fail with: the plugin's, then the
    /// host's (`unavailable` is in both tables and listed once). What the statistics count by.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        ErrorKind::ALL.iter().map(|k| k.name()).chain(
            HOST_KINDS
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| ErrorKind::from_name(name).is_none()),
        )
    }

    /// Where this error's kind sits in [`CallError::kinds`].
    pub fn kind_index(&self) -> usize {
        let plugin_kind = match self {
            CallError::Plugin(error) => Some(error.error_kind()),
            CallError::Unavailable(_) => Some(ErrorKind::Unavailable),
            _ => None,
        };
        match plugin_kind {
            Some(kind) => ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0),
            None => {
                let host = HOST_KINDS.iter().position(|(name, _)| *name == self.kind());
                ErrorKind::ALL.len() + host.unwrap_or(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status_and_a_place_in_the_list() {
        let kinds: Vec<_> = CallError::kinds().collect();
        let errors = [
            CallError::Timeout(String::new()),
            CallError::Overloaded(String::new()),
            CallError::CircuitOpen {
                message: String::new(),
                retry_after_secs: 1,
            },
            CallError::Crashed(String::new()),
            CallError::InvalidResponse(String::new()),
            CallError::Unavailable(String::new()),
        ];
        for error in errors.iter() {
            assert!(kinds.contains(&error.kind()), "{}", error.kind());
            assert!((500..600).contains(&error.status()));
            assert!(error.is_host());
        }
        assert_eq!(
            errors.clone().map(|e| e.status()),
            [504, 503, 503, 502, 502, 503]
        );
        for &kind in ErrorKind::ALL {
            let error = CallError::from(PluginError::new(kind, 418, "m".into()));
            assert!(kinds.contains(&error.kind()));
            assert!(!error.is_host());
        }
        let mut unique = kinds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len());
        assert_eq!(kinds.len(), KIND_COUNT);
        for error in errors {
            assert_eq!(kinds[error.kind_index()], error.kind());
        }
        assert_eq!(kinds[CANCELLED_INDEX], "cancelled");
        assert_eq!(kinds[OVERLOADED_INDEX], "overloaded");
        assert_eq!(kinds[CIRCUIT_OPEN_INDEX], "circuit_open");
        for &kind in ErrorKind::ALL {
            let error = CallError::from(PluginError::new(kind, 418, "m".into()));
            assert_eq!(kinds[error.kind_index()], error.kind());
        }
    }
}

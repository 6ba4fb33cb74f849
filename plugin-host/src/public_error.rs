//! The body a client sees when a call fails: the same JSON shape for every error, and no internals.
//!
//! A public error body says which plugin, what kind of failure, a message, and a request id:
//!
//! ```json
//! {"error": {"plugin": "kv-store", "kind": "not_found", "message": "no key \"x\"", "request_id": "…"}}
//! ```
//!
//! The message is the plugin's own only for the client errors a plugin returns on purpose (400,
//! 401, 403, 404, a 4xx status): those are written for the client. Every other failure — a panic,
//! a crash, a timeout, an open breaker, an initialization that failed, an invalid response — gets a
//! fixed message per kind, because its details (a child's output, a file path, a config value) are
//! for the operator. The details go to the log, with the same request id, and to the admin API.
//! Every message passes through [`redact`].

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use backworks_plugin_sdk::{PluginError, Response};

use crate::CallError;
use crate::redact::redact;

/// The longest `x-request-id` taken from a request; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The message a client sees for `error`: the plugin's own for a client error it chose, a fixed
/// one for anything else.
pub fn public_message(error: &CallError) -> std::borrow::Cow<'_, str> {
    let fixed = match error {
        CallError::Plugin(
            PluginError::BadRequest(m)
            | PluginError::Unauthorized(m)
            | PluginError::Forbidden(m)
            | PluginError::NotFound(m),
        ) => return redact(m),
        CallError::Plugin(PluginError::Status { status, message })
            if (400..500).contains(status) =>
        {
            return redact(message);
        }
        CallError::Timeout(_) => "the plugin did not answer in time",
        CallError::Overloaded(_) => "the plugin is busy; try again later",
        CallError::CircuitOpen { .. } => "the plugin is failing; calls to it are paused",
        CallError::Unavailable(_) | CallError::Plugin(PluginError::Unavailable(_)) => {
            "the plugin is not available"
        }
        CallError::Crashed(_) => "the plugin stopped while serving the request",
        CallError::InvalidResponse(_) => "the plugin gave an invalid response",
        CallError::Plugin(PluginError::Cancelled) => "the call was cancelled",
        _ => "the plugin failed",
    };
    std::borrow::Cow::Borrowed(fixed)
}

/// The request's id: `given` (its `x-request-id` header) when that is short printable ASCII,
/// otherwise a new one made by the host.
pub fn request_id(given: Option<&str>) -> String {
    let given = given.filter(|id| {
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    });
    match given {
        Some(id) => id.to_owned(),
        None => new_request_id(),
    }
}

/// A new request id: a per-process random prefix and a counter.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0));
    format!(
        "bw-{prefix:016x}-{:x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The response for `plugin`'s `error`: its status and the public body (see the module docs), with
/// `Retry-After` when an open breaker refused the call. The error's details are logged with the
/// plugin's name and the request id (refusals — breaker, load shedding — at debug level, since
/// they come in floods and are counted in the metrics).
///
/// ```
/// use backworks_plugin_host::CallError;
/// use backworks_plugin_host::error_response;
/// use backworks_plugin_sdk::PluginError;
/// let no_key = CallError::from(PluginError::Unauthorized("no key".into()));
/// let res = error_response("auth", &no_key, None);
/// assert_eq!(res.status, 401);
/// let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
/// assert_eq!(body["error"]["plugin"], "auth");
/// assert_eq!(body["error"]["message"], "no key");
/// assert!(body["error"]["request_id"].is_string());
/// ```
pub fn error_response(plugin: &str, error: &CallError, request_id: Option<&str>) -> Response {
    let status = error.status();
    let id = self::request_id(request_id);
    let kind = error.kind();
    match error {
        CallError::CircuitOpen { .. } | CallError::Overloaded(_) | CallError::Unavailable(_) => {
            tracing::debug!(
                plugin,
                kind,
                request_id = id,
                "plugin call refused: {error}"
            );
        }
        _ if status >= 500 => {
            tracing::warn!(plugin, kind, request_id = id, "plugin call failed: {error}");
        }
        _ => {}
    }
    let response = Response::json(&serde_json::json!({
        "error": {
            "plugin": plugin,
            "kind": kind,
            "message": public_message(error),
            "request_id": id,
        }
    }))
    .with_status(status);
    match error {
        CallError::CircuitOpen {
            retry_after_secs, ..
        } => response.with_header("retry-after", retry_after_secs.to_string()),
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_client_error_keeps_its_message_a_crash_does_not() {
        let not_found = CallError::from(PluginError::NotFound("no key \"x\"".into()));
        assert_eq!(public_message(&not_found), "no key \"x\"");
        assert_eq!(
            public_message(&CallError::Crashed("child wrote: /srv/secret.txt".into())),
            "the plugin stopped while serving the request"
        );
    }

    fn body(response: &Response) -> serde_json::Value {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn internals_stay_out_of_the_body() {
        for error in [
            PluginError::Internal("/srv/app/config.toml: permission denied".into()).into(),
            PluginError::Config("key sk-live-123 rejected".into()).into(),
            CallError::Crashed("stdout: garbage".into()),
            CallError::Unavailable("init failed: /etc/x".into()),
            PluginError::Panic("at src/lib.rs:10".into()).into(),
            PluginError::Status {
                status: 503,
                message: "db at 10.0.0.5 down".into(),
            }
            .into(),
        ] {
            let text = String::from_utf8(error_response("p", &error, None).body).unwrap();
            assert!(!text.contains('/') || !text.contains("srv"), "{text}");
            assert!(!text.contains("sk-live"), "{text}");
            assert!(
                !text.contains("garbage") && !text.contains("10.0.0.5"),
                "{text}"
            );
            assert!(!text.contains("src/lib.rs"), "{text}");
        }
    }

    #[test]
    fn client_errors_keep_their_message_redacted() {
        crate::redact::add_secrets(["s3cr3t-value"]);
        let error = CallError::from(PluginError::BadRequest("key s3cr3t-value is wrong".into()));
        let response = error_response("p", &error, None);
        assert_eq!(response.status, 400);
        assert_eq!(
            body(&response)["error"]["message"],
            "key [redacted] is wrong"
        );
    }

    #[test]
    fn request_ids_come_from_the_request_or_are_made() {
        assert_eq!(request_id(Some("abc-1")), "abc-1");
        assert!(request_id(Some("bad\"id")).starts_with("bw-"));
        assert!(request_id(Some(&"x".repeat(200))).starts_with("bw-"));
        assert_ne!(request_id(None), request_id(None));
        let response = error_response("p", &CallError::Timeout("x".into()), Some("abc-1"));
        assert_eq!(body(&response)["error"]["kind"], "timeout");
        assert_eq!(body(&response)["error"]["request_id"], "abc-1");
    }
}

//! Hook chains around an endpoint: `before_request` in order, `after_response` in reverse.

use std::sync::Arc;

use backworks_plugin_sdk::{HookAction, PluginError, Request, Response};

use crate::plugin::Plugin;

/// One plugin's place in a chain.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The plugin.
    pub plugin: Arc<dyn Plugin>,
    /// Whether its `before_request` runs.
    pub before_request: bool,
    /// Whether its `after_response` runs.
    pub after_response: bool,
}

/// The hooks of one endpoint, in `before_request` order.
///
/// `before_request` hooks run first to last; the first that answers early stops the chain (neither
/// later hooks nor the endpoint run). Then `after_response` hooks run last to first, over the
/// response — whether it came from the endpoint, an early answer or an error — but only for hooks
/// at or before the one that answered, so every hook that saw the request also sees its response.
#[derive(Debug, Clone, Default)]
pub struct HookChain {
    hooks: Vec<Hook>,
    any_after: bool,
}

impl HookChain {
    /// A chain of these hooks, in `before_request` order.
    pub fn new(hooks: Vec<Hook>) -> HookChain {
        let any_after = hooks.iter().any(|h| h.after_response);
        HookChain { hooks, any_after }
    }

    /// Whether the chain has no hooks.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Runs the chain around `endpoint`, which serves the (possibly changed) request.
    pub async fn run<F, Fut>(&self, mut request: Request, endpoint: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        let mut reached = self.hooks.len();
        let mut early = None;
        for (index, hook) in self.hooks.iter().enumerate() {
            if !hook.before_request {
                continue;
            }
            match hook.plugin.before_request(&request).await {
                Ok(HookAction::Continue) => {}
                Ok(HookAction::ContinueWith(changed)) => request = changed,
                Ok(HookAction::Respond(response)) => {
                    early = Some(response);
                    reached = index + 1;
                    break;
                }
                Err(error) => {
                    early = Some(error_response(&hook.plugin.info().name, &error));
                    reached = index + 1;
                    break;
                }
            }
        }
        if !self.any_after {
            return match early {
                Some(response) => response,
                None => endpoint(request).await,
            };
        }
        let mut response = match early {
            Some(response) => response,
            None => endpoint(request.clone()).await,
        };
        for hook in self.hooks[..reached].iter().rev() {
            if !hook.after_response {
                continue;
            }
            response = match hook.plugin.after_response(&request, response).await {
                Ok(changed) => changed,
                Err(error) => error_response(&hook.plugin.info().name, &error),
            };
        }
        response
    }
}

/// The response for a plugin's error: its status and `{"error": {"plugin", "kind", "message"}}`.
/// Panics and internal errors are logged with the plugin's name.
///
/// ```
/// use backworks_plugin_host::hooks::error_response;
/// use backworks_plugin_sdk::PluginError;
/// let res = error_response("auth", &PluginError::Unauthorized("no key".into()));
/// assert_eq!(res.status, 401);
/// let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
/// assert_eq!(body["error"]["plugin"], "auth");
/// ```
///
/// A refusal by the open circuit breaker carries `Retry-After` (whole seconds until the next probe).
pub fn error_response(plugin: &str, error: &PluginError) -> Response {
    let status = error.status();
    match error {
        // Refusals are counted in the metrics; logging each one would flood the log exactly when
        // a plugin is in trouble (the breaker logs its own transitions).
        PluginError::CircuitOpen { .. }
        | PluginError::Overloaded(_)
        | PluginError::Unavailable(_) => {
            tracing::debug!(plugin, kind = error.kind(), "plugin call refused: {error}");
        }
        _ if status >= 500 => {
            tracing::warn!(plugin, kind = error.kind(), "plugin call failed: {error}");
        }
        _ => {}
    }
    let response = Response::json(&serde_json::json!({
        "error": {
            "plugin": plugin,
            "kind": error.kind(),
            "message": error.message(),
        }
    }))
    .with_status(status);
    match error {
        PluginError::CircuitOpen {
            retry_after_secs, ..
        } => response.with_header("retry-after", retry_after_secs.to_string()),
        _ => response,
    }
}

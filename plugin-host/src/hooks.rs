//! Hook chains around an endpoint: `before_request` in order, `after_response` in reverse, and
//! observers after the response has left.
//!
//! What a failing hook costs is its [`OnFailure`]; see there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backworks_plugin_sdk::{Request, RequestEdit, Response, ResponseEdit};

use crate::CallError;
use crate::guard::Guarded;
use crate::observe::Observer;
use crate::plugin::Plugin;
use crate::public_error::error_response;

/// What a hook's failure does to the request.
///
/// A hook *fails* when its call returns an error: the plugin's own (other than a 4xx it chose), a
/// panic, a timeout, or a refusal by its guard (open breaker, concurrency limit). An early answer
/// ([`RequestEdit::Respond`], `HookAction::Respond` of a copying hook) or a 4xx error (an auth
/// check's 401) is not a failure: it goes to the client whatever the policy. What a failure does
/// is the hook's [`OnFailure`]:
///
/// | hook point | default | [`OnFailure::Reject`] | [`OnFailure::Skip`] |
/// |---|---|---|---|
/// | `before_request` | `Reject` | the client gets the hook's error; the endpoint does not run | the chain goes on as if the hook had said continue |
/// | `after_response` | `Skip` | the client gets the hook's error instead of the response | the response goes out as it stood before this hook |
/// | observe | — | never reaches the client | never reaches the client |
///
/// Every failure is counted in the plugin's call statistics (by its guard) and in the chain's
/// [`HookCounts`], and logged with the plugin's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The client gets the hook's error (fail closed).
    Reject,
    /// The hook is passed over (fail open).
    Skip,
}

impl OnFailure {
    /// `"reject"` or `"skip"`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Reject => "reject",
            OnFailure::Skip => "skip",
        }
    }

    /// The default for `before_request`: an auth check that cannot run must not let requests
    /// through.
    pub const BEFORE_REQUEST: OnFailure = OnFailure::Reject;

    /// The default for `after_response`: a response the endpoint already produced (a write that
    /// happened) is not turned into an error.
    pub const AFTER_RESPONSE: OnFailure = OnFailure::Skip;
}

/// How often one plugin's hooks failed, by what happened next. Shared by every chain the plugin
/// is in.
#[derive(Debug, Default)]
pub struct HookCounts {
    /// Failures that became the client's answer.
    pub rejected: AtomicU64,
    /// Failures passed over by an `on_failure: skip` policy.
    pub skipped: AtomicU64,
}

/// One plugin's place in a chain.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The plugin, behind its call guard (called as such, so no call boxes its future).
    pub plugin: Arc<Guarded>,
    /// Whether its `before_request` runs, and what its failure does.
    pub before_request: Option<OnFailure>,
    /// Whether its `after_response` runs, and what its failure does.
    pub after_response: Option<OnFailure>,
    /// Its observe subscription, when it has one.
    pub observer: Option<Arc<Observer>>,
    /// Its failure counts.
    pub counts: Arc<HookCounts>,
}

/// The hooks of one endpoint, in `before_request` order.
///
/// `before_request` hooks run first to last; the first that answers early (or fails, under
/// [`OnFailure::Reject`]) stops the chain: neither later hooks nor the endpoint run. Then
/// `after_response` hooks run last to first, over the response — whether it came from the
/// endpoint, an early answer or an error — but only for hooks at or before the one that answered,
/// so every hook that saw the request also sees its response. Last, every observer is handed a copy
/// of the request and the final response.
#[derive(Debug, Clone, Default)]
pub struct HookChain {
    hooks: Vec<Hook>,
    any_after: bool,
    observers: Vec<Arc<Observer>>,
}

impl HookChain {
    /// A chain of these hooks, in `before_request` order.
    pub fn new(hooks: Vec<Hook>) -> HookChain {
        let any_after = hooks.iter().any(|h| h.after_response.is_some());
        let observers = hooks.iter().filter_map(|h| h.observer.clone()).collect();
        HookChain {
            hooks,
            any_after,
            observers,
        }
    }

    /// Whether the chain has no hooks.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Runs the chain around `endpoint`, which serves the (possibly changed) request.
    ///
    /// A library hook that never waits (ABI 1.3's `_now` entries) is called at once, the request
    /// and the response lent for the call only. Others get the request and the response shared
    /// (`Arc`; the response is shared only for such a call), so that a library hook can read them
    /// in place while it waits; a header edit is applied to the chain's own copy, which is cloned
    /// only if a hook call still holds it (never, once its call is over). The endpoint gets the
    /// request shared too ([`Plugin::handle_shared`](crate::Plugin::handle_shared) serves it
    /// without a copy): the chain's only one when no `after_response` hook or observer needs it
    /// afterwards.
    pub async fn run<F, Fut>(&self, request: Request, endpoint: F) -> Response
    where
        F: FnOnce(Arc<Request>) -> Fut,
        Fut: Future<Output = Response>,
    {
        let mut request = Arc::new(request);
        let mut reached = self.hooks.len();
        let mut early = None;
        for (index, hook) in self.hooks.iter().enumerate() {
            let Some(on_failure) = hook.before_request else {
                continue;
            };
            // A library whose hooks never wait answers at once, without a future (ABI 1.3).
            let answer = match hook.plugin.before_request_now(&request) {
                Some(answer) => answer,
                None => hook.plugin.before_request_shared(request.clone()).await,
            };
            match answer {
                Ok(RequestEdit::Continue) => {}
                Ok(RequestEdit::SetHeader(name, value)) => {
                    Arc::make_mut(&mut request).headers.insert(name, value);
                }
                Ok(RequestEdit::SetHeaders(headers)) => {
                    Arc::make_mut(&mut request).headers.set_all(headers);
                }
                Ok(RequestEdit::Replace(changed)) => request = Arc::new(changed),
                Ok(RequestEdit::Respond(response)) => {
                    early = Some(response);
                    reached = index + 1;
                    break;
                }
                Err(error) => {
                    if let Some(response) =
                        hook.failed("before_request", on_failure, &error, &request)
                    {
                        early = Some(response);
                        reached = index + 1;
                        break;
                    }
                }
            }
        }
        if !self.any_after && self.observers.is_empty() {
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
            let Some(on_failure) = hook.after_response else {
                continue;
            };
            let answer = match hook.plugin.after_response_now(&request, &response) {
                Some(answer) => answer,
                None => {
                    // Shared for this call only: the hook may read it in place while it waits.
                    let shared = Arc::new(response);
                    let answer = hook
                        .plugin
                        .after_response_shared(request.clone(), shared.clone())
                        .await;
                    response = Arc::unwrap_or_clone(shared);
                    answer
                }
            };
            match answer {
                Ok(ResponseEdit::Keep) => {}
                Ok(ResponseEdit::SetHeader(name, value)) => response.headers.insert(name, value),
                Ok(ResponseEdit::SetHeaders(headers)) => response.headers.set_all(headers),
                Ok(ResponseEdit::Replace(changed)) => response = changed,
                Err(error) => {
                    if let Some(refusal) =
                        hook.failed("after_response", on_failure, &error, &request)
                    {
                        response = refusal;
                    }
                }
            }
        }
        for observer in &self.observers {
            observer.offer(|| (Request::clone(&request), response.clone()));
        }
        response
    }
}

impl Hook {
    /// Counts and logs a failure of this hook at `point`; the error response when the policy
    /// rejects, `None` when it skips.
    fn failed(
        &self,
        point: &'static str,
        on_failure: OnFailure,
        error: &CallError,
        request: &Request,
    ) -> Option<Response> {
        let plugin = &self.plugin.info().name;
        // A 4xx the plugin returned on purpose (an auth check's 401) is its answer, not a
        // failure: it goes to the client whatever the policy.
        if error.is_client_error() {
            return Some(error_response(
                plugin,
                error,
                request.header("x-request-id"),
            ));
        }
        match on_failure {
            OnFailure::Reject => {
                self.counts.rejected.fetch_add(1, Ordering::Relaxed);
                Some(error_response(
                    plugin,
                    error,
                    request.header("x-request-id"),
                ))
            }
            OnFailure::Skip => {
                let skipped = self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                // Refusals come in floods while a plugin is in trouble: log the first and then
                // one per power of two; everything else once each.
                let refusal = matches!(
                    error,
                    CallError::CircuitOpen { .. } | CallError::Overloaded(_)
                );
                if !refusal || skipped.is_power_of_two() || skipped == 0 {
                    tracing::warn!(
                        plugin,
                        hook = point,
                        kind = error.kind(),
                        skipped = skipped + 1,
                        "hook failed and was skipped (on_failure: skip): {error}"
                    );
                }
                None
            }
        }
    }
}

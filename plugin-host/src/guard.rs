//! The call guard: [`Guarded`] wraps any [`Plugin`] and puts its policy around every call — the
//! circuit breaker, the concurrency limit, the timeout and the response-size limit — and counts
//! every call in its [`PluginStats`].
//!
//! For `handle`, `before_request` and `after_response`, in this order:
//!
//! 1. **Breaker.** An open breaker refuses the call at once with [`CallError::CircuitOpen`]
//!    (503, with `retry_after_secs` for `Retry-After`); the plugin is not called.
//! 2. **Concurrency.** Past `max_concurrency` calls in flight the call is shed at once with
//!    [`CallError::Overloaded`] (503): no queue.
//! 3. **Timeout.** A call still running at its deadline is answered [`CallError::Timeout`] (504)
//!    and its future is dropped, which cancels a library plugin's task. A call that answers on its
//!    first poll never touches the timer.
//! 4. **Response size.** A response whose body is over `max_response_body` (from `handle`,
//!    `after_response`, or a hook's early answer) becomes [`CallError::InvalidResponse`] (502).
//!
//! `health_check` gets the timeout only (a late answer is `Unhealthy`); `initialize` and
//! `shutdown` go straight through.
//!
//! # What the breaker counts as a failure
//! Errors, except those a plugin returns on purpose for the client (`BadRequest`, `Unauthorized`,
//! `Forbidden`, `NotFound`, a 4xx `Status`); panics; timeouts; invalid responses; and, with
//! `breaker.count_5xx`, a response with a status of 500 or more from `handle` or a hook's early
//! answer. (An `after_response` hook mostly passes on the endpoint's response, so its status is not
//! held against the hook.) Shed and refused calls do not feed the breaker, and a call dropped by its
//! caller counts for nothing.
//!
//! # The limit of timeouts in process
//! A plugin running in the host process that blocks its thread (a busy loop, a blocking syscall,
//! `std::thread::sleep`) cannot be pre-empted: the timeout can only fire when the plugin yields.
//! Such a call runs to its end; the guard then sees that it ended past its deadline, throws its
//! answer away, answers 504 anyway, and counts it as an *overrun* (`overruns` in the stats, and a
//! `timed_out` lifecycle event saying the call blocked). Meanwhile it held a host worker thread.
//! A plugin that may block should run with `isolation: process`, where a deadline is enforced by
//! killing the child.
//!
//! # Cost
//! A successful call through a Closed breaker takes no lock, allocates nothing (through the
//! inherent methods; the [`Plugin`] methods box the future once, as `async_trait` does) and never
//! touches the timer if the plugin answers at once: two clock reads, five relaxed atomic adds (in
//! flight up and down, a latency bucket and sum, the breaker's window) and four atomic loads (the
//! breaker's state twice, its window slot, its failure streak). Timed-out calls record a lifecycle
//! event at most once a second.
//!
//! The guard allocates nothing of its own, but the wrapped plugin's [`Plugin`] methods box their
//! future. A library plugin ([`Plugin::as_library`]) with ABI 1.2's lent entries is called
//! without them: through [`Guarded::before_request_shared`], [`Guarded::after_response_shared`]
//! and [`Guarded::handle_shared`] the guard makes the lent call itself and holds its small,
//! hand-written future inline, so a call that answers at once allocates nothing and is accounted
//! for in the same poll; one that waits is awaited under the deadline as any other, and dropping
//! the guard's future cancels it as dropping the box would. ([`Guarded::handle`] still takes the
//! box: held inline, the call would grow the future of every server request without hooks past
//! the allocator's per-thread cache, which costs more than the box.) A library whose calls never
//! wait (ABI 1.3's hook `_now` entries, 1.4's `handle_now`) is called through
//! [`Guarded::handle_now`], [`Guarded::before_request_now`] and [`Guarded::after_response_now`]:
//! no future at all, the same admission and accounting.

use std::future::poll_fn;
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backworks_plugin_sdk::{Health, HookAction, Request, RequestEdit, Response, ResponseEdit};
use futures_util::future::Either;

use crate::CallError;
use crate::breaker::{
    BreakerSnapshot, BreakerState, CircuitBreaker, Outcome, Permit, Refusal, Transition,
};
use crate::call_clock::CallClock;
use crate::lifecycle::{EventKind, Lifecycle};
use crate::plugin::{Plugin, PluginInfo};
use crate::policy::CallPolicy;
use crate::stats::PluginStats;

/// The boxed future of a [`Plugin`] method, as `async_trait` writes it.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// At most one `timed_out` lifecycle event per this long.
const TIMEOUT_EVENT_EVERY: Duration = Duration::from_secs(1);

/// A plugin behind its call policy; itself a [`Plugin`], with the same [`info`](Plugin::info).
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<dyn Plugin>,
    policy: CallPolicy,
    lifecycle: Arc<Lifecycle>,
    breaker: CircuitBreaker,
    stats: Arc<PluginStats>,
    /// Call times are kept as durations since this clock's origin (a cheap TSC read).
    clock: CallClock,
    /// When the last `timed_out` event was recorded: nanoseconds since the clock's origin, plus
    /// one (0: never).
    last_timeout_event: AtomicU64,
}

impl Guarded {
    /// Wraps `inner` in `policy`; breaker transitions and timeouts are recorded on `lifecycle`.
    pub fn new(inner: Arc<dyn Plugin>, policy: CallPolicy, lifecycle: Arc<Lifecycle>) -> Guarded {
        Guarded {
            breaker: CircuitBreaker::new(&policy.breaker),
            inner,
            policy,
            lifecycle,
            stats: Arc::new(PluginStats::new()),
            clock: CallClock::new(),
            last_timeout_event: AtomicU64::new(0),
        }
    }

    /// The wrapped plugin.
    pub fn inner(&self) -> &Arc<dyn Plugin> {
        &self.inner
    }

    /// The policy applied.
    pub fn policy(&self) -> &CallPolicy {
        &self.policy
    }

    /// The lifecycle events are recorded on.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The plugin's call counters.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The breaker's state and counters now (consecutive failures, times opened, `Retry-After`).
    pub fn breaker_snapshot(&self) -> BreakerSnapshot {
        self.breaker.snapshot(self.clock.now())
    }

    /// The breaker itself.
    #[cfg(test)]
    pub(crate) fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// [`Plugin::handle`] under the policy, without boxing the future: a caller holding the
    /// concrete `Guarded` saves the allocation the trait's method makes per call. (The wrapped
    /// plugin's future is created at once but polled only if the call is let through.)
    ///
    /// Unlike the shared calls, this one boxes a library plugin's lent call too: held inline, it
    /// would make the future of every server request without hooks too large for the
    /// allocator's per-thread cache, which costs more than the box.
    pub fn handle(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, CallError>> + Send + '_ {
        let call = self.inner.handle(request);
        self.run(|| call, |response| self.check(response, true))
    }

    /// [`Plugin::before_request`] under the policy, without boxing the future.
    pub fn before_request<'a>(
        &'a self,
        request: &'a Request,
    ) -> impl Future<Output = Result<HookAction, CallError>> + Send + 'a {
        self.run(
            || self.inner.before_request(request),
            |action| match action {
                HookAction::Respond(response) => self.check(response, true),
                HookAction::Continue | HookAction::ContinueWith(_) => Ok(Outcome::Success),
            },
        )
    }

    /// [`Plugin::after_response`] under the policy, without boxing the future.
    pub fn after_response<'a>(
        &'a self,
        request: &'a Request,
        response: &'a Response,
    ) -> impl Future<Output = Result<Response, CallError>> + Send + 'a {
        self.run(
            || self.inner.after_response(request, response),
            |response| self.check(response, false),
        )
    }

    /// [`Plugin::handle_shared`] under the policy, without boxing the guard's future; as
    /// [`handle`](Self::handle), a library plugin's lent call is held inline.
    pub fn handle_shared(
        &self,
        request: Arc<Request>,
    ) -> impl Future<Output = Result<Response, CallError>> + Send + '_ {
        let call = move || match self.inner.as_library() {
            Some(library) => match library.lent_handle_shared(request) {
                Ok(call) => Either::Left(call),
                Err(request) => Either::Right(self.inner.handle_shared(request)),
            },
            None => Either::Right(self.inner.handle_shared(request)),
        };
        self.run(call, |response| self.check(response, true))
    }

    /// [`Plugin::before_request_shared`] under the policy, without boxing the guard's future; a
    /// library plugin's lent hook call is held inline (see [`Plugin::as_library`]).
    pub fn before_request_shared(
        &self,
        request: Arc<Request>,
    ) -> impl Future<Output = Result<RequestEdit, CallError>> + Send + '_ {
        let call = move || match self.inner.as_library() {
            Some(library) => match library.lent_before_request(request) {
                Ok(call) => Either::Left(call),
                Err(request) => Either::Right(self.inner.before_request_shared(request)),
            },
            None => Either::Right(self.inner.before_request_shared(request)),
        };
        self.run(call, |edit| self.judge_request_edit(edit))
    }

    /// [`Plugin::after_response_shared`] under the policy, without boxing the guard's future; a
    /// library plugin's lent hook call is held inline. A header edit keeps the body, so only a
    /// replacement is held to the size limit.
    pub fn after_response_shared(
        &self,
        request: Arc<Request>,
        response: Arc<Response>,
    ) -> impl Future<Output = Result<ResponseEdit, CallError>> + Send + '_ {
        let call = move || match self.inner.as_library() {
            Some(library) => match library.lent_after_response(request, response) {
                Ok(call) => Either::Left(call),
                Err((request, response)) => {
                    Either::Right(self.inner.after_response_shared(request, response))
                }
            },
            None => Either::Right(self.inner.after_response_shared(request, response)),
        };
        self.run(call, |edit| self.judge_response_edit(edit))
    }

    /// An endpoint call that answers at once, under the policy: `None` when the plugin cannot
    /// make one (then [`Guarded::handle`] or [`Guarded::handle_shared`] makes the call). A library
    /// whose endpoint never waits (ABI 1.4's `handle_now`) makes it, and so does a built-in with
    /// `HANDLE_SYNC` ([`Plugin::handle_now`]): no future, the request lent for the call only.
    /// Admitted, timed, counted and judged as any call, as [`Guarded::before_request_now`] is.
    pub fn handle_now(&self, request: &Request) -> Option<Result<Response, CallError>> {
        if !self.inner.answers_now() {
            return None;
        }
        Some(self.run_now(
            || {
                self.inner.handle_now(request).unwrap_or_else(|| {
                    Err(CallError::InvalidResponse(format!(
                        "plugin `{}` cannot answer at once",
                        self.name()
                    )))
                })
            },
            |response| self.check(response, true),
        ))
    }

    /// A `before_request` hook call that answers at once, under the policy: `None` when the
    /// plugin cannot make one (then [`Guarded::before_request_shared`] makes the call). A library
    /// whose hooks never wait (ABI 1.3's `before_request_now`) makes it: no future, the request
    /// lent for the call only, the headers the hook sets copied straight into the edit. Admitted,
    /// timed, counted and judged as any call; a deadline cannot cut it short, so one that overran
    /// it is a timeout, as a call that blocked in its first poll is.
    pub fn before_request_now(&self, request: &Request) -> Option<Result<RequestEdit, CallError>> {
        let library = self
            .inner
            .as_library()
            .filter(|library| library.has_before_request_now())?;
        Some(self.run_now(
            || library.now_before_request(request),
            |edit| self.judge_request_edit(edit),
        ))
    }

    /// An `after_response` hook call that answers at once, under the policy, as
    /// [`Guarded::before_request_now`]: `None` when the plugin cannot make one (then
    /// [`Guarded::after_response_shared`] makes the call).
    pub fn after_response_now(
        &self,
        request: &Request,
        response: &Response,
    ) -> Option<Result<ResponseEdit, CallError>> {
        let library = self
            .inner
            .as_library()
            .filter(|library| library.has_after_response_now())?;
        Some(self.run_now(
            || library.now_after_response(request, response),
            |edit| self.judge_response_edit(edit),
        ))
    }

    /// Judges a `before_request` answer: an early response is held to the size limit, and its
    /// 5xx counts as the endpoint's would.
    fn judge_request_edit(&self, edit: &RequestEdit) -> Result<Outcome, CallError> {
        match edit {
            RequestEdit::Respond(response) => self.check(response, true),
            RequestEdit::Continue
            | RequestEdit::SetHeader(..)
            | RequestEdit::SetHeaders(_)
            | RequestEdit::Replace(_) => Ok(Outcome::Success),
        }
    }

    /// Judges an `after_response` answer: a header edit keeps the body, so only a replacement is
    /// held to the size limit.
    fn judge_response_edit(&self, edit: &ResponseEdit) -> Result<Outcome, CallError> {
        match edit {
            ResponseEdit::Replace(response) => self.check(response, false),
            ResponseEdit::Keep | ResponseEdit::SetHeader(..) | ResponseEdit::SetHeaders(_) => {
                Ok(Outcome::Success)
            }
        }
    }

    fn name(&self) -> &str {
        &self.inner.info().name
    }

    /// Runs the call `make` makes under the policy (it is made only if the call is let through,
    /// and held in this future: a library plugin's lent call is pinned here, not boxed); `judge`
    /// looks at a successful answer.
    async fn run<T, Fut>(
        &self,
        make: impl FnOnce() -> Fut,
        judge: impl FnOnce(&T) -> Result<Outcome, CallError>,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, CallError>>,
    {
        let (start, in_flight) = self.admit()?;
        let timeout = self.policy.timeout;
        // Asked for only when the call waits: the std clock that tokio's timers need is read only
        // then. A deadline too far to represent is no deadline.
        let deadline = || {
            let limit = timeout?;
            let spent = self.clock.now().saturating_sub(start);
            Instant::now().checked_add(limit.saturating_sub(spent))
        };
        // The first poll inline (a call that answers at once never registers a timer); written
        // out here rather than in a nested `async fn`, whose state and moves cost every call.
        let mut call = pin!(make());
        let answer = match poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(answer) => Some(answer),
            Poll::Pending => match deadline() {
                Some(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    // Boxed: a timer is large (and cache-line aligned), and only a call that waits
                    // needs one; inline, it would grow every call's future.
                    Box::pin(tokio::time::timeout_at(deadline, call)).await.ok()
                }
                None => Some(call.await),
            },
        };
        self.settle(start, in_flight, answer, judge)
    }

    /// Runs `call`, which answers at once (it never waits), under the policy, as [`Guarded::run`]
    /// runs a call whose first poll answers: no future, no timer.
    fn run_now<T>(
        &self,
        call: impl FnOnce() -> Result<T, CallError>,
        judge: impl FnOnce(&T) -> Result<Outcome, CallError>,
    ) -> Result<T, CallError> {
        let (start, in_flight) = self.admit()?;
        let answer = call();
        self.settle(start, in_flight, Some(answer), judge)
    }

    /// Lets a call in, or refuses it (open breaker, concurrency limit): the time it started (since
    /// the clock's origin) and its place in flight.
    fn admit(&self) -> Result<(Duration, InFlight<'_>), CallError> {
        let start = self.clock.now();
        let permit = match self.breaker.try_acquire(start) {
            Ok(admission) => {
                if let Some(transition) = admission.transition {
                    self.report(transition);
                }
                admission.permit
            }
            Err(refusal) => return Err(self.refused(refusal)),
        };
        if !self.stats.try_enter(self.policy.max_concurrency) {
            self.breaker.release(permit);
            return Err(self.shed());
        }
        Ok((
            start,
            InFlight {
                guard: self,
                permit: Some(permit),
            },
        ))
    }

    /// Ends a call that started at `start`: its answer (`None`: its deadline passed) judged,
    /// timed, counted and reported to the breaker.
    fn settle<T>(
        &self,
        start: Duration,
        mut in_flight: InFlight<'_>,
        answer: Option<Result<T, CallError>>,
        judge: impl FnOnce(&T) -> Result<Outcome, CallError>,
    ) -> Result<T, CallError> {
        let timeout = self.policy.timeout;
        let end = self.clock.now();
        let took = end.saturating_sub(start);
        let permit = in_flight.permit.take();
        let (result, outcome) = match answer {
            None => (Err(self.timed_out(end, took, false)), Outcome::Failure),
            Some(_) if timeout.is_some_and(|limit| took > limit) => {
                (Err(self.timed_out(end, took, true)), Outcome::Failure)
            }
            Some(Ok(value)) => match judge(&value) {
                Ok(outcome) => (Ok(value), outcome),
                Err(error) => (Err(error), Outcome::Failure),
            },
            Some(Err(error)) => {
                let outcome = if is_failure(&error) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                (Err(error), outcome)
            }
        };
        self.stats.record_call(took, result.as_ref().err());
        let transition = permit.and_then(|p| self.breaker.on_result(p, outcome, end));
        if let Some(transition) = transition {
            self.report(transition);
        }
        result
    }

    /// Judges a response: over the size limit it is an error; with `count_status`, a 5xx is a
    /// failure for the breaker when the policy says so.
    fn check(&self, response: &Response, count_status: bool) -> Result<Outcome, CallError> {
        let limit = self.policy.max_response_body;
        if response.body.len() > limit {
            return Err(CallError::InvalidResponse(format!(
                "plugin `{}` answered a body of {} bytes, over the limit of {limit}",
                self.name(),
                response.body.len()
            )));
        }
        if count_status && self.policy.breaker.count_5xx && response.status >= 500 {
            Ok(Outcome::Failure)
        } else {
            Ok(Outcome::Success)
        }
    }

    fn refused(&self, refusal: Refusal) -> CallError {
        self.stats.record_breaker_rejected();
        let state = match refusal.state {
            BreakerState::HalfOpen => "half-open",
            _ => "open",
        };
        CallError::CircuitOpen {
            message: format!(
                "circuit breaker of plugin `{}` is {state} ({})",
                self.name(),
                refusal.reason
            ),
            retry_after_secs: refusal.retry_after_secs,
        }
    }

    fn shed(&self) -> CallError {
        self.stats.record_shed();
        CallError::Overloaded(format!(
            "plugin `{}` is at its limit of {} concurrent calls",
            self.name(),
            self.policy.max_concurrency.unwrap_or_default()
        ))
    }

    fn timed_out(&self, now: Duration, took: Duration, overrun: bool) -> CallError {
        let limit = self.policy.timeout.unwrap_or_default();
        self.stats.record_timeout();
        if overrun {
            self.stats.record_overrun();
        }
        if self.timeout_event_due(now) {
            let stats = self.stats.snapshot();
            let detail = if overrun {
                format!(
                    "a call blocked its thread for {took:?}, past its {limit:?} deadline; in-process \
                     code cannot be pre-empted (run the plugin with `isolation: process`) \
                     (overruns so far: {})",
                    stats.overruns
                )
            } else {
                format!(
                    "a call did not answer within {limit:?} and was dropped (timeouts so far: {})",
                    stats.timeouts
                )
            };
            self.lifecycle.record(EventKind::TimedOut, detail);
        }
        CallError::Timeout(format!(
            "plugin `{}` did not answer within {limit:?}",
            self.name()
        ))
    }

    /// Whether a `timed_out` event may be recorded at `now`: one per [`TIMEOUT_EVENT_EVERY`], so a
    /// hanging plugin does not flood the history.
    fn timeout_event_due(&self, now: Duration) -> bool {
        // Nanoseconds since the clock's origin, plus one: 0 means "never".
        let stamp = u64::try_from(now.as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last_timeout_event.load(Ordering::Relaxed);
        let every = TIMEOUT_EVENT_EVERY.as_nanos() as u64;
        if last != 0 && stamp.saturating_sub(last) < every {
            return false;
        }
        self.last_timeout_event
            .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn report(&self, transition: Transition) {
        self.lifecycle
            .record(event_of(transition.to), transition.detail);
    }
}

/// The lifecycle event a breaker moving to `state` is recorded as: the breaker is a pure state
/// machine, and its caller turns its transitions into events.
fn event_of(state: BreakerState) -> EventKind {
    match state {
        BreakerState::Closed => EventKind::BreakerClosed,
        BreakerState::Open => EventKind::BreakerOpened,
        BreakerState::HalfOpen => EventKind::BreakerHalfOpen,
    }
}

/// Whether an error returned by the plugin counts against it: everything but the answers a plugin
/// gives the client on purpose.
fn is_failure(error: &CallError) -> bool {
    !error.is_client_error()
}

/// Runs `call` until `deadline` (asked for only if the call does not answer at once): `None` if it
/// passed. The first poll happens inline, so a call that answers at once never registers a timer.
async fn within<Fut: Future>(
    mut call: Pin<&mut Fut>,
    deadline: impl FnOnce() -> Option<Instant>,
) -> Option<Fut::Output> {
    if let Poll::Ready(answer) = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        return Some(answer);
    }
    match deadline() {
        Some(deadline) => {
            let deadline = tokio::time::Instant::from_std(deadline);
            // Boxed: a timer is large (and cache-line aligned), and only a call that waits needs
            // one; inline, it would grow every call's future, which is moved a few times.
            Box::pin(tokio::time::timeout_at(deadline, call)).await.ok()
        }
        None => Some(call.await),
    }
}

/// A call in flight: leaves the in-flight count on every exit path, and, if dropped before it
/// ended (its permit still here), counts it as dropped and frees its breaker slot.
struct InFlight<'a> {
    guard: &'a Guarded,
    permit: Option<Permit>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.guard.stats.exit();
        if let Some(permit) = self.permit.take() {
            self.guard.stats.record_dropped();
            self.guard.breaker.release(permit);
        }
    }
}

#[async_trait]
impl Plugin for Guarded {
    fn info(&self) -> &PluginInfo {
        self.inner.info()
    }

    async fn initialize(&self, config: &serde_json::Value) -> Result<(), CallError> {
        self.inner.initialize(config).await
    }

    fn answers_now(&self) -> bool {
        self.inner.answers_now()
    }

    // Under the policy, as the inherent method.
    fn handle_now(&self, request: &Request) -> Option<Result<Response, CallError>> {
        Guarded::handle_now(self, request)
    }

    // These three box the guarded future itself, as `async_trait` would box an `async fn`, but
    // without an `async` wrapper around it that would hold a second copy of the arguments.
    fn handle<'life0, 'async_trait>(
        &'life0 self,
        request: Request,
    ) -> BoxFuture<'async_trait, Result<Response, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::handle(self, request))
    }

    fn before_request<'life0, 'life1, 'async_trait>(
        &'life0 self,
        request: &'life1 Request,
    ) -> BoxFuture<'async_trait, Result<HookAction, CallError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::before_request(self, request))
    }

    fn after_response<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: &'life1 Request,
        response: &'life2 Response,
    ) -> BoxFuture<'async_trait, Result<Response, CallError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::after_response(self, request, response))
    }

    fn handle_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
    ) -> BoxFuture<'async_trait, Result<Response, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::handle_shared(self, request))
    }

    fn before_request_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
    ) -> BoxFuture<'async_trait, Result<RequestEdit, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::before_request_shared(self, request))
    }

    fn after_response_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
        response: Arc<Response>,
    ) -> BoxFuture<'async_trait, Result<ResponseEdit, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Guarded::after_response_shared(self, request, response))
    }

    async fn health_check(&self) -> Health {
        let Some(limit) = self.policy.timeout else {
            return self.inner.health_check().await;
        };
        let start = Instant::now();
        match within(pin!(self.inner.health_check()), || start.checked_add(limit)).await {
            Some(health) if start.elapsed() <= limit => health,
            _ => Health::Unhealthy(format!("health check did not answer within {limit:?}")),
        }
    }

    async fn shutdown(&self) -> Result<(), CallError> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use backworks_plugin_sdk::prelude::*;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::BuiltinPlugin;
    use crate::lifecycle::PluginState;
    use crate::policy::BreakerSettings;

    /// Answers by path: `/ok`, `/fail`, `/not-found`, `/teapot`, `/500`, `/panic`, `/hang` (never
    /// answers; counts its drop), `/block` (blocks its thread 200 ms), `/gate` (waits for a permit
    /// of `gate`), `/body/N` (N bytes).
    struct Fake {
        calls: AtomicUsize,
        dropped: Arc<AtomicUsize>,
        gate: Semaphore,
        hang_health: AtomicBool,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                calls: AtomicUsize::new(0),
                dropped: Arc::default(),
                gate: Semaphore::new(0),
                hang_health: AtomicBool::new(false),
            }
        }
    }

    struct CountDrop(Arc<AtomicUsize>);

    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn body_len(path: &str, prefix: &str) -> Option<usize> {
        path.strip_prefix(prefix).and_then(|n| n.parse().ok())
    }

    #[async_trait]
    impl BackworksPlugin for Fake {
        async fn handle(&self, request: Request) -> PluginResult<Response> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match request.path.as_str() {
                "/ok" => Ok(Response::text("ok")),
                "/fail" => Err(PluginError::Internal("broken".into())),
                "/not-found" => Err(PluginError::NotFound("no such thing".into())),
                "/teapot" => Err(PluginError::Status {
                    status: 418,
                    message: "short and stout".into(),
                }),
                "/500" => Ok(Response::new(500)),
                "/panic" => panic!("boom"),
                "/hang" => {
                    let _count = CountDrop(self.dropped.clone());
                    std::future::pending().await
                }
                "/block" => {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(Response::text("late"))
                }
                "/gate" => {
                    self.gate.acquire().await.expect("gate open").forget();
                    Ok(Response::text("through"))
                }
                path => match body_len(path, "/body/") {
                    Some(n) => Ok(Response::new(200).with_body(vec![b'x'; n])),
                    None => Err(PluginError::NotFound(path.to_owned())),
                },
            }
        }

        async fn before_request(&self, request: &Request) -> PluginResult<HookAction> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match (request.path.as_str(), body_len(&request.path, "/respond/")) {
                ("/respond-500", _) => Ok(HookAction::Respond(Response::new(500))),
                (_, Some(n)) => Ok(HookAction::Respond(
                    Response::new(200).with_body(vec![0; n]),
                )),
                _ => Ok(HookAction::Continue),
            }
        }

        async fn after_response(
            &self,
            request: &Request,
            response: Response,
        ) -> PluginResult<Response> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match body_len(&request.path, "/after/") {
                Some(n) => Ok(response.with_body(vec![0; n])),
                None => Ok(response),
            }
        }

        async fn health_check(&self) -> Health {
            if self.hang_health.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Health::Healthy
        }
    }

    struct Setup {
        guarded: Arc<Guarded>,
        fake: Arc<BuiltinPlugin<Fake>>,
        lifecycle: Arc<Lifecycle>,
    }

    impl Setup {
        fn calls(&self) -> usize {
            self.fake.inner().calls.load(Ordering::SeqCst)
        }

        async fn get(&self, path: &str) -> Result<Response, CallError> {
            self.guarded.handle(Request::new("GET", path)).await
        }

        fn events(&self) -> Vec<(EventKind, String)> {
            self.lifecycle
                .history()
                .into_iter()
                .map(|e| (e.kind, e.detail))
                .collect()
        }

        /// Waits (generous deadline: liveness, not speed) until `n` calls are in flight.
        async fn until_in_flight(&self, n: u64) {
            tokio::time::timeout(Duration::from_secs(30), async {
                while self.guarded.stats().in_flight() < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("calls in flight");
        }
    }

    fn setup(policy: CallPolicy) -> Setup {
        let fake = Arc::new(BuiltinPlugin::new("fake", "1.0.0", "", Fake::default()));
        let lifecycle = Arc::new(Lifecycle::new("fake", PluginState::Active));
        let inner: Arc<dyn Plugin> = fake.clone();
        let guarded = Arc::new(Guarded::new(inner, policy, lifecycle.clone()));
        Setup {
            guarded,
            fake,
            lifecycle,
        }
    }

    fn policy() -> CallPolicy {
        CallPolicy {
            timeout: Some(Duration::from_secs(30)),
            max_concurrency: Some(64),
            max_response_body: 1024,
            breaker: BreakerSettings {
                consecutive_failures: 3,
                cooldown: Duration::from_secs(60),
                ..BreakerSettings::default()
            },
        }
    }

    fn short_timeout(ms: u64) -> CallPolicy {
        CallPolicy {
            timeout: Some(Duration::from_millis(ms)),
            ..policy()
        }
    }

    #[tokio::test]
    async fn a_success_is_counted_and_answered() {
        let s = setup(policy());
        assert_eq!(s.guarded.info().name, "fake");
        let response = s.get("/ok").await.expect("ok");
        assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
        let stats = s.guarded.stats().snapshot();
        assert_eq!((stats.calls, stats.successes, stats.in_flight), (1, 1, 0));
        assert_eq!(stats.latency.count(), 1);
        assert_eq!(s.guarded.breaker_state(), BreakerState::Closed);
        // The same through the trait object.
        let plugin: Arc<dyn Plugin> = s.guarded.clone();
        assert_eq!(
            plugin
                .handle(Request::new("GET", "/ok"))
                .await
                .expect("ok")
                .status,
            200
        );
        let hook = plugin.before_request(&Request::new("GET", "/x")).await;
        assert_eq!(hook, Ok(HookAction::Continue));
        let after = plugin
            .after_response(&Request::new("GET", "/x"), &Response::new(201))
            .await;
        assert_eq!(after.expect("passed on").status, 201);
        assert_eq!(s.guarded.stats().snapshot().successes, 4);
    }

    /// A synchronous endpoint: `/ok`, `/fail`, `/panic`, `/block` (blocks its thread 200 ms),
    /// `/body/N` (N bytes).
    #[derive(Default)]
    struct Sync;

    #[async_trait]
    impl BackworksPlugin for Sync {
        const HANDLE_SYNC: bool = true;

        fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
            match request.path() {
                "/ok" => Ok(Response::text("now")),
                "/fail" => Err(PluginError::Internal("broken".into())),
                "/panic" => panic!("sync panicked"),
                "/block" => {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(Response::text("late"))
                }
                path => match body_len(path, "/body/") {
                    Some(n) => Ok(Response::new(200).with_body(vec![b'x'; n])),
                    None => Err(PluginError::NotFound(path.to_owned())),
                },
            }
        }
    }

    /// A plugin whose endpoint never waits is called at once, through the guard's policy like any
    /// call: counted, judged (a body over the limit), its panic caught, its failures opening the
    /// breaker, which then refuses without calling. One that may wait is not called at all.
    #[tokio::test]
    async fn a_synchronous_endpoint_answers_at_once_under_the_policy() {
        let plugin = Arc::new(BuiltinPlugin::new("sync", "1.0.0", "", Sync));
        let lifecycle = Arc::new(Lifecycle::new("sync", PluginState::Active));
        let guarded = Guarded::new(plugin, policy(), lifecycle);
        let now = |path: &str| guarded.handle_now(&Request::new("GET", path));
        assert!(guarded.answers_now());
        let answer = now("/ok").expect("answers at once").expect("ok");
        assert_eq!((answer.status, &answer.body[..]), (200, &b"now"[..]));
        // Its async entry reaches the same function.
        let answer = guarded.handle(Request::new("GET", "/ok")).await;
        assert_eq!(answer.expect("ok").body, b"now");
        // The same through the trait object.
        let dynamic: &dyn Plugin = &guarded;
        assert_eq!(
            dynamic
                .handle_now(&Request::new("GET", "/ok"))
                .map(|a| a.map(|r| r.status)),
            Some(Ok(200))
        );
        assert!(matches!(
            now("/body/2048"),
            Some(Err(CallError::InvalidResponse(_)))
        ));
        assert!(matches!(
            now("/panic"),
            Some(Err(CallError::Plugin(PluginError::Panic(m)))) if m.contains("sync panicked")
        ));
        assert!(matches!(now("/fail"), Some(Err(CallError::Plugin(_)))));
        let stats = guarded.stats().snapshot();
        assert_eq!((stats.calls, stats.successes, stats.in_flight), (6, 3, 0));
        assert_eq!(guarded.breaker_state(), BreakerState::Open);
        assert!(matches!(
            now("/ok"),
            Some(Err(CallError::CircuitOpen { .. }))
        ));

        // One that blocks past its deadline cannot be cut short: its answer is thrown away, and
        // it is a timeout and an overrun.
        let plugin = Arc::new(BuiltinPlugin::new("sync", "1.0.0", "", Sync));
        let lifecycle = Arc::new(Lifecycle::new("sync", PluginState::Active));
        let guarded = Guarded::new(plugin, short_timeout(20), lifecycle);
        let answer = guarded.handle_now(&Request::new("GET", "/block"));
        assert!(
            matches!(answer, Some(Err(CallError::Timeout(_)))),
            "{answer:?}"
        );
        let stats = guarded.stats().snapshot();
        assert_eq!((stats.timeouts, stats.overruns), (1, 1));

        // A plugin that may wait: no call, nothing counted.
        let s = setup(policy());
        assert!(!s.guarded.answers_now());
        assert!(s.guarded.handle_now(&Request::new("GET", "/ok")).is_none());
        assert_eq!((s.calls(), s.guarded.stats().snapshot().calls), (0, 0));
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_timeout_and_its_future_is_dropped() {
        let s = setup(short_timeout(50));
        let error = s.get("/hang").await.expect_err("times out");
        assert_eq!(
            error,
            CallError::Timeout("plugin `fake` did not answer within 50ms".into())
        );
        assert_eq!(error.status(), 504);
        assert_eq!(s.fake.inner().dropped.load(Ordering::SeqCst), 1);
        let stats = s.guarded.stats().snapshot();
        assert_eq!((stats.timeouts, stats.overruns), (1, 0));
        assert_eq!(stats.errors.get("timeout"), 1);
        assert_eq!((stats.in_flight, stats.latency.count()), (0, 1));
        assert_eq!(s.guarded.breaker().consecutive_failures(), 1);
        assert_eq!(
            s.events(),
            [(
                EventKind::TimedOut,
                "a call did not answer within 50ms and was dropped (timeouts so far: 1)".into()
            )]
        );
    }

    #[tokio::test]
    async fn a_call_that_blocks_past_its_deadline_is_an_overrun() {
        let s = setup(short_timeout(20));
        let error = s.get("/block").await.expect_err("answered too late");
        assert_eq!(
            error,
            CallError::Timeout("plugin `fake` did not answer within 20ms".into())
        );
        let stats = s.guarded.stats().snapshot();
        assert_eq!((stats.timeouts, stats.overruns, stats.successes), (1, 1, 0));
        let events = s.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, EventKind::TimedOut);
        assert!(
            events[0].1.starts_with("a call blocked its thread for "),
            "{}",
            events[0].1
        );
        assert!(
            events[0].1.contains("isolation: process"),
            "{}",
            events[0].1
        );
    }

    #[tokio::test]
    async fn timeout_events_are_recorded_at_most_once_a_second() {
        let s = setup(policy());
        let at = Duration::from_millis;
        assert!(s.guarded.timeout_event_due(at(5)));
        assert!(!s.guarded.timeout_event_due(at(500)));
        assert!(!s.guarded.timeout_event_due(at(1_004)));
        assert!(s.guarded.timeout_event_due(at(1_006)));
        assert!(!s.guarded.timeout_event_due(at(1_500)));
        assert!(s.guarded.timeout_event_due(at(60_000)));
    }

    #[tokio::test]
    async fn calls_past_the_concurrency_limit_are_shed_at_once() {
        let s = setup(CallPolicy {
            max_concurrency: Some(2),
            ..policy()
        });
        let held: Vec<_> = (0..2)
            .map(|_| {
                let guarded = s.guarded.clone();
                tokio::spawn(async move { guarded.handle(Request::new("GET", "/gate")).await })
            })
            .collect();
        s.until_in_flight(2).await;
        let error = s.get("/ok").await.expect_err("shed");
        assert_eq!(
            error,
            CallError::Overloaded("plugin `fake` is at its limit of 2 concurrent calls".into())
        );
        assert_eq!(error.status(), 503);
        assert_eq!(s.calls(), 2, "the shed call never reached the plugin");
        s.fake.inner().gate.add_permits(2);
        for call in held {
            assert_eq!(call.await.expect("task").expect("through").status, 200);
        }
        let stats = s.guarded.stats().snapshot();
        assert_eq!((stats.shed, stats.in_flight, stats.successes), (1, 0, 2));
        assert_eq!(stats.errors.get("overloaded"), 1);
        assert_eq!(s.guarded.breaker().consecutive_failures(), 0);
        // The limit has room again.
        assert_eq!(s.get("/ok").await.expect("room").status, 200);
    }

    #[tokio::test]
    async fn a_dropped_call_counts_as_cancelled_and_frees_its_place() {
        let s = setup(CallPolicy {
            max_concurrency: Some(1),
            ..policy()
        });
        let guarded = s.guarded.clone();
        let call = tokio::spawn(async move { guarded.handle(Request::new("GET", "/gate")).await });
        s.until_in_flight(1).await;
        call.abort();
        assert!(call.await.expect_err("aborted").is_cancelled());
        let stats = s.guarded.stats().snapshot();
        assert_eq!((stats.in_flight, stats.errors.get("cancelled")), (0, 1));
        assert_eq!((stats.dropped, stats.calls, stats.successes), (1, 1, 0));
        assert_eq!(stats.latency.count(), 0);
        assert_eq!(s.guarded.breaker().consecutive_failures(), 0);
        assert_eq!(s.get("/ok").await.expect("admitted").status, 200);
    }

    #[tokio::test]
    async fn the_breaker_opens_after_failures_and_refuses_without_calling() {
        let s = setup(policy());
        for _ in 0..3 {
            assert_eq!(
                s.get("/fail").await,
                Err(PluginError::Internal("broken".into()).into())
            );
        }
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        let error = s.get("/ok").await.expect_err("refused");
        let CallError::CircuitOpen {
            message,
            retry_after_secs,
        } = &error
        else {
            panic!("expected circuit_open, got {error:?}");
        };
        assert_eq!(
            message,
            "circuit breaker of plugin `fake` is open (3 failures in a row)"
        );
        assert!((1..=60).contains(retry_after_secs), "{retry_after_secs}");
        assert_eq!(error.status(), 503);
        assert_eq!(s.calls(), 3, "the refused call never reached the plugin");
        let stats = s.guarded.stats().snapshot();
        assert_eq!(stats.breaker_rejected, 1);
        assert_eq!(stats.errors.get("circuit_open"), 1);
        assert_eq!(stats.errors.get("internal"), 3);
        assert_eq!(stats.latency.count(), 3);
        assert_eq!(
            s.events(),
            [(EventKind::BreakerOpened, "3 failures in a row".into())]
        );
        let snapshot = s.guarded.breaker_snapshot();
        assert_eq!(
            (snapshot.state, snapshot.times_opened),
            (BreakerState::Open, 1)
        );
        assert!(snapshot.retry_after_secs.is_some());
    }

    #[tokio::test]
    async fn a_successful_probe_closes_the_breaker() {
        let s = setup(CallPolicy {
            breaker: BreakerSettings {
                consecutive_failures: 2,
                cooldown: Duration::from_millis(50),
                ..BreakerSettings::default()
            },
            ..policy()
        });
        let _ = s.get("/panic").await;
        assert_eq!(
            s.get("/fail").await.map(|r| r.status),
            Err(PluginError::Internal("broken".into()).into())
        );
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        // Sleeping at least the cool-down is enough whatever the machine's load.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(s.get("/ok").await.expect("probe").status, 200);
        assert_eq!(s.guarded.breaker_state(), BreakerState::Closed);
        let kinds: Vec<_> = s.events().into_iter().map(|(kind, _)| kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::BreakerOpened,
                EventKind::BreakerHalfOpen,
                EventKind::BreakerClosed
            ]
        );
        assert_eq!(s.events()[0].1, "2 failures in a row");
        assert_eq!(s.events()[2].1, "1 probe call succeeded");
        assert_eq!(s.guarded.stats().snapshot().errors.get("panic"), 1);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_the_breaker() {
        let s = setup(CallPolicy {
            breaker: BreakerSettings {
                consecutive_failures: 1,
                cooldown: Duration::from_millis(20),
                ..BreakerSettings::default()
            },
            ..policy()
        });
        let _ = s.get("/fail").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = s.get("/fail").await;
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        let events = s.events();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[2],
            (EventKind::BreakerOpened, "a probe call failed".into())
        );
        assert_eq!(s.guarded.breaker_snapshot().times_opened, 2);
        assert_eq!(s.calls(), 2);
    }

    #[tokio::test]
    async fn client_errors_are_not_failures_but_5xx_responses_are() {
        let s = setup(policy());
        for path in ["/not-found", "/teapot", "/not-found", "/teapot"] {
            assert!(s.get(path).await.is_err());
        }
        assert_eq!(s.guarded.breaker().consecutive_failures(), 0);
        assert_eq!(s.guarded.breaker_state(), BreakerState::Closed);
        for _ in 0..3 {
            assert_eq!(s.get("/500").await.expect("a response").status, 500);
        }
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        assert_eq!(s.guarded.stats().snapshot().successes, 3);

        let lenient = setup(CallPolicy {
            breaker: BreakerSettings {
                count_5xx: false,
                ..policy().breaker
            },
            ..policy()
        });
        for _ in 0..5 {
            assert_eq!(lenient.get("/500").await.expect("a response").status, 500);
        }
        assert_eq!(lenient.guarded.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn oversized_bodies_are_invalid_responses_and_failures() {
        let s = setup(policy());
        assert_eq!(
            s.get("/body/1024").await.expect("at the limit").body.len(),
            1024
        );
        assert_eq!(
            s.get("/body/1025").await,
            Err(CallError::InvalidResponse(
                "plugin `fake` answered a body of 1025 bytes, over the limit of 1024".into()
            ))
        );
        let early = s
            .guarded
            .before_request(&Request::new("GET", "/respond/2000"))
            .await;
        assert_eq!(
            early.map(|_| ()).expect_err("too big").kind(),
            "invalid_response"
        );
        let after = s
            .guarded
            .after_response(&Request::new("GET", "/after/4096"), &Response::new(200))
            .await;
        assert_eq!(after.expect_err("too big").status(), 502);
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        assert_eq!(
            s.guarded.stats().snapshot().errors.get("invalid_response"),
            3
        );
    }

    #[tokio::test]
    async fn hooks_are_guarded_and_only_their_own_answers_count() {
        let s = setup(policy());
        let request = Request::new("GET", "/anything");
        assert_eq!(
            s.guarded.before_request(&request).await,
            Ok(HookAction::Continue)
        );
        // after_response passes on the endpoint's 500: not the hook's failure.
        for _ in 0..5 {
            let response = s
                .guarded
                .after_response(&request, &Response::new(500))
                .await;
            assert_eq!(response.expect("passed on").status, 500);
        }
        assert_eq!(s.guarded.breaker().consecutive_failures(), 0);
        // A hook answering 500 itself is.
        let respond = Request::new("GET", "/respond-500");
        for _ in 0..3 {
            assert!(matches!(
                s.guarded.before_request(&respond).await,
                Ok(HookAction::Respond(_))
            ));
        }
        assert_eq!(s.guarded.breaker_state(), BreakerState::Open);
        assert!(matches!(
            s.guarded.before_request(&request).await,
            Err(CallError::CircuitOpen { .. })
        ));
        assert_eq!(s.calls(), 9);
    }

    #[tokio::test]
    async fn health_checks_get_the_timeout() {
        assert_eq!(
            setup(policy()).guarded.health_check().await,
            Health::Healthy
        );
        let s = setup(short_timeout(20));
        s.fake.inner().hang_health.store(true, Ordering::SeqCst);
        assert_eq!(
            s.guarded.health_check().await,
            Health::Unhealthy("health check did not answer within 20ms".into())
        );
    }
}

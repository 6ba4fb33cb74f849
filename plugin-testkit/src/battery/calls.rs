//! The checks that call a running plugin: endpoints, hooks, health, many calls at once, calls
//! dropped mid-flight, hostile inputs, shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use backworks_plugin_host::sdk::Hooks;
use backworks_plugin_host::{CallError, Health, HookAction, Plugin, Request, Response};

use super::explain::{Verdict, call_failure, judge};
use crate::report::{Check, seconds};

/// One call the battery repeats: to the first declared endpoint, or to a declared hook when the
/// plugin serves no endpoint.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// `handle` with this method and path.
    Endpoint(String, String),
    /// `before_request` on a sample request.
    BeforeRequest,
    /// `after_response` on a sample request and a 200.
    AfterResponse,
}

impl Probe {
    /// The probe for a plugin serving `endpoints` and declaring `hooks`, if there is anything to
    /// call.
    pub(crate) fn choose(endpoints: &[(String, String)], hooks: Hooks) -> Option<Probe> {
        match endpoints.first() {
            Some((method, path)) => Some(Probe::Endpoint(method.clone(), path.clone())),
            None if hooks.before_request() => Some(Probe::BeforeRequest),
            None if hooks.after_response() => Some(Probe::AfterResponse),
            None => None,
        }
    }

    /// `GET /hello/ana`, `before_request`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Probe::Endpoint(method, path) => format!("{method} {path}"),
            Probe::BeforeRequest => "before_request".to_owned(),
            Probe::AfterResponse => "after_response".to_owned(),
        }
    }

    /// The request the probe sends (hooks get a sample).
    fn request(&self) -> Request {
        match self {
            Probe::Endpoint(method, path) => Request::new(method.as_str(), path.as_str()),
            _ => sample_request(),
        }
    }

    /// Makes the probe's call with `request`; its status, or the error.
    pub(crate) fn call(
        &self,
        plugin: Arc<dyn Plugin>,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<u16, CallError>> + Send>> {
        match self {
            Probe::Endpoint(..) => {
                Box::pin(async move { plugin.handle(request).await.map(|r| r.status) })
            }
            Probe::BeforeRequest => Box::pin(async move {
                plugin
                    .before_request(&request)
                    .await
                    .map(|action| match action {
                        HookAction::Respond(response) => response.status,
                        HookAction::Continue | HookAction::ContinueWith(_) => 200,
                    })
            }),
            Probe::AfterResponse => Box::pin(async move {
                let response = Response::new(200);
                plugin
                    .after_response(&request, &response)
                    .await
                    .map(|r| r.status)
            }),
        }
    }

    /// The probe's call with its own request.
    pub(crate) fn call_once(
        &self,
        plugin: Arc<dyn Plugin>,
    ) -> Pin<Box<dyn Future<Output = Result<u16, CallError>> + Send>> {
        self.call(plugin, self.request())
    }
}

/// A request like the ones hooks see: a path, a query, two headers, a small JSON body.
pub(crate) fn sample_request() -> Request {
    let mut request = Request::new("POST", "/conformance/sample");
    request.query.push(("q".into(), "1".into()));
    request.headers.insert("content-type", "application/json");
    request
        .headers
        .insert("user-agent", "backworks-plugin-testkit");
    request.body = br#"{"sample":true}"#.to_vec();
    request
}

/// `future` within `deadline`, a hang becoming [`CallError::Timeout`].
pub(crate) async fn within<T>(
    deadline: Duration,
    future: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Timeout(format!(
                "no answer within {}",
                seconds(deadline)
            )))
        })
}

/// `endpoint METHOD PATH`: the endpoint answers with a valid status.
pub(crate) async fn endpoint(
    plugin: Arc<dyn Plugin>,
    deadline: Duration,
    method: &str,
    path: &str,
) -> Check {
    let name = format!("endpoint {method} {path}");
    let what = format!("{method} {path}");
    let outcome = within(deadline, async {
        plugin
            .handle(Request::new(method, path))
            .await
            .map(|r| (r.status, r.body.len()))
    })
    .await;
    match outcome {
        Ok((status, len)) => match judge(&what, Ok(status)) {
            Verdict::Fine(_) => Check::pass(name, format!("answered {status} ({len} bytes)")),
            Verdict::Wrong(why) => Check::fail(name, why),
        },
        Err(error) => verdict_check(name, judge(&what, Err(&error))),
    }
}

/// `hook before_request` / `hook after_response`: a declared hook answers on a sample request.
pub(crate) async fn hook(plugin: Arc<dyn Plugin>, deadline: Duration, probe: Probe) -> Check {
    let name = format!("hook {}", probe.describe());
    let what = format!("{} on a sample request", probe.describe());
    let outcome = within(deadline, probe.call_once(plugin)).await;
    verdict_check(name, judge(&what, outcome.as_ref().copied()))
}

/// `health`: the plugin reports healthy or degraded, in time.
pub(crate) async fn health(plugin: Arc<dyn Plugin>, deadline: Duration) -> Check {
    let outcome = within(deadline, async { Ok(plugin.health_check().await) }).await;
    match outcome {
        Ok(Health::Healthy) => Check::pass("health", "healthy"),
        Ok(Health::Degraded(why)) => Check::pass("health", format!("degraded: {why}")),
        Ok(Health::Unhealthy(why)) => Check::fail(
            "health",
            format!(
                "the plugin reports itself unhealthy right after a successful initialize: {why}. \
                 The host takes an unhealthy plugin out of /ready; report Unhealthy only when it \
                 cannot serve"
            ),
        ),
        Err(error) => Check::fail("health", call_failure("health_check", &error)),
    }
}

/// `concurrency`: `n` calls at once all answer.
pub(crate) async fn concurrency(
    plugin: Arc<dyn Plugin>,
    deadline: Duration,
    probe: &Probe,
    n: usize,
) -> Check {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        calls.spawn(within(deadline, probe.call_once(plugin.clone())));
    }
    let mut wrong = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let outcome = joined.unwrap_or_else(|e| Err(CallError::Crashed(e.to_string())));
        if let Verdict::Wrong(why) = judge(&probe.describe(), outcome.as_ref().copied()) {
            wrong.push(why);
        }
    }
    if wrong.is_empty() {
        Check::pass(
            "concurrency",
            format!("{n} concurrent {} calls all answered", probe.describe()),
        )
    } else {
        Check::fail(
            "concurrency",
            format!(
                "{} of {n} concurrent {} calls went wrong (state shared without a lock, a lock \
                 held across an await, or a limit on calls in flight?); the first: {}",
                wrong.len(),
                probe.describe(),
                wrong[0]
            ),
        )
    }
}

/// `cancellation`: calls dropped after their first poll, and calls aborted as tasks, leave a
/// plugin that still answers.
pub(crate) async fn cancellation(
    plugin: Arc<dyn Plugin>,
    deadline: Duration,
    probe: &Probe,
    n: usize,
) -> Check {
    for _ in 0..n {
        // Polled once, then dropped: a pending call is cancelled mid-flight.
        let mut call = probe.call_once(plugin.clone());
        std::future::poll_fn(|cx| {
            let _ = call.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        drop(call);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(probe.call_once(plugin.clone()));
    }
    tokio::task::yield_now().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let after = within(deadline, probe.call_once(plugin)).await;
    match judge(&probe.describe(), after.as_ref().copied()) {
        Verdict::Fine(how) => Check::pass(
            "cancellation",
            format!(
                "{} calls dropped mid-flight, then {} {how}",
                2 * n,
                probe.describe()
            ),
        ),
        Verdict::Wrong(why) => Check::fail(
            "cancellation",
            format!(
                "after {} calls were dropped mid-flight the plugin no longer answers: {why}. \
                 A dropped call must release what it holds (locks, permits, slots)",
                2 * n
            ),
        ),
    }
}

/// The odd requests of the `hostile input` check, each with what it is.
fn hostile_requests(method: &str, path: &str) -> Vec<(&'static str, Request)> {
    let mut huge_header = Request::new(method, path);
    huge_header
        .headers
        .insert("x-conformance-huge", "h".repeat(64 * 1024));
    let mut not_utf8 = Request::new(method, path);
    not_utf8.headers.insert("content-type", "application/json");
    not_utf8.body = vec![0xff, 0xfe, b'{', 0xc3, 0x28, 0x00];
    let mut big_body = Request::new(method, path);
    big_body.body = vec![b'x'; 1024 * 1024];
    let mut odd_params = Request::new(method, path);
    odd_params.params.push(("name".into(), "".into()));
    odd_params.query.push(("".into(), "\u{0}".into()));
    vec![
        ("a 64 KiB header", huge_header),
        ("a body that is not UTF-8", not_utf8),
        ("an empty path", Request::new(method, "")),
        ("a 1 MiB body", big_body),
        (
            "an odd method and path",
            Request::new("BREW", "/../%00/ü/../../etc/passwd"),
        ),
        ("empty and NUL parameters", odd_params),
    ]
}

/// `hostile input`: odd requests to `handle` and every declared hook come back as answers or
/// errors (never a panic, a hang or a crash), and the plugin keeps serving.
pub(crate) async fn hostile_input(
    plugin: Arc<dyn Plugin>,
    deadline: Duration,
    endpoints: &[(String, String)],
    hooks: Hooks,
    probe: Option<&Probe>,
) -> Check {
    let (method, path) = endpoints
        .first()
        .cloned()
        .unwrap_or_else(|| ("GET".to_owned(), "/".to_owned()));
    let mut targets = vec![Probe::Endpoint(method.clone(), path.clone())];
    if hooks.before_request() {
        targets.push(Probe::BeforeRequest);
    }
    if hooks.after_response() {
        targets.push(Probe::AfterResponse);
    }
    let requests = hostile_requests(&method, &path);
    // Failures grouped by what went wrong, so one cause reads once with every input it hit.
    let mut wrong: Vec<(String, Vec<String>)> = Vec::new();
    let mut failed = 0;
    for target in &targets {
        for (what, request) in &requests {
            let label = match target {
                Probe::Endpoint(..) => format!("handle with {what}"),
                hook => format!("{} with {what}", hook.describe()),
            };
            let outcome = within(deadline, target.call(plugin.clone(), request.clone())).await;
            // Any answer is fine here, a 5xx included: the input is bad. A panic, a hang or a
            // crash is not.
            let error = match outcome {
                Ok(_) => continue,
                Err(CallError::Plugin(ref e)) if e.kind() != "panic" => continue,
                Err(error) => error,
            };
            failed += 1;
            let why = call_failure("", &error);
            match wrong.iter_mut().find(|(w, _)| *w == why) {
                Some((_, labels)) => labels.push(label),
                None => wrong.push((why, vec![label])),
            }
        }
    }
    let count = requests.len() * targets.len();
    if !wrong.is_empty() {
        let causes: Vec<String> = wrong
            .iter()
            .map(|(why, labels)| format!("{}{why}", labels.join(", ")))
            .collect();
        return Check::fail(
            "hostile input",
            format!(
                "{failed} of {count} odd requests went wrong: {}",
                causes.join("; ")
            ),
        );
    }
    let Some(probe) = probe else {
        return Check::pass(
            "hostile input",
            format!("{count} odd requests all came back as answers or errors"),
        );
    };
    let after = within(deadline, probe.call_once(plugin)).await;
    match judge(&probe.describe(), after.as_ref().copied()) {
        Verdict::Fine(how) => Check::pass(
            "hostile input",
            format!(
                "{count} odd requests all came back as answers or errors; then {} {how}",
                probe.describe()
            ),
        ),
        Verdict::Wrong(why) => Check::fail(
            "hostile input",
            format!("after {count} odd requests the plugin no longer serves: {why}"),
        ),
    }
}

/// `shutdown`: the plugin shuts down in time, without an error.
pub(crate) async fn shutdown(plugin: Arc<dyn Plugin>, deadline: Duration) -> Check {
    match within(deadline, plugin.shutdown()).await {
        Ok(()) => Check::pass("shutdown", "shut down cleanly"),
        Err(error) => Check::fail("shutdown", call_failure("shutdown", &error)),
    }
}

/// A check named `name` from a verdict.
fn verdict_check(name: String, verdict: Verdict) -> Check {
    match verdict {
        Verdict::Fine(how) => Check::pass(name, how),
        Verdict::Wrong(why) => Check::fail(name, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repeated_call_is_the_first_endpoint_else_a_declared_hook() {
        let endpoints = [("GET".to_owned(), "/a".to_owned())];
        let probe = Probe::choose(&endpoints, Hooks::ALL).unwrap();
        assert_eq!(probe.describe(), "GET /a");
        let probe = Probe::choose(&[], Hooks::ALL).unwrap();
        assert_eq!(probe.describe(), "before_request");
        let probe = Probe::choose(&[], Hooks::AFTER_RESPONSE).unwrap();
        assert_eq!(probe.describe(), "after_response");
        assert!(Probe::choose(&[], Hooks::NONE).is_none());
    }

    #[test]
    fn hostile_requests_are_what_they_say() {
        let requests = hostile_requests("POST", "/x");
        let find = |what: &str| &requests.iter().find(|(w, _)| *w == what).unwrap().1;
        let huge = find("a 64 KiB header");
        assert_eq!(huge.header("x-conformance-huge").unwrap().len(), 64 * 1024);
        assert!(std::str::from_utf8(&find("a body that is not UTF-8").body).is_err());
        assert_eq!(find("an empty path").path.as_str(), "");
        assert_eq!(find("a 1 MiB body").body.len(), 1024 * 1024);
        assert_eq!(find("a 1 MiB body").method.as_str(), "POST");
    }
}

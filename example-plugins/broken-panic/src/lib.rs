//! **Test fixture, not an example to copy**: a plugin that panics on purpose, so the host's tests
//! can check that no panic crosses the boundary and that one panicking call costs one request.
//!
//! | Request                           | What happens                                               |
//! |-----------------------------------|------------------------------------------------------------|
//! | any path ending in `/panic`       | `handle` panics at once: `broken-panic: handle exploded`   |
//! | any path ending in `/panic-later` | `handle` awaits a 1 ms tokio sleep, then panics the same   |
//! | anything else                     | 200 `{"ok":true}`                                          |
//!
//! Config (optional): `{"panic_in": "initialize" | "health_check" | "before_request" |
//! "after_response"}` makes that method panic too, with `broken-panic: <method> exploded`. Any
//! other value is a [`PluginError::Config`].

use std::sync::RwLock;
use std::time::Duration;

use backworks_plugin_sdk::prelude::*;

use serde::Deserialize;

/// The message `handle` panics with.
pub const HANDLE_PANIC: &str = "broken-panic: handle exploded";

/// A method that the config can make panic besides `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicIn {
    /// `initialize` panics (before it stores anything).
    Initialize,
    /// `health_check` panics.
    HealthCheck,
    /// `before_request` panics.
    BeforeRequest,
    /// `after_response` panics.
    AfterResponse,
}

impl PanicIn {
    /// The method's name, as used in config and in the panic message.
    pub fn method(self) -> &'static str {
        match self {
            PanicIn::Initialize => "initialize",
            PanicIn::HealthCheck => "health_check",
            PanicIn::BeforeRequest => "before_request",
            PanicIn::AfterResponse => "after_response",
        }
    }
}

/// The fixture's configuration, from `backworks.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokenPanicConfig {
    /// Which method panics besides `handle`; none when absent.
    pub panic_in: Option<PanicIn>,
}

/// Panics where it is told to. See the crate docs.
#[derive(Debug, Default)]
pub struct BrokenPanic {
    panic_in: RwLock<Option<PanicIn>>,
}

impl BrokenPanic {
    /// Panics if the config named `method`.
    fn maybe_panic(&self, method: PanicIn) {
        let configured = *self
            .panic_in
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if configured == Some(method) {
            panic!("broken-panic: {} exploded", method.method());
        }
    }
}

#[async_trait]
impl BackworksPlugin for BrokenPanic {
    const HOOKS: Hooks = Hooks::ALL;

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let config: BrokenPanicConfig = parse_config(config)?;
        if config.panic_in == Some(PanicIn::Initialize) {
            panic!("broken-panic: initialize exploded");
        }
        *self
            .panic_in
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config.panic_in;
        Ok(())
    }

    async fn handle(&self, request: Request) -> PluginResult<Response> {
        if request.path.ends_with("/panic") {
            panic!("{HANDLE_PANIC}");
        }
        if request.path.ends_with("/panic-later") {
            // Pending first, so the panic happens on the plugin's runtime, not in the first poll.
            tokio::time::sleep(Duration::from_millis(1)).await;
            panic!("{HANDLE_PANIC}");
        }
        Ok(Response::json(&json!({ "ok": true })))
    }

    async fn before_request(&self, _request: &Request) -> PluginResult<HookAction> {
        self.maybe_panic(PanicIn::BeforeRequest);
        Ok(HookAction::Continue)
    }

    async fn after_response(
        &self,
        _request: &Request,
        response: Response,
    ) -> PluginResult<Response> {
        self.maybe_panic(PanicIn::AfterResponse);
        Ok(response)
    }

    async fn health_check(&self) -> Health {
        self.maybe_panic(PanicIn::HealthCheck);
        Health::Healthy
    }
}

backworks_plugin_sdk::export_plugin!(
    BrokenPanic,
    name = "broken-panic",
    version = env!("CARGO_PKG_VERSION"),
    description = "test fixture: panics in handle and, by config, in other methods"
);

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use super::*;

    /// Runs `call` as a task and returns its panic message, or `None` if it did not panic.
    async fn panic_message<T: Send + 'static>(
        call: impl Future<Output = T> + Send + 'static,
    ) -> Option<String> {
        let payload = match tokio::spawn(call).await {
            Ok(_) => return None,
            Err(err) => err.into_panic(),
        };
        Some(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .expect("a string payload"),
        )
    }

    async fn configured(panic_in: &str) -> Arc<BrokenPanic> {
        let plugin = Arc::new(BrokenPanic::default());
        plugin
            .initialize(json!({ "panic_in": panic_in }))
            .await
            .unwrap();
        plugin
    }

    #[tokio::test]
    async fn ordinary_paths_answer_ok() {
        let plugin = BrokenPanic::default();
        plugin.initialize(Value::Null).await.unwrap();
        for path in ["/", "/fine", "/panic/not-at-end", "/panicky"] {
            let response = plugin.handle(Request::new("GET", path)).await.unwrap();
            assert_eq!(response.status, 200, "{path}");
            assert_eq!(response.body, br#"{"ok":true}"#);
        }
        // Unconfigured, the other methods behave.
        let request = Request::new("GET", "/x");
        assert_eq!(
            plugin.before_request(&request).await.unwrap(),
            HookAction::Continue
        );
        let response = plugin
            .after_response(&request, Response::new(204))
            .await
            .unwrap();
        assert_eq!(response.status, 204);
        assert_eq!(plugin.health_check().await, Health::Healthy);
    }

    #[tokio::test]
    async fn handle_panics_at_once() {
        let plugin = Arc::new(BrokenPanic::default());
        let message = panic_message(async move {
            let _ = plugin.handle(Request::new("GET", "/boom/panic")).await;
        })
        .await;
        assert_eq!(message.as_deref(), Some(HANDLE_PANIC));
    }

    #[tokio::test]
    async fn handle_panics_after_an_await() {
        // Polled once by hand, the call is still pending: it has not panicked yet.
        let plugin = BrokenPanic::default();
        let mut call = plugin.handle(Request::new("GET", "/panic-later"));
        let first = futures_poll_once(call.as_mut());
        assert!(first.is_pending());
        drop(call);

        let plugin = Arc::new(BrokenPanic::default());
        let message = panic_message(async move {
            let _ = plugin.handle(Request::new("GET", "/x/panic-later")).await;
        })
        .await;
        assert_eq!(message.as_deref(), Some(HANDLE_PANIC));
    }

    /// Polls `future` once with a waker that does nothing.
    fn futures_poll_once<F: Future + ?Sized>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn initialize_panics_when_configured() {
        let plugin = Arc::new(BrokenPanic::default());
        let message = panic_message(async move {
            let _ = plugin.initialize(json!({ "panic_in": "initialize" })).await;
        })
        .await;
        assert_eq!(
            message.as_deref(),
            Some("broken-panic: initialize exploded")
        );
    }

    #[tokio::test]
    async fn configured_methods_panic_and_only_they() {
        let request = Request::new("GET", "/x");

        let plugin = configured("health_check").await;
        let other = plugin.clone();
        assert_eq!(
            panic_message(async move { other.health_check().await })
                .await
                .as_deref(),
            Some("broken-panic: health_check exploded")
        );
        assert!(plugin.before_request(&request).await.is_ok());

        let plugin = configured("before_request").await;
        let (other, req) = (plugin.clone(), request.clone());
        assert_eq!(
            panic_message(async move { other.before_request(&req).await.is_ok() })
                .await
                .as_deref(),
            Some("broken-panic: before_request exploded")
        );
        assert_eq!(plugin.health_check().await, Health::Healthy);

        let plugin = configured("after_response").await;
        let (other, req) = (plugin.clone(), request.clone());
        assert_eq!(
            panic_message(
                async move { other.after_response(&req, Response::new(200)).await.is_ok() }
            )
            .await
            .as_deref(),
            Some("broken-panic: after_response exploded")
        );
        // `handle` keeps its own behaviour whatever the config says.
        let response = plugin.handle(request).await.unwrap();
        assert_eq!(response.body, br#"{"ok":true}"#);
    }

    #[tokio::test]
    async fn bad_config_is_rejected() {
        for config in [
            json!({ "panic_in": "handle" }),
            json!({ "panic_in": 1 }),
            json!({ "panic": "initialize" }),
            json!("initialize"),
        ] {
            let err = BrokenPanic::default()
                .initialize(config.clone())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "config", "{config}: {err}");
        }
    }
}

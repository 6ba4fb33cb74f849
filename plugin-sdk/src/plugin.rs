//! The trait a plugin implements.

use crate::{
    Health, HookAction, LentRequest, LentResponse, PluginResult, Request, RequestEdit, Response,
    ResponseEdit,
};

/// A Backworks plugin: implement this, then [`export_plugin!`](crate::export_plugin) it.
///
/// Every method has a default, so a plugin implements only what it serves. Methods take `&self` and
/// may run concurrently on many threads: keep state behind a `Mutex`, an atomic, or a concurrent map.
/// Plugin code may await tokio timers, sockets and clients; in a dynamic library it runs on a tokio
/// runtime of the plugin's own, never on the host's.
///
/// The name, version and description are not methods: [`export_plugin!`](crate::export_plugin)
/// writes them into the library file (from `Cargo.toml` by default) so the host can read them
/// without running any of the plugin's code.
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Hello;
///
/// #[async_trait]
/// impl BackworksPlugin for Hello {
///     async fn handle(&self, request: Request) -> PluginResult<Response> {
///         let name = request.param("name").unwrap_or("world");
///         Ok(Response::json(&json!({ "message": format!("Hello, {name}!") })))
///     }
/// }
///
/// export_plugin!(Hello);
/// ```
#[async_trait::async_trait]
pub trait BackworksPlugin: Send + Sync + 'static {
    /// The hooks this plugin implements. [`export_plugin!`](crate::export_plugin) writes them into
    /// the library's metadata, where the host reads them without running the plugin: an operator
    /// who lists a hook the plugin does not declare gets a config error, and one who leaves out a
    /// declared `before_request` (an auth check, say) gets a warning. Declare every hook you
    /// override:
    ///
    /// ```
    /// use backworks_plugin_sdk::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct ApiKey;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for ApiKey {
    ///     const HOOKS: Hooks = Hooks::BEFORE_REQUEST;
    ///
    ///     async fn before_request(&self, request: &Request) -> PluginResult<HookAction> {
    ///         match request.header("x-api-key") {
    ///             Some("let-me-in") => Ok(HookAction::Continue),
    ///             _ => Err(PluginError::Unauthorized("missing or wrong x-api-key".into())),
    ///         }
    ///     }
    /// }
    /// ```
    const HOOKS: crate::Hooks = crate::Hooks::NONE;

    /// The JSON Schema of the plugin's `config`, or `None` (the default) for a plugin that does not
    /// declare one. The host checks the config against it before [`initialize`](Self::initialize)
    /// (a config that fails keeps the plugin from starting, with each wrong field named), and turns
    /// a `${VAR}` whose schema type is a number or a boolean into one. Derive it from the config
    /// type with [`schema_for`](crate::schema_for) (the crate docs show the derive attributes):
    ///
    /// ```
    /// use backworks_plugin_sdk::prelude::*;
    ///
    /// #[derive(Default, Deserialize, JsonSchema)]
    /// #[serde(crate = "backworks_plugin_sdk::serde")]
    /// #[schemars(crate = "backworks_plugin_sdk::schemars")]
    /// struct Config {
    ///     limit: u32,
    /// }
    ///
    /// #[derive(Default)]
    /// struct Limited;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for Limited {
    ///     fn config_schema() -> Option<Value> {
    ///         Some(schema_for::<Config>())
    ///     }
    /// }
    /// ```
    ///
    /// A library plugin's schema is read through the vtable's `config_schema` entry, which runs
    /// this function and nothing else of the plugin (no instance is created).
    fn config_schema() -> Option<serde_json::Value>
    where
        Self: Sized,
    {
        None
    }

    /// Called once, before any other call, with the plugin's `config` from `backworks.yaml` (`null`
    /// when there is none). An error here keeps the plugin from serving.
    async fn initialize(&self, config: serde_json::Value) -> PluginResult<()> {
        let _ = config;
        Ok(())
    }

    /// Whether the plugin serves endpoints through [`handle_lent`](Self::handle_lent), reading the
    /// host's request in place, rather than [`handle`](Self::handle), which gets a copy. `false` by
    /// default. Set it when you implement `handle_lent`: a library then exports the vtable's
    /// `handle_lent` entry (ABI 1.2) and the host lends it every request, so none is copied into the
    /// plugin. (An older host, which does not know the entry, calls `handle`, whose default then
    /// serves through `handle_lent` with a copy.)
    const HANDLE_LENT: bool = false;

    /// Serves a request to one of the endpoints the config routes to this plugin.
    ///
    /// By default: with [`HANDLE_SYNC`](Self::HANDLE_SYNC), [`handle_sync`](Self::handle_sync)
    /// of this request; with [`HANDLE_LENT`](Self::HANDLE_LENT), [`handle_lent`](Self::handle_lent)
    /// of it, which is how a built-in plugin that implements only `handle_lent` is served;
    /// otherwise a 404 (the plugin serves no endpoint).
    async fn handle(&self, request: Request) -> PluginResult<Response> {
        if Self::HANDLE_SYNC {
            return self.handle_sync(request.lend());
        }
        if Self::HANDLE_LENT {
            return self.handle_lent(request.lend()).await;
        }
        Err(crate::PluginError::NotFound(format!(
            "this plugin serves no endpoint ({} {})",
            request.method, request.path
        )))
    }

    /// Serves a request like [`handle`](Self::handle), reading it where the host keeps it, without
    /// a copy. Called instead of `handle` when [`HANDLE_LENT`](Self::HANDLE_LENT) is set.
    ///
    /// The request is lent for the whole call, across every `.await` of it, also while the call
    /// waits: the host keeps it until the call's future is done or dropped. What the request hands
    /// out borrows it, so keeping any of it beyond the call (in a spawned task, a `static`, the
    /// plugin's state) does not compile; keep a copy instead ([`LentRequest::to_request`], or
    /// `.to_owned()` of a `&str`). The [`LentRequest`] docs show both.
    ///
    /// By default: with [`HANDLE_SYNC`](Self::HANDLE_SYNC), [`handle_sync`](Self::handle_sync);
    /// without `HANDLE_LENT`, `handle` of a copy; with it, a 404 (the plugin serves no endpoint).
    async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
        if Self::HANDLE_SYNC {
            return self.handle_sync(request);
        }
        if Self::HANDLE_LENT {
            return Err(crate::PluginError::NotFound(format!(
                "this plugin serves no endpoint ({} {})",
                request.method(),
                request.path()
            )));
        }
        self.handle(request.to_request()).await
    }

    /// Whether the plugin's endpoints are synchronous: they answer from the request and the
    /// plugin's own state and never wait (no timer, socket, lock held by a waiting task or other
    /// `.await`). `false` by default. Set it when you implement
    /// [`handle_sync`](Self::handle_sync): it then reads the host's request in place, as with
    /// [`HANDLE_LENT`](Self::HANDLE_LENT), and is called as a plain function, so a call costs no
    /// future, no allocation for one and no poll, on either side: a host of ABI 1.4 calls it
    /// through the vtable's `handle_now` without a future of its own either. `HANDLE_SYNC` takes
    /// precedence over `HANDLE_LENT` when both are set.
    ///
    /// A synchronous endpoint runs inline on the host's thread, like the first poll of an async
    /// one (inside the plugin's tokio runtime, with its log lines named after the instance): it
    /// must not block. An endpoint that waits for anything stays async. Every caller of the async
    /// entries (a built-in plugin's host, an older host, tests) reaches `handle_sync` through the
    /// defaults of [`handle`](Self::handle) and [`handle_lent`](Self::handle_lent).
    ///
    /// ```
    /// use backworks_plugin_sdk::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct Hello;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for Hello {
    ///     const HANDLE_SYNC: bool = true;
    ///
    ///     fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
    ///         let name = request.param("name").unwrap_or("world");
    ///         Ok(Response::text(format!("Hello, {name}!")))
    ///     }
    /// }
    ///
    /// let mut request = Request::new("GET", "/hello/ana");
    /// request.params.push(("name".into(), "ana".into()));
    /// let answer = Hello.handle_sync(request.lend()).unwrap();
    /// assert_eq!(answer.body, b"Hello, ana!");
    /// ```
    const HANDLE_SYNC: bool = false;

    /// Serves a request like [`handle_lent`](Self::handle_lent), as a plain function that never
    /// waits. Called instead of `handle_lent` (and `handle`) when
    /// [`HANDLE_SYNC`](Self::HANDLE_SYNC) is set. The request is lent for the call: keep a copy,
    /// never a borrow.
    ///
    /// By default: a 404 (the plugin serves no endpoint).
    fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
        Err(crate::PluginError::NotFound(format!(
            "this plugin serves no endpoint ({} {})",
            request.method(),
            request.path()
        )))
    }

    /// Runs before the endpoint when the plugin is in an endpoint's hook chain: go on, go on with a
    /// changed request, or answer early (for example 401).
    ///
    /// By default: with [`HOOKS_SYNC`](Self::HOOKS_SYNC),
    /// [`before_request_sync`](Self::before_request_sync) of this request; with
    /// [`HOOKS_LENT`](Self::HOOKS_LENT), [`before_request_lent`](Self::before_request_lent);
    /// otherwise go on.
    async fn before_request(&self, request: &Request) -> PluginResult<HookAction> {
        if Self::HOOKS_SYNC {
            let lent = request.lend();
            return Ok(self.before_request_sync(lent)?.into_action(&lent));
        }
        if Self::HOOKS_LENT {
            let lent = request.lend();
            return Ok(self.before_request_lent(lent).await?.into_action(&lent));
        }
        Ok(HookAction::Continue)
    }

    /// Runs after the endpoint (and after later hooks) when the plugin is in an endpoint's hook
    /// chain; returns the response to send, changed or not.
    async fn after_response(
        &self,
        request: &Request,
        response: Response,
    ) -> PluginResult<Response> {
        if Self::HOOKS_SYNC {
            let edit = self.after_response_sync(request.lend(), response.lend())?;
            return Ok(edit.apply(response));
        }
        if Self::HOOKS_LENT {
            let edit = self
                .after_response_lent(request.lend(), response.lend())
                .await?;
            return Ok(edit.apply(response));
        }
        Ok(response)
    }

    /// Whether the plugin's hooks run through [`before_request_lent`](Self::before_request_lent)
    /// and [`after_response_lent`](Self::after_response_lent), reading the host's request and
    /// response in place, rather than [`before_request`](Self::before_request) and
    /// [`after_response`](Self::after_response), which get copies. `false` by default. Set it when
    /// you implement the two `_lent` methods: a library then exports the vtable's
    /// `before_request_lent` and `after_response_lent` entries (ABI 1.2), nothing is copied into
    /// the plugin, and only what a hook changes crosses back (a header it sets, not a whole
    /// request or response). (An older host calls `before_request` and `after_response`, whose
    /// defaults then go through the `_lent` methods with copies.)
    ///
    /// ```
    /// use backworks_plugin_sdk::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct Tag;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for Tag {
    ///     const HOOKS: Hooks = Hooks::ALL;
    ///     const HOOKS_LENT: bool = true;
    ///
    ///     async fn before_request_lent(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
    ///         if request.header("x-tag").is_some() {
    ///             return Ok(RequestEdit::Continue);
    ///         }
    ///         Ok(RequestEdit::SetHeaders([("x-tag", "new")].into_iter().collect()))
    ///     }
    ///
    ///     async fn after_response_lent(
    ///         &self,
    ///         request: LentRequest<'_>,
    ///         _response: LentResponse<'_>,
    ///     ) -> PluginResult<ResponseEdit> {
    ///         Ok(match request.header("x-tag") {
    ///             Some(tag) => ResponseEdit::SetHeaders([("x-tag", tag)].into_iter().collect()),
    ///             None => ResponseEdit::Keep,
    ///         })
    ///     }
    /// }
    ///
    /// // The copying methods still work, through the lent ones (as a built-in plugin is called).
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let action = rt.block_on(Tag.before_request(&Request::new("GET", "/"))).unwrap();
    /// let HookAction::ContinueWith(changed) = action else { panic!("{action:?}") };
    /// assert_eq!(changed.header("x-tag"), Some("new"));
    /// let response = rt.block_on(Tag.after_response(&changed, Response::new(204))).unwrap();
    /// assert_eq!(response.headers.get("x-tag"), Some("new"));
    /// ```
    const HOOKS_LENT: bool = false;

    /// Runs before the endpoint like [`before_request`](Self::before_request), reading the
    /// request where the host keeps it, without a copy. Called instead of `before_request` when
    /// [`HOOKS_LENT`](Self::HOOKS_LENT) is set. The request is lent for the whole call, as to
    /// [`handle_lent`](Self::handle_lent); [`RequestEdit::SetHeaders`] sends back only the headers
    /// to set.
    ///
    /// By default: with [`HOOKS_SYNC`](Self::HOOKS_SYNC),
    /// [`before_request_sync`](Self::before_request_sync); without `HOOKS_LENT`, `before_request`
    /// of a copy; with it, go on.
    async fn before_request_lent(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
        if Self::HOOKS_SYNC {
            return self.before_request_sync(request);
        }
        if Self::HOOKS_LENT {
            return Ok(RequestEdit::Continue);
        }
        Ok(self.before_request(&request.to_request()).await?.into())
    }

    /// Runs after the endpoint like [`after_response`](Self::after_response), reading the request
    /// and the response where the host keeps them, without copies. Called instead of
    /// `after_response` when [`HOOKS_LENT`](Self::HOOKS_LENT) is set. Both are lent for the whole
    /// call; [`ResponseEdit::Keep`] sends nothing back, [`ResponseEdit::SetHeaders`] only the
    /// headers to set.
    ///
    /// By default: with [`HOOKS_SYNC`](Self::HOOKS_SYNC),
    /// [`after_response_sync`](Self::after_response_sync); without `HOOKS_LENT`, `after_response`
    /// of copies; with it, keep the response.
    async fn after_response_lent(
        &self,
        request: LentRequest<'_>,
        response: LentResponse<'_>,
    ) -> PluginResult<ResponseEdit> {
        if Self::HOOKS_SYNC {
            return self.after_response_sync(request, response);
        }
        if Self::HOOKS_LENT {
            return Ok(ResponseEdit::Keep);
        }
        let changed = self
            .after_response(&request.to_request(), response.to_response())
            .await?;
        Ok(ResponseEdit::Replace(changed))
    }

    /// Whether the plugin's hooks are synchronous: they answer from what the request and the
    /// response hold and the plugin's own state, and never wait (no timer, socket, lock held by a
    /// waiting task or other `.await`). `false` by default. Set it when you implement
    /// [`before_request_sync`](Self::before_request_sync) and
    /// [`after_response_sync`](Self::after_response_sync): they then read the host's request and
    /// response in place, as with [`HOOKS_LENT`](Self::HOOKS_LENT), and are called as plain
    /// functions, so a hook call costs no future, no allocation for one and no poll. It is the
    /// cheapest kind of hook: a request id, a header check, a tag.
    ///
    /// A synchronous hook runs inline on the host's thread, like the first poll of an async one
    /// (inside the plugin's tokio runtime, with its log lines named after the instance): it must
    /// not block. A hook that sometimes waits (a token lookup over the network, say) stays async;
    /// `HOOKS_SYNC` takes precedence over `HOOKS_LENT` when both are set. The other methods of
    /// the trait stay async either way, and every caller of the async hooks (a built-in plugin's
    /// host, an older host, tests) reaches the synchronous ones through their defaults.
    ///
    /// ```
    /// use backworks_plugin_sdk::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct Tag;
    ///
    /// #[async_trait]
    /// impl BackworksPlugin for Tag {
    ///     const HOOKS: Hooks = Hooks::ALL;
    ///     const HOOKS_SYNC: bool = true;
    ///
    ///     fn before_request_sync(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
    ///         if request.header("x-tag").is_some() {
    ///             return Ok(RequestEdit::Continue);
    ///         }
    ///         Ok(RequestEdit::SetHeaders([("x-tag", "new")].into_iter().collect()))
    ///     }
    ///
    ///     fn after_response_sync(
    ///         &self,
    ///         request: LentRequest<'_>,
    ///         _response: LentResponse<'_>,
    ///     ) -> PluginResult<ResponseEdit> {
    ///         Ok(match request.header("x-tag") {
    ///             Some(tag) => ResponseEdit::SetHeaders([("x-tag", tag)].into_iter().collect()),
    ///             None => ResponseEdit::Keep,
    ///         })
    ///     }
    /// }
    ///
    /// // Called directly...
    /// let request = Request::new("GET", "/");
    /// let edit = Tag.before_request_sync(request.lend()).unwrap();
    /// assert!(matches!(edit, RequestEdit::SetHeaders(ref headers) if headers.get("x-tag") == Some("new")));
    /// // ...or through the async methods, as a built-in plugin is called.
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let action = rt.block_on(Tag.before_request(&request)).unwrap();
    /// let HookAction::ContinueWith(changed) = action else { panic!("{action:?}") };
    /// let response = rt.block_on(Tag.after_response(&changed, Response::new(204))).unwrap();
    /// assert_eq!(response.headers.get("x-tag"), Some("new"));
    /// ```
    const HOOKS_SYNC: bool = false;

    /// Runs before the endpoint like [`before_request_lent`](Self::before_request_lent), as a
    /// plain function: called instead of it when [`HOOKS_SYNC`](Self::HOOKS_SYNC) is set. By
    /// default, go on.
    fn before_request_sync(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
        let _ = request;
        Ok(RequestEdit::Continue)
    }

    /// Runs after the endpoint like [`after_response_lent`](Self::after_response_lent), as a
    /// plain function: called instead of it when [`HOOKS_SYNC`](Self::HOOKS_SYNC) is set. By
    /// default, keep the response.
    fn after_response_sync(
        &self,
        request: LentRequest<'_>,
        response: LentResponse<'_>,
    ) -> PluginResult<ResponseEdit> {
        let _ = (request, response);
        Ok(ResponseEdit::Keep)
    }

    /// Reports the plugin's health.
    async fn health_check(&self) -> Health {
        Health::Healthy
    }

    /// Called once when the host stops; release what the plugin holds.
    async fn shutdown(&self) -> PluginResult<()> {
        Ok(())
    }
}

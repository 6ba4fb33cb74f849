//! One async `Plugin` trait over every kind of plugin, so the server never knows which kind it calls.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use crate::CallError;
use crate::DynamicPlugin;
use async_trait::async_trait;
use backworks_plugin_sdk::{
    BackworksPlugin, Health, HookAction, PluginError, PluginMetadata, Request, RequestEdit,
    Response, ResponseEdit,
};
use futures_util::FutureExt;

/// Where a plugin's code comes from, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A built-in plugin registered under this name with [`PluginHost::register_builtin`](crate::PluginHost::register_builtin).
    Builtin(String),
    /// A plugin library file.
    Library(PathBuf),
    /// A program speaking the wire protocol (`["python3", "plugins/report.py"]`); needs
    /// [`Isolation::Process`](crate::Isolation::Process).
    Command(Vec<String>),
}

/// Where a plugin's code comes from, as started: what [`PluginInfo`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKind {
    /// Compiled into the host binary and registered by name.
    Builtin,
    /// A dynamic library loaded from this file.
    Library(PathBuf),
    /// A supervised child process speaking the wire protocol; its command line (the runner and
    /// the library, or the configured command).
    Process(Vec<String>),
}

impl PluginKind {
    /// `"builtin"`, `"library"` or `"process"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginKind::Builtin => "builtin",
            PluginKind::Library(_) => "library",
            PluginKind::Process(_) => "process",
        }
    }
}

/// Who a plugin is.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The name the operator gave it; used in logs, errors and metrics.
    pub name: String,
    /// Where its code comes from.
    pub kind: PluginKind,
    /// What the plugin says of itself.
    pub metadata: PluginMetadata,
    /// The JSON Schema of its config, when it declares one: from
    /// [`BackworksPlugin::config_schema`] (a built-in, or a Rust library through its vtable), the
    /// `config_schema` key of its metadata (a C library), or its manifest (a process plugin).
    pub config_schema: Option<Arc<serde_json::Value>>,
}

/// A running plugin as the host sees it. Calls may run concurrently.
///
/// Errors are [`CallError`]s: the plugin's own ([`CallError::Plugin`]), or what the host adds (a
/// timeout, a crash, ...). A panic inside the plugin arrives as [`PluginError::Panic`] and
/// never unwinds into the caller.
#[async_trait]
pub trait Plugin: Send + Sync + std::fmt::Debug + 'static {
    /// Who this plugin is.
    fn info(&self) -> &PluginInfo;

    /// The JSON Schema of the plugin's config, when it declares one; the host checks the config
    /// against it before [`initialize`](Self::initialize).
    fn config_schema(&self) -> Option<&serde_json::Value> {
        self.info().config_schema.as_deref()
    }

    /// Hands the plugin its config; called once, before any other call.
    async fn initialize(&self, config: &serde_json::Value) -> Result<(), CallError>;

    /// Serves a request routed to the plugin.
    async fn handle(&self, request: Request) -> Result<Response, CallError>;

    /// Whether [`Plugin::handle_now`] answers: the plugin's endpoint never waits. A library
    /// plugin with ABI 1.4's `handle_now` and a built-in whose [`BackworksPlugin::HANDLE_SYNC`]
    /// is set do. By default: `false`.
    fn answers_now(&self) -> bool {
        false
    }

    /// Serves a request at once, without a future, when the plugin
    /// [answers at once](Plugin::answers_now); `None` when it does not (then [`Plugin::handle`]
    /// serves it). An implementation must answer `Some` whenever `answers_now` is `true`: the
    /// guard admits the call on `answers_now`'s word, and counts a `None` then as the plugin's
    /// invalid response. The request is lent for the call only. A wrapper with a policy of its own
    /// (as [`Guarded`](crate::Guarded)) makes the call under that policy. By default: `None`.
    fn handle_now(&self, _request: &Request) -> Option<Result<Response, CallError>> {
        None
    }

    /// Serves a request the caller shares: what a hook chain calls when its `after_response`
    /// hooks need the request afterwards. A library plugin that reads its requests lent (ABI
    /// 1.2's `handle_lent`) reads this one in place, without a copy (the `Arc` keeps it alive for
    /// as long as the plugin may read it, even if this future is leaked). By default:
    /// [`Plugin::handle`] of the request, copied only if it is still shared.
    async fn handle_shared(&self, request: Arc<Request>) -> Result<Response, CallError> {
        self.handle(Arc::unwrap_or_clone(request)).await
    }

    /// The plugin's `before_request` hook.
    async fn before_request(&self, request: &Request) -> Result<HookAction, CallError>;

    /// The plugin's `after_response` hook: the response to send instead of `response`. The
    /// response is lent, so that a caller whose hook fails can still send it as it stood.
    async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, CallError>;

    /// The plugin's `before_request` hook on a shared request, answering with an edit: what a
    /// hook chain calls. A library plugin with ABI 1.2's lent hooks reads the request in place
    /// (the `Arc` keeps it alive for as long as the plugin may read it, even if this future is
    /// leaked) and sends back only the headers it sets. By default: [`Plugin::before_request`].
    async fn before_request_shared(&self, request: Arc<Request>) -> Result<RequestEdit, CallError> {
        Ok(self.before_request(&request).await?.into())
    }

    /// The plugin's `after_response` hook on a shared request and response, answering with an
    /// edit: what a hook chain calls. As [`Plugin::before_request_shared`]: a library plugin with
    /// lent hooks reads both in place and sends back only what it changes. By default:
    /// [`Plugin::after_response`], whose answer replaces the response.
    async fn after_response_shared(
        &self,
        request: Arc<Request>,
        response: Arc<Response>,
    ) -> Result<ResponseEdit, CallError> {
        Ok(ResponseEdit::Replace(
            self.after_response(&request, &response).await?,
        ))
    }

    /// The plugin's health.
    async fn health_check(&self) -> Health;

    /// The library plugin this is, if it is one: the call guard ([`Guarded`](crate::Guarded))
    /// calls a library plugin's lent entries directly, holding the call's future inline instead
    /// of the box these methods return. By default (every other kind of plugin): `None`. A
    /// wrapper that puts a policy of its own around the plugin it wraps (as `Guarded` does) keeps
    /// the default, so that no outer caller goes around that policy.
    fn as_library(&self) -> Option<&DynamicPlugin> {
        None
    }

    /// Asks the plugin to release what it holds; no call follows.
    async fn shutdown(&self) -> Result<(), CallError>;
}

/// A [`BackworksPlugin`] compiled into the host, behind the [`Plugin`] trait. Panics in it are
/// caught like those of a library plugin.
pub struct BuiltinPlugin<P> {
    info: PluginInfo,
    plugin: P,
}

impl<P> std::fmt::Debug for BuiltinPlugin<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinPlugin")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<P: BackworksPlugin> BuiltinPlugin<P> {
    /// Wraps `plugin` under the instance name `name`, describing itself as `version`/`description`.
    pub fn new(name: &str, version: &str, description: &str, plugin: P) -> Self {
        BuiltinPlugin {
            info: PluginInfo {
                name: name.to_owned(),
                kind: PluginKind::Builtin,
                metadata: PluginMetadata {
                    abi_major: backworks_plugin_sdk::abi::ABI_MAJOR,
                    abi_minor: backworks_plugin_sdk::abi::ABI_MINOR,
                    sdk_version: backworks_plugin_sdk::SDK_VERSION.to_owned(),
                    name: name.to_owned(),
                    version: version.to_owned(),
                    description: description.to_owned(),
                    panic_unwind: true,
                    hooks: Some(P::HOOKS),
                    config_schema: None,
                },
                config_schema: P::config_schema().map(Arc::new),
            },
            plugin,
        }
    }

    /// The wrapped plugin.
    pub fn inner(&self) -> &P {
        &self.plugin
    }
}

async fn caught<T>(f: impl Future<Output = Result<T, PluginError>>) -> Result<T, CallError> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(PluginError::from_panic(p.as_ref())))
        .map_err(CallError::Plugin)
}

#[async_trait]
impl<P: BackworksPlugin> Plugin for BuiltinPlugin<P> {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn initialize(&self, config: &serde_json::Value) -> Result<(), CallError> {
        caught(self.plugin.initialize(config.clone())).await
    }

    async fn handle(&self, request: Request) -> Result<Response, CallError> {
        caught(self.plugin.handle(request)).await
    }

    fn answers_now(&self) -> bool {
        P::HANDLE_SYNC
    }

    fn handle_now(&self, request: &Request) -> Option<Result<Response, CallError>> {
        if !P::HANDLE_SYNC {
            return None;
        }
        let answer =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.plugin.handle_sync(request.lend())))
                .unwrap_or_else(|p| Err(PluginError::from_panic(p.as_ref())));
        Some(answer.map_err(CallError::Plugin))
    }

    async fn before_request(&self, request: &Request) -> Result<HookAction, CallError> {
        caught(self.plugin.before_request(request)).await
    }

    async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, CallError> {
        caught(self.plugin.after_response(request, response.clone())).await
    }

    async fn health_check(&self) -> Health {
        caught(async { Ok(self.plugin.health_check().await) })
            .await
            .unwrap_or_else(|e| Health::Unhealthy(e.to_string()))
    }

    async fn shutdown(&self) -> Result<(), CallError> {
        caught(self.plugin.shutdown()).await
    }
}

/// Makes built-in plugins by name: what `type: builtin` in the config refers to.
pub type BuiltinFactory = Arc<dyn Fn(&str) -> Arc<dyn Plugin> + Send + Sync>;

//! A plugin instance inside a loaded library, behind the host's [`Plugin`] trait.
//!
//! Each call lends the plugin borrowed views of the request, passes a zeroed [`BwOutput`], and either
//! gets the output at once ([`BW_READY`]) or a task it starts with a completion that resolves a
//! oneshot channel ([`BW_PENDING`]). Dropping the call's future cancels the task. The plugin's output
//! is copied into host types and released by the plugin's own `release` function.

use std::ffi::c_void;
use std::sync::Arc;

use async_trait::async_trait;
use backworks_plugin_sdk::abi::*;
use backworks_plugin_sdk::{Health, HookAction, PluginError, Request, Response};
use tokio::sync::oneshot;

use super::LoadedLibrary;
use crate::HostError;
use crate::plugin::{Plugin, PluginInfo, PluginKind};

/// What the host lends a plugin instance: its name for the log, and the logging function.
struct Services {
    abi: BwHostServices,
    /// Owns the bytes `abi.plugin_name` points to, and is what `abi.ctx` points to.
    name: Box<str>,
}

/// A plugin instance created from a [`LoadedLibrary`].
pub struct DynamicPlugin {
    info: PluginInfo,
    library: Arc<LoadedLibrary>,
    instance: *mut c_void,
    /// Boxed so its address, given to the plugin, never changes; dropped after `instance_free`.
    _services: Box<Services>,
}

// SAFETY: the ABI requires a plugin instance to accept calls from any thread, concurrently; the
// instance pointer is only passed to the library's functions.
unsafe impl Send for DynamicPlugin {}
// SAFETY: as above.
unsafe impl Sync for DynamicPlugin {}

impl std::fmt::Debug for DynamicPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicPlugin")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for DynamicPlugin {
    fn drop(&mut self) {
        if let Some(free) = self.library.vtable().instance_free {
            // SAFETY: the instance came from this library's `instance_new`; no call on it runs (calls
            // borrow `self`), and it is freed exactly once, here.
            unsafe { free(self.instance) };
        }
    }
}

/// Records one log line of a plugin in the host's log, tagged with the plugin's name.
unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, target: BwStr, message: BwStr) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `ctx` is the `Services::name` of a live instance (the plugin only calls this before
        // `instance_free` returns), and the strings are lent for the duration of the call.
        let (plugin, target, message) = unsafe {
            (
                &*ctx.cast::<Box<str>>(),
                String::from_utf8_lossy(target.as_bytes()),
                String::from_utf8_lossy(message.as_bytes()),
            )
        };
        let plugin: &str = plugin;
        match level {
            BW_LOG_ERROR => {
                tracing::error!(target: "plugin", plugin, plugin_target = %target, "{message}")
            }
            BW_LOG_WARN => {
                tracing::warn!(target: "plugin", plugin, plugin_target = %target, "{message}")
            }
            BW_LOG_INFO => {
                tracing::info!(target: "plugin", plugin, plugin_target = %target, "{message}")
            }
            BW_LOG_DEBUG => {
                tracing::debug!(target: "plugin", plugin, plugin_target = %target, "{message}")
            }
            _ => tracing::trace!(target: "plugin", plugin, plugin_target = %target, "{message}"),
        }
    });
}

fn max_log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => BW_LOG_ERROR,
        LevelFilter::WARN => BW_LOG_WARN,
        LevelFilter::INFO => BW_LOG_INFO,
        LevelFilter::DEBUG => BW_LOG_DEBUG,
        _ => BW_LOG_TRACE,
    }
}

/// An output the plugin handed over; released through the plugin's function when dropped.
struct Output {
    raw: BwOutput,
    /// Keeps the code of `raw.release` mapped (it always is: libraries are never unloaded).
    _library: Arc<LoadedLibrary>,
}

// SAFETY: see `BwOutput`'s `Send`: the output's memory belongs to the plugin's allocation made for
// this hand-over and may be released from any thread.
unsafe impl Send for Output {}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(release) = self.raw.release.take() {
            // SAFETY: the plugin gave us `owner` with this `release`, to be called exactly once.
            unsafe { release(self.raw.owner) };
        }
    }
}

/// Frees a task handle (cancelling the task if it still runs) when the call is done or dropped.
struct TaskGuard {
    handle: *mut c_void,
    cancel: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: the ABI lets the host release a task handle from any thread.
unsafe impl Send for TaskGuard {}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        // SAFETY: the handle came from `task_start` (or is a never-started task) and is released
        // exactly once, here.
        unsafe { (self.cancel)(self.handle) };
    }
}

type Completed = oneshot::Sender<BwOutput>;

/// A call that was started: finished already, or waiting for its task's completion.
enum Call {
    Ready(Output),
    Pending {
        receiver: oneshot::Receiver<BwOutput>,
        /// Cancels the task if this call is dropped before it completes.
        guard: TaskGuard,
        library: Arc<LoadedLibrary>,
    },
}

impl Call {
    async fn finish(self) -> Output {
        match self {
            Call::Ready(output) => output,
            Call::Pending {
                receiver,
                guard,
                library,
            } => {
                let raw = receiver.await.unwrap_or_else(|_| {
                    // Only if the plugin broke the ABI and dropped the completion uncalled.
                    let mut lost = BwOutput::empty();
                    lost.kind = BW_OUT_ERROR;
                    lost.code = BW_ERR_CANCELLED;
                    lost
                });
                drop(guard);
                Output {
                    raw,
                    _library: library,
                }
            }
        }
    }
}

/// The completion a pending task calls: moves the output into the waiting call's channel.
unsafe extern "C" fn on_complete(ctx: *mut c_void, output: *mut BwOutput) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `ctx` is the boxed sender made for this task, and the plugin calls the completion
        // exactly once; `output` is valid for the call and its contents are ours now.
        let (sender, output) = unsafe { (Box::from_raw(ctx.cast::<Completed>()), output.read()) };
        if let Err(unwanted) = sender.send(output) {
            // The call was dropped (cancelled): release the output here.
            if let Some(release) = unwanted.release {
                // SAFETY: as in `Output::drop`; the output was never handed to anyone else.
                unsafe { release(unwanted.owner) };
            }
        }
    });
}

/// Borrowed ABI views of a host request; valid while the request is.
struct RequestView {
    pairs: Vec<BwKv>,
    lens: [usize; 3],
}

fn str_view(s: &str) -> BwStr {
    BwStr::new(s.as_bytes())
}

impl RequestView {
    fn new(request: &Request) -> RequestView {
        let mut pairs =
            Vec::with_capacity(request.params.len() + request.query.len() + request.headers.len());
        let kv = |(k, v): (&str, &str)| BwKv {
            key: str_view(k),
            value: str_view(v),
        };
        pairs.extend(request.params.iter().map(|(k, v)| kv((k, v))));
        pairs.extend(request.query.iter().map(|(k, v)| kv((k, v))));
        pairs.extend(request.headers.iter().map(kv));
        RequestView {
            pairs,
            lens: [
                request.params.len(),
                request.query.len(),
                request.headers.len(),
            ],
        }
    }

    fn abi(&self, request: &Request) -> BwRequest {
        let [params, query, headers] = self.lens;
        let list = |start: usize, len: usize| BwKvList::new(&self.pairs[start..start + len]);
        BwRequest {
            method: str_view(&request.method),
            path: str_view(&request.path),
            params: list(0, params),
            query: list(params, query),
            headers: list(params + query, headers),
            body: BwStr::new(&request.body),
        }
    }
}

impl Output {
    fn message(&self) -> String {
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe { self.raw.message.to_string_lossy() }
    }

    fn error(&self) -> PluginError {
        let message = self.message();
        match self.raw.code {
            BW_ERR_PANIC => PluginError::Panic(message),
            BW_ERR_BAD_REQUEST => PluginError::BadRequest(message),
            BW_ERR_UNAUTHORIZED => PluginError::Unauthorized(message),
            BW_ERR_FORBIDDEN => PluginError::Forbidden(message),
            BW_ERR_NOT_FOUND => PluginError::NotFound(message),
            BW_ERR_CONFIG => PluginError::Config(message),
            BW_ERR_UNAVAILABLE => PluginError::Unavailable(message),
            BW_ERR_CANCELLED => PluginError::Cancelled,
            BW_ERR_STATUS => PluginError::Status {
                status: self.raw.response.status,
                message,
            },
            _ => PluginError::Internal(message),
        }
    }

    fn response(&self) -> Result<Response, PluginError> {
        let status = self.raw.response.status;
        if !(100..=999).contains(&status) {
            return Err(PluginError::Internal(format!(
                "plugin returned an invalid HTTP status {status}"
            )));
        }
        // SAFETY: the output is unreleased, so its views are valid.
        Ok(unsafe { self.raw.response.to_response() })
    }

    fn request(&self) -> Request {
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe { self.raw.request.to_request() }
    }

    fn unexpected(&self, call: &str) -> PluginError {
        if self.raw.kind == BW_OUT_ERROR {
            self.error()
        } else {
            PluginError::Internal(format!(
                "plugin answered `{call}` with output kind {}",
                self.raw.kind
            ))
        }
    }
}

impl DynamicPlugin {
    /// Creates an instance named `name` of the plugin in `library`.
    pub fn new(library: Arc<LoadedLibrary>, name: &str) -> Result<DynamicPlugin, HostError> {
        let mut services = Box::new(Services {
            abi: BwHostServices {
                size: size_of::<BwHostServices>() as u32,
                abi_minor: ABI_MINOR,
                reserved: 0,
                ctx: std::ptr::null_mut(),
                plugin_name: BwStr::EMPTY,
                max_log_level: max_log_level(),
                log: Some(host_log),
            },
            name: name.into(),
        });
        services.abi.plugin_name = str_view(&services.name);
        services.abi.ctx = (&raw mut services.name).cast();
        let vtable = library.vtable();
        let mut out = BwOutput::empty();
        let instance = match vtable.instance_new {
            // SAFETY: checked vtable of a loaded library; `services` outlives the instance (it is
            // dropped after `instance_free`), and `out` is a valid zeroed output.
            Some(new) => unsafe { new(&raw const services.abi, &mut out) },
            None => std::ptr::null_mut(),
        };
        let out = Output {
            raw: out,
            _library: library.clone(),
        };
        if instance.is_null() {
            return Err(HostError::Start {
                plugin: name.to_owned(),
                source: out.unexpected("instance_new"),
            });
        }
        Ok(DynamicPlugin {
            info: PluginInfo {
                name: name.to_owned(),
                kind: PluginKind::Library(library.path().to_owned()),
                metadata: library.metadata().clone(),
            },
            library,
            instance,
            _services: services,
        })
    }

    /// Starts one ABI call: `call` gets the instance and a zeroed output and returns the ABI status.
    /// Synchronous, so the borrowed views the closure captures never live across an `.await`.
    fn start(&self, call: impl FnOnce(*mut c_void, *mut BwOutput) -> i32) -> Call {
        let mut raw = BwOutput::empty();
        let status = call(self.instance, &mut raw);
        let vtable = self.library.vtable();
        let library = self.library.clone();
        if status != BW_PENDING || raw.kind != BW_OUT_PENDING {
            return Call::Ready(Output {
                raw,
                _library: library,
            });
        }
        let (sender, receiver) = oneshot::channel::<BwOutput>();
        let ctx = Box::into_raw(Box::new(sender));
        let completion = BwCompletion {
            ctx: ctx.cast(),
            complete: Some(on_complete),
        };
        let (Some(start), Some(cancel)) = (vtable.task_start, vtable.task_cancel) else {
            unreachable!("checked at load time");
        };
        // SAFETY: the task came from this library's pending output; the completion's context is a
        // boxed sender that `on_complete` takes back exactly once.
        let handle = unsafe { start(raw.task, completion) };
        Call::Pending {
            receiver,
            guard: TaskGuard { handle, cancel },
            library,
        }
    }

    fn vtable(&self) -> &'static BwPluginVTable {
        self.library.vtable()
    }
}

#[async_trait]
impl Plugin for DynamicPlugin {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn initialize(&self, config: &serde_json::Value) -> Result<(), PluginError> {
        let json = serde_json::to_vec(config)
            .map_err(|e| PluginError::Config(format!("cannot encode config: {e}")))?;
        let f = self.vtable().initialize.expect("checked at load time");
        // SAFETY: live instance of this library; the config bytes and output outlive the call.
        let call = self.start(|instance, out| unsafe { f(instance, BwStr::new(&json), out) });
        let out = call.finish().await;
        match out.raw.kind {
            BW_OUT_DONE => Ok(()),
            _ => Err(out.unexpected("initialize")),
        }
    }

    async fn handle(&self, request: Request) -> Result<Response, PluginError> {
        let f = self.vtable().handle.expect("checked at load time");
        let call = {
            let view = RequestView::new(&request);
            let abi = view.abi(&request);
            // SAFETY: live instance; the request views borrow `request`, which outlives the call (the
            // plugin copies what it keeps before returning, even when the call is pending).
            self.start(|instance, out| unsafe { f(instance, &abi, out) })
        };
        let out = call.finish().await;
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(),
            _ => Err(out.unexpected("handle")),
        }
    }

    async fn before_request(&self, request: &Request) -> Result<HookAction, PluginError> {
        let f = self.vtable().before_request.expect("checked at load time");
        let call = {
            let view = RequestView::new(request);
            let abi = view.abi(request);
            // SAFETY: as in `handle`.
            self.start(|instance, out| unsafe { f(instance, &abi, out) })
        };
        let out = call.finish().await;
        match out.raw.kind {
            BW_OUT_CONTINUE => Ok(HookAction::Continue),
            BW_OUT_REQUEST => Ok(HookAction::ContinueWith(out.request())),
            BW_OUT_RESPONSE => out.response().map(HookAction::Respond),
            _ => Err(out.unexpected("before_request")),
        }
    }

    async fn after_response(
        &self,
        request: &Request,
        response: Response,
    ) -> Result<Response, PluginError> {
        let f = self.vtable().after_response.expect("checked at load time");
        let call = {
            let view = RequestView::new(request);
            let abi = view.abi(request);
            let headers: Vec<BwKv> = response
                .headers
                .iter()
                .map(|(k, v)| BwKv {
                    key: str_view(k),
                    value: str_view(v),
                })
                .collect();
            let abi_response = BwResponse {
                status: response.status,
                headers: BwKvList::new(&headers),
                body: BwStr::new(&response.body),
            };
            // SAFETY: as in `handle`; the response views borrow `response` and `headers`, which
            // outlive the call.
            self.start(|instance, out| unsafe { f(instance, &abi, &abi_response, out) })
        };
        let out = call.finish().await;
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(),
            _ => Err(out.unexpected("after_response")),
        }
    }

    async fn health_check(&self) -> Health {
        let f = self.vtable().health_check.expect("checked at load time");
        // SAFETY: live instance of this library; valid output.
        let out = self
            .start(|instance, out| unsafe { f(instance, out) })
            .finish()
            .await;
        match (out.raw.kind, out.raw.code) {
            (BW_OUT_HEALTH, BW_HEALTH_HEALTHY) => Health::Healthy,
            (BW_OUT_HEALTH, BW_HEALTH_DEGRADED) => Health::Degraded(out.message()),
            (BW_OUT_HEALTH, _) => Health::Unhealthy(out.message()),
            _ => Health::Unhealthy(out.unexpected("health_check").to_string()),
        }
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        let f = self.vtable().shutdown.expect("checked at load time");
        // SAFETY: live instance of this library; valid output.
        let out = self
            .start(|instance, out| unsafe { f(instance, out) })
            .finish()
            .await;
        match out.raw.kind {
            BW_OUT_DONE => Ok(()),
            _ => Err(out.unexpected("shutdown")),
        }
    }
}

impl DynamicPlugin {
    /// Calls the plugin's `handle` straight through the vtable with a prebuilt request, then releases
    /// the output; returns the response status (0 when the call did not answer at once). The floor
    /// under every host call, for benchmarks.
    #[doc(hidden)]
    pub fn bare_handle(&self, request: &BwRequest) -> u16 {
        let Some(handle) = self.vtable().handle else {
            return 0;
        };
        let mut raw = BwOutput::empty();
        // SAFETY: live instance of this library; the request and output outlive the call.
        let status = unsafe { handle(self.instance, request, &mut raw) };
        let output = Output {
            raw,
            _library: self.library.clone(),
        };
        if status == BW_READY && output.raw.kind == BW_OUT_RESPONSE {
            output.raw.response.status
        } else {
            0
        }
    }
}

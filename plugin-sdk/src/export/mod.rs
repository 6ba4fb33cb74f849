//! The plugin side of the C ABI: the `extern "C"` functions behind [`export_plugin!`].
//!
//! Not a public API: [`export_plugin!`] is. Every function here catches panics, so none crosses the
//! boundary, and turns a plugin's future into the ABI's ready-or-pending protocol:
//!
//! 1. The call's future is polled once, inline, on the host's thread, inside the plugin's own tokio
//!    runtime context. A handler that does not wait (most do not) finishes here, with no thread hop.
//! 2. If it is pending, the host gets a task and starts it with a completion; the task then runs on
//!    the plugin's runtime, so while the plugin waits for I/O it holds no host thread, and completes
//!    exactly once, also when cancelled.

use std::ffi::c_void;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;

use crate::abi::*;
use crate::{BackworksPlugin, Health, HookAction, PluginError, Request, Response};

/// Writes the metadata section and the exported vtable of a plugin library.
///
/// `export_plugin!(MyPlugin)` takes the name, version and description from the plugin crate's
/// `Cargo.toml`; `export_plugin!(MyPlugin, name = "x", version = "1.0.0", description = "...")`
/// sets them (string literals or `const` strings). The type must implement [`BackworksPlugin`] and
/// [`Default`]; the host creates one value per configured plugin instance.
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Counter(std::sync::atomic::AtomicU64);
///
/// #[async_trait]
/// impl BackworksPlugin for Counter {}
///
/// export_plugin!(Counter, name = "counter", version = "1.0.0", description = "counts");
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty $(,)?) => {
        $crate::export_plugin!(
            $plugin,
            name = env!("CARGO_PKG_NAME"),
            version = env!("CARGO_PKG_VERSION"),
            description = env!("CARGO_PKG_DESCRIPTION"),
        );
    };
    ($plugin:ty, name = $name:expr, version = $version:expr, description = $description:expr $(,)?) => {
        const _: () = {
            const __BW_PANIC_UNWIND: bool = cfg!(panic = "unwind");
            const __BW_META_LEN: usize =
                $crate::metadata::encoded_len($name, $version, $description, __BW_PANIC_UNWIND);
            #[used]
            #[cfg_attr(
                any(target_os = "macos", target_os = "ios"),
                unsafe(link_section = "__DATA,__bw_meta")
            )]
            #[cfg_attr(windows, unsafe(link_section = ".bwmeta"))]
            #[cfg_attr(
                not(any(target_os = "macos", target_os = "ios", windows)),
                unsafe(link_section = ".backworks_meta")
            )]
            static __BW_METADATA: [u8; __BW_META_LEN] =
                $crate::metadata::encode($name, $version, $description, __BW_PANIC_UNWIND);

            #[unsafe(no_mangle)]
            #[allow(non_upper_case_globals)]
            static backworks_plugin: $crate::abi::BwPluginVTable =
                $crate::export::vtable::<$plugin>(&__BW_METADATA);
        };
    };
}

/// The vtable of plugin type `P`, pointing at `metadata`. Used by [`export_plugin!`].
pub const fn vtable<P: BackworksPlugin + Default>(metadata: &'static [u8]) -> BwPluginVTable {
    BwPluginVTable {
        magic: ABI_MAGIC,
        size: size_of::<BwPluginVTable>() as u32,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        metadata: BwStr::new(metadata),
        instance_new: Some(instance_new::<P>),
        instance_free: Some(instance_free::<P>),
        initialize: Some(initialize::<P>),
        handle: Some(handle::<P>),
        before_request: Some(before_request::<P>),
        after_response: Some(after_response::<P>),
        health_check: Some(health_check::<P>),
        shutdown: Some(shutdown::<P>),
        task_start: Some(task_start),
        task_cancel: Some(task_cancel),
    }
}

/// The host's services for one instance, shared with every call and log line of that instance.
pub(crate) struct HostLink {
    /// Null once the instance is freed: the host's struct may then be gone.
    services: RwLock<*const BwHostServices>,
    max_level: u32,
}

// SAFETY: the host promises its services struct is thread-safe and stays valid until
// `instance_free` returns; `instance_free` nulls the pointer under the write lock first, and every
// read happens under the read lock, so no thread uses it after that.
unsafe impl Send for HostLink {}
// SAFETY: as above.
unsafe impl Sync for HostLink {}

impl HostLink {
    /// Most verbose `BW_LOG_*` level the host records.
    pub(crate) fn max_level(&self) -> u32 {
        self.max_level
    }

    /// Hands one log line to the host; dropped if the instance is gone or the host has no logger.
    pub(crate) fn log(&self, level: u32, target: &str, message: &str) {
        if level > self.max_level {
            return;
        }
        let Ok(services) = self.services.read() else {
            return;
        };
        if services.is_null() {
            return;
        }
        // SAFETY: not null, so `instance_free` has not run and the host keeps the struct valid.
        let services = unsafe { &**services };
        if let Some(log) = services.log {
            // SAFETY: the host's logger is thread-safe, never unwinds, and only borrows the strings
            // for the duration of the call.
            unsafe {
                log(
                    services.ctx,
                    level,
                    BwStr::new(target.as_bytes()),
                    BwStr::new(message.as_bytes()),
                )
            };
        }
    }
}

struct Instance<P> {
    plugin: Arc<P>,
    host: Arc<HostLink>,
}

/// What a finished call hands over, before it is written into a [`BwOutput`].
enum Outcome {
    Done,
    Response(Response),
    Request(Request),
    Continue,
    Health(Health),
    Error(PluginError),
}

/// A call's future: one allocation, wrapped so its instance is current while it is polled.
type BoxFuture = crate::logging::WithHost<Pin<Box<dyn Future<Output = Outcome> + Send>>>;

/// A call that did not finish on its first poll. Owned by the host until it starts or cancels it.
enum Task {
    Pending(BoxFuture),
    Started(tokio::task::AbortHandle),
    Taken,
}

/// Runs `body`, turning a panic into an error output. The last line of defence of every shim.
fn guard(out: *mut BwOutput, body: impl FnOnce() -> i32) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(payload) => {
            let error = PluginError::from_panic(payload.as_ref());
            if !out.is_null() {
                // SAFETY: the host passes a valid, exclusive output for the duration of the call.
                unsafe { write_output(&mut *out, Outcome::Error(error)) };
            }
            BW_READY
        }
    }
}

/// Polls `future` once in the plugin's runtime; writes its outcome, or a pending task, to `out`.
fn drive(
    host: &Arc<HostLink>,
    out: *mut BwOutput,
    future: impl Future<Output = Outcome> + Send + 'static,
) -> i32 {
    let runtime = match crate::runtime::get() {
        Ok(runtime) => runtime,
        Err(error) => {
            // SAFETY: the host passes a valid, exclusive output for the duration of the call.
            unsafe { write_output(&mut *out, Outcome::Error(error)) };
            return BW_READY;
        }
    };
    let mut future: BoxFuture =
        crate::logging::WithHost::new(
            host.clone(),
            Box::pin(AssertUnwindSafe(future).catch_unwind().map(|r| {
                r.unwrap_or_else(|p| Outcome::Error(PluginError::from_panic(p.as_ref())))
            })),
        );
    let first = {
        let _context = runtime.enter();
        Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop()))
    };
    // SAFETY: the host passes a valid, exclusive output for the duration of the call.
    let out = unsafe { &mut *out };
    match first {
        Poll::Ready(outcome) => {
            write_output(out, outcome);
            BW_READY
        }
        Poll::Pending => {
            *out = BwOutput::empty();
            out.kind = BW_OUT_PENDING;
            out.task = Box::into_raw(Box::new(Task::Pending(future))).cast();
            BW_PENDING
        }
    }
}

/// Completes a started task exactly once: with its outcome, or as cancelled when dropped unfinished.
struct Completion(Option<BwCompletion>);

// SAFETY: the host's completion may be called from any thread (ABI rule); the context pointer is the
// host's to interpret.
unsafe impl Send for Completion {}

impl Completion {
    fn complete(mut self, outcome: Outcome) {
        if let Some(completion) = self.0.take() {
            let mut output = BwOutput::empty();
            write_output(&mut output, outcome);
            if let Some(complete) = completion.complete {
                // SAFETY: called exactly once (the option is taken) with an output the host now owns.
                unsafe { complete(completion.ctx, &mut output) };
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.0.is_some() {
            Completion(self.0.take()).complete(Outcome::Error(PluginError::Cancelled));
        }
    }
}

unsafe extern "C" fn task_start(task: *mut c_void, completion: BwCompletion) -> *mut c_void {
    let completion = Completion(Some(completion));
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `task` came from `drive` and the host passes it here once; it owns it until it
        // passes the returned handle to `task_cancel`.
        let cell = unsafe { &mut *task.cast::<Task>() };
        let Task::Pending(future) = std::mem::replace(cell, Task::Taken) else {
            return Err(completion);
        };
        let runtime = match crate::runtime::get() {
            Ok(runtime) => runtime,
            Err(error) => {
                completion.complete(Outcome::Error(error));
                return Ok(());
            }
        };
        let handle = runtime.spawn(async move {
            let outcome = future.await;
            completion.complete(outcome);
        });
        *cell = Task::Started(handle.abort_handle());
        Ok(())
    }));
    match result {
        Ok(Ok(())) => {}
        // A task started twice: report it to this second completion rather than hang.
        Ok(Err(completion)) => completion.complete(Outcome::Error(PluginError::Internal(
            "task started twice".to_owned(),
        ))),
        // The completion was moved into the closure and dropped during unwinding, which reported
        // the task as cancelled.
        Err(_) => {}
    }
    task
}

unsafe extern "C" fn task_cancel(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `handle` came from `drive`/`task_start`, and the host passes it here exactly once.
        let task = unsafe { Box::from_raw(handle.cast::<Task>()) };
        match *task {
            Task::Started(abort) => abort.abort(),
            Task::Pending(future) => {
                // Dropping a future may touch its timers or sockets: do it inside the runtime.
                let _context = crate::runtime::get().map(|rt| rt.enter());
                drop(future);
            }
            Task::Taken => {}
        }
    }));
}

unsafe extern "C" fn instance_new<P: BackworksPlugin + Default>(
    services: *const BwHostServices,
    out: *mut BwOutput,
) -> *mut c_void {
    let mut instance = std::ptr::null_mut();
    guard(out, || {
        if services.is_null() {
            // SAFETY: the host passes a valid, exclusive output for the duration of the call.
            unsafe {
                write_output(
                    &mut *out,
                    Outcome::Error(PluginError::Internal("no host services".into())),
                )
            };
            return BW_READY;
        }
        // SAFETY: the host keeps its services valid until `instance_free`; we read only the fields
        // its `size` says it has (all of v1.0's).
        let host = unsafe { &*services };
        if (host.size as usize) < size_of::<BwHostServices>() {
            // SAFETY: as above.
            unsafe {
                write_output(
                    &mut *out,
                    Outcome::Error(PluginError::Internal(format!(
                        "host services are {} bytes, expected at least {}",
                        host.size,
                        size_of::<BwHostServices>()
                    ))),
                )
            };
            return BW_READY;
        }
        let link = Arc::new(HostLink {
            services: RwLock::new(services),
            max_level: host.max_log_level,
        });
        crate::logging::install(&link);
        let boxed = Box::new(Instance {
            plugin: Arc::new(P::default()),
            host: link,
        });
        instance = Box::into_raw(boxed).cast();
        // SAFETY: as above.
        unsafe { write_output(&mut *out, Outcome::Done) };
        BW_READY
    });
    instance
}

unsafe extern "C" fn instance_free<P: BackworksPlugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `instance` came from `instance_new::<P>`, and the host frees it once, when no call
        // on it runs.
        let instance = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
        crate::logging::uninstall(&instance.host);
        if let Ok(mut services) = instance.host.services.write() {
            *services = std::ptr::null();
        }
        let _context = crate::runtime::get().map(|rt| rt.enter());
        drop(instance);
    }));
}

/// The instance behind a pointer the host passed.
///
/// # Safety
/// `instance` must come from `instance_new::<P>` and not be freed yet.
unsafe fn instance<'a, P>(instance: *mut c_void) -> &'a Instance<P> {
    // SAFETY: the caller's contract.
    unsafe { &*instance.cast::<Instance<P>>() }
}

unsafe extern "C" fn initialize<P: BackworksPlugin>(
    this: *mut c_void,
    config_json: BwStr,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library.
        let this = unsafe { instance::<P>(this) };
        // SAFETY: the host lends the config for the duration of the call; we parse it now.
        let config = match serde_json::from_slice(unsafe { config_json.as_bytes() }) {
            Ok(config) => config,
            Err(e) => {
                let error = PluginError::Config(format!("config is not JSON: {e}"));
                // SAFETY: valid output for the duration of the call.
                unsafe { write_output(&mut *out, Outcome::Error(error)) };
                return BW_READY;
            }
        };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            match plugin.initialize(config).await {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

unsafe extern "C" fn handle<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request valid for the call.
        let (this, request) = unsafe { (instance::<P>(this), (*request).to_request()) };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            match plugin.handle(request).await {
                Ok(response) => Outcome::Response(response),
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

unsafe extern "C" fn before_request<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request valid for the call.
        let (this, request) = unsafe { (instance::<P>(this), (*request).to_request()) };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            match plugin.before_request(&request).await {
                Ok(HookAction::Continue) => Outcome::Continue,
                Ok(HookAction::ContinueWith(request)) => Outcome::Request(request),
                Ok(HookAction::Respond(response)) => Outcome::Response(response),
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

unsafe extern "C" fn after_response<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    response: *const BwResponse,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library, and a request and response valid
        // for the duration of the call.
        let (this, request, response) = unsafe {
            (
                instance::<P>(this),
                (*request).to_request(),
                (*response).to_response(),
            )
        };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            match plugin.after_response(&request, response).await {
                Ok(response) => Outcome::Response(response),
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

unsafe extern "C" fn health_check<P: BackworksPlugin>(
    this: *mut c_void,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library.
        let this = unsafe { instance::<P>(this) };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            Outcome::Health(plugin.health_check().await)
        })
    })
}

unsafe extern "C" fn shutdown<P: BackworksPlugin>(this: *mut c_void, out: *mut BwOutput) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library.
        let this = unsafe { instance::<P>(this) };
        let plugin = this.plugin.clone();
        drive(&this.host, out, async move {
            match plugin.shutdown().await {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

/// What an output's `owner` points to: the values its views borrow from.
struct Owned {
    pairs: Vec<BwKv>,
    request: Option<Request>,
    response: Option<Response>,
    message: String,
}

unsafe extern "C" fn release_owned(owner: *mut c_void) {
    if !owner.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `owner` is the `Box<Owned>` leaked by `write_output`, released once by the
            // host.
            drop(unsafe { Box::from_raw(owner.cast::<Owned>()) })
        }));
    }
}

fn str_view(s: &str) -> BwStr {
    BwStr::new(s.as_bytes())
}

fn pair_views(pairs: impl Iterator<Item = (BwStr, BwStr)>, into: &mut Vec<BwKv>) -> (usize, usize) {
    let start = into.len();
    into.extend(pairs.map(|(key, value)| BwKv { key, value }));
    (start, into.len() - start)
}

/// Fills `out` with `outcome`. Borrowed views point into a boxed [`Owned`] that `release` frees.
fn write_output(out: &mut BwOutput, outcome: Outcome) {
    *out = BwOutput::empty();
    let mut owned = Box::new(Owned {
        pairs: Vec::new(),
        request: None,
        response: None,
        message: String::new(),
    });
    match outcome {
        Outcome::Done => {
            out.kind = BW_OUT_DONE;
            return;
        }
        Outcome::Continue => {
            out.kind = BW_OUT_CONTINUE;
            return;
        }
        Outcome::Health(Health::Healthy) => {
            out.kind = BW_OUT_HEALTH;
            out.code = BW_HEALTH_HEALTHY;
            return;
        }
        Outcome::Health(health) => {
            out.kind = BW_OUT_HEALTH;
            out.code = match health {
                Health::Degraded(_) => BW_HEALTH_DEGRADED,
                _ => BW_HEALTH_UNHEALTHY,
            };
            owned.message = health.message().to_owned();
        }
        Outcome::Error(error) => {
            out.kind = BW_OUT_ERROR;
            out.code = match &error {
                PluginError::Panic(_) => BW_ERR_PANIC,
                PluginError::BadRequest(_) => BW_ERR_BAD_REQUEST,
                PluginError::Unauthorized(_) => BW_ERR_UNAUTHORIZED,
                PluginError::Forbidden(_) => BW_ERR_FORBIDDEN,
                PluginError::NotFound(_) => BW_ERR_NOT_FOUND,
                PluginError::Config(_) => BW_ERR_CONFIG,
                PluginError::Unavailable(_) => BW_ERR_UNAVAILABLE,
                PluginError::Cancelled => BW_ERR_CANCELLED,
                PluginError::Status { status, .. } => {
                    out.response.status = *status;
                    BW_ERR_STATUS
                }
                // The host-made kinds (timeout, overloaded, ...) have no code of their own: they
                // cross as their HTTP status, so a plugin passing one on keeps its meaning.
                PluginError::Timeout(_)
                | PluginError::Overloaded(_)
                | PluginError::CircuitOpen { .. }
                | PluginError::Crashed(_)
                | PluginError::InvalidResponse(_) => {
                    out.response.status = error.status();
                    BW_ERR_STATUS
                }
                _ => BW_ERR_INTERNAL,
            };
            owned.message = error.message().to_owned();
        }
        Outcome::Response(response) => {
            out.kind = BW_OUT_RESPONSE;
            owned.response = Some(response);
        }
        Outcome::Request(request) => {
            out.kind = BW_OUT_REQUEST;
            owned.request = Some(request);
        }
    }
    // Views point into the heap buffers of the owned values, which stay put when the box moves.
    let Owned {
        pairs,
        request,
        response,
        message,
        ..
    } = &mut *owned;
    out.message = str_view(message);
    if let Some(response) = response {
        let (start, len) = pair_views(
            response
                .headers
                .iter()
                .map(|(k, v)| (str_view(k), str_view(v))),
            pairs,
        );
        out.response = BwResponse {
            status: response.status,
            headers: BwKvList {
                ptr: std::ptr::null(),
                len,
            },
            body: BwStr::new(&response.body),
        };
        out.response.headers.ptr = start as *const BwKv;
    }
    if let Some(request) = request {
        let (params, n_params) = pair_views(
            request
                .params
                .iter()
                .map(|(k, v)| (str_view(k), str_view(v))),
            pairs,
        );
        let (query, n_query) = pair_views(
            request
                .query
                .iter()
                .map(|(k, v)| (str_view(k), str_view(v))),
            pairs,
        );
        let (headers, n_headers) = pair_views(
            request
                .headers
                .iter()
                .map(|(k, v)| (str_view(k), str_view(v))),
            pairs,
        );
        out.request = BwRequest {
            method: str_view(&request.method),
            path: str_view(&request.path),
            params: BwKvList {
                ptr: params as *const BwKv,
                len: n_params,
            },
            query: BwKvList {
                ptr: query as *const BwKv,
                len: n_query,
            },
            headers: BwKvList {
                ptr: headers as *const BwKv,
                len: n_headers,
            },
            body: BwStr::new(&request.body),
        };
    }
    // `pairs` is complete; turn the start indexes stored above into pointers into it.
    let base = pairs.as_ptr();
    let fix = |list: &mut BwKvList| {
        list.ptr = if list.len == 0 {
            BwKvList::EMPTY.ptr
        } else {
            base.wrapping_add(list.ptr as usize)
        };
    };
    if out.kind == BW_OUT_RESPONSE {
        fix(&mut out.response.headers);
    }
    if out.kind == BW_OUT_REQUEST {
        fix(&mut out.request.params);
        fix(&mut out.request.query);
        fix(&mut out.request.headers);
    }
    out.owner = Box::into_raw(owned).cast();
    out.release = Some(release_owned);
}

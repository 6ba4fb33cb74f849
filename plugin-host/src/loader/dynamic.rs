//! A plugin instance inside a loaded library, behind the host's [`Plugin`] trait.
//!
//! Each call lends the plugin borrowed views of the request, passes a zeroed [`BwOutput`], and either
//! gets the output at once ([`BW_READY`]) or a task it starts with a completion that resolves a
//! oneshot channel ([`BW_PENDING`]). Dropping the call's future cancels the task. The plugin's output
//! is copied into host types and released by the plugin's own `release` function.
//!
//! An endpoint call goes to the plugin's `handle_now` when it has one (ABI 1.4, a plugin whose
//! endpoint never waits) and the caller can take an answer at once: made and answered there, with
//! the views on the stack and no future ([`DynamicPlugin::now_handle`]). Else to its `handle_lent`
//! (ABI 1.2): the request and its views then live in the call's future, lent until the call is
//! over ([`LentHandle`]), and the plugin reads them in place. Otherwise (a plugin built for ABI
//! 1.0 or 1.1, or one that does not opt in) it goes to `handle`, which lends them for the call
//! only and the plugin copies them.
//!
//! A hook call goes to the plugin's `_now` entry when it has one (ABI 1.3, a plugin whose hooks
//! never wait): made and answered at once, with the views on the stack and the headers it sets
//! copied straight into the edit through a [`HeaderSink`], so no future is made and no output
//! released ([`DynamicPlugin::now_before_request`]). Else to its `_lent` entry ([`LentHook`]),
//! else to the copying `before_request` / `after_response`.

use std::ffi::c_void;
use std::marker::PhantomPinned;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use backworks_plugin_sdk::abi::*;
use backworks_plugin_sdk::{
    Health, HookAction, PluginError, Request, RequestEdit, Response, ResponseEdit,
};
use tokio::sync::oneshot;

use super::LoadedLibrary;
use super::call::{
    HeaderSink, LENT_INLINE_PAIRS, LENT_RESPONSE_PAIRS, Output, RequestViews, ResponseViews,
    SunkHeaders, TaskGuard, Waiting, cancelled_output, finish, kv, on_complete, str_view,
    with_request_view,
};
use crate::CallError;
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
    /// The plugin's `handle_lent` (ABI 1.2), when it has one and lending is on.
    handle_lent: Option<LentHandleFn>,
    /// The plugin's `before_request_lent` (ABI 1.2), when it has one and lending is on.
    before_request_lent: Option<LentHandleFn>,
    /// The plugin's `after_response_lent` (ABI 1.2), when it has one and lending is on.
    after_response_lent: Option<LentAfterFn>,
    /// The plugin's `before_request_now` (ABI 1.3), when it has one and lending is on.
    before_request_now: Option<NowBeforeFn>,
    /// The plugin's `after_response_now` (ABI 1.3), when it has one and lending is on.
    after_response_now: Option<NowAfterFn>,
    /// The plugin's `handle_now` (ABI 1.4), when it has one and lending is on.
    handle_now: Option<LentHandleFn>,
    /// Boxed so its address, given to the plugin, never changes; dropped after `instance_free`.
    _services: Box<Services>,
}

/// Whether instances made from now on use a plugin's `handle_lent`, `handle_now` and lent hook
/// entries (see [`DynamicPlugin::set_lending`]).
static LENDING: AtomicBool = AtomicBool::new(true);

/// What the [`Plugin`] methods return (as `async_trait` writes it).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The type of the vtable's `handle`, `handle_lent`, `before_request_lent` and `handle_now`.
type LentHandleFn = unsafe extern "C" fn(*mut c_void, *const BwRequest, *mut BwOutput) -> i32;

/// The type of the vtable's `after_response_lent`.
type LentAfterFn =
    unsafe extern "C" fn(*mut c_void, *const BwRequest, *const BwResponse, *mut BwOutput) -> i32;

/// The type of the vtable's `before_request_now`.
type NowBeforeFn =
    unsafe extern "C" fn(*mut c_void, *const BwRequest, *const BwHeaderSink, *mut BwOutput) -> i32;

/// The type of the vtable's `after_response_now`.
type NowAfterFn = unsafe extern "C" fn(
    *mut c_void,
    *const BwRequest,
    *const BwResponse,
    *const BwHeaderSink,
    *mut BwOutput,
) -> i32;

/// A hook call through `before_request_lent` or `after_response_lent` (ABI 1.2): the future the
/// call guard holds inline ([`DynamicPlugin::lent_before_request`]), or the one the
/// [`Plugin::before_request_shared`] (or [`Plugin::after_response_shared`]) box holds. The
/// caller's `Arc`s of the request (and response) live in it and their views with it (in the
/// call's [`SpareViews`] block), lent until the call is over. Written out like [`LentHandle`], for
/// the same reasons: it is the call's whole state, nothing runs before the first poll, and a call
/// that is ready then answers in that poll, with `answer` reading its output.
///
/// Fields drop in declaration order: `state` (a waiting call's task handle, whose release
/// cancels the task and returns once it has stopped reading) before the views and the `Arc`s. If
/// the future is leaked, the `Arc`s keep what the views point to alive (the hook chain's other
/// `Arc`s only read it), and the views block is leaked with it.
pub(crate) struct LentHook<'a, T> {
    state: LentState,
    plugin: &'a DynamicPlugin,
    f: LentHookFn,
    answer: fn(&DynamicPlugin, &Output) -> Result<T, CallError>,
    views: SpareViews,
    request: Arc<Request>,
    response: Option<Arc<Response>>,
    /// The views point into this value: it must not move once they are made.
    _pinned: PhantomPinned,
}

/// The lent hook entry a [`LentHook`] calls.
#[derive(Clone, Copy)]
enum LentHookFn {
    Before(LentHandleFn),
    /// Called only with a response.
    After(LentAfterFn),
}

impl<'a, T> LentHook<'a, T> {
    fn new(
        plugin: &'a DynamicPlugin,
        f: LentHookFn,
        answer: fn(&DynamicPlugin, &Output) -> Result<T, CallError>,
        request: Arc<Request>,
        response: Option<Arc<Response>>,
    ) -> LentHook<'a, T> {
        LentHook {
            state: LentState::Start,
            plugin,
            f,
            answer,
            views: SpareViews::take(),
            request,
            response,
            _pinned: PhantomPinned,
        }
    }
}

impl<T> Future for LentHook<'_, T> {
    type Output = Result<T, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out of the pinned value: the views, the request and the
        // response stay where they are until it is dropped; only `state` (which nothing points
        // into) is replaced.
        let this = unsafe { self.get_unchecked_mut() };
        let out = match &mut this.state {
            LentState::Start => {
                let mut out = Output::empty();
                let views = this.views.get();
                let view: *const BwRequest = views.request.fill(&this.request);
                let waiting = match (this.f, &this.response) {
                    (LentHookFn::After(f), Some(response)) => {
                        let response_view: *const BwResponse = views.response.fill(response);
                        // SAFETY: live instance; the views and what they point to live in this
                        // pinned future and stay valid until it is dropped, which releases a task
                        // handle first (see `LentHook`).
                        this.plugin.start(&mut out, |instance, raw| unsafe {
                            f(instance, view, response_view, raw)
                        })
                    }
                    (LentHookFn::Before(f), None) => {
                        // SAFETY: as above.
                        this.plugin
                            .start(&mut out, |instance, raw| unsafe { f(instance, view, raw) })
                    }
                    _ => unreachable!("an after hook gets a response, a before hook none"),
                };
                match waiting {
                    None => {
                        this.state = LentState::Over;
                        out
                    }
                    Some(waiting) => {
                        this.state = LentState::Waiting(Box::new(Pending {
                            waiting,
                            _pending: out,
                        }));
                        // The task may have completed already: look at once.
                        match this.state.poll_waiting(cx) {
                            Poll::Ready(out) => out,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }
            }
            LentState::Waiting(_) => match this.state.poll_waiting(cx) {
                Poll::Ready(out) => out,
                Poll::Pending => return Poll::Pending,
            },
            LentState::Over => panic!("a plugin call polled after it answered"),
        };
        Poll::Ready((this.answer)(this.plugin, &out))
    }
}

/// What a `before_request_lent` output says.
fn request_edit(plugin: &DynamicPlugin, out: &Output) -> Result<RequestEdit, CallError> {
    let name = &plugin.info.name;
    match out.raw.kind {
        BW_OUT_CONTINUE => Ok(RequestEdit::Continue),
        BW_OUT_HEADERS => out.header_edits(name, false).map(RequestEdit::SetHeaders),
        BW_OUT_REQUEST => out.request(name).map(RequestEdit::Replace),
        BW_OUT_RESPONSE => out.response(name).map(RequestEdit::Respond),
        _ => Err(out.unexpected("before_request_lent")),
    }
}

/// What an `after_response_lent` output says.
fn response_edit(plugin: &DynamicPlugin, out: &Output) -> Result<ResponseEdit, CallError> {
    let name = &plugin.info.name;
    match out.raw.kind {
        BW_OUT_CONTINUE => Ok(ResponseEdit::Keep),
        BW_OUT_HEADERS => out.header_edits(name, true).map(ResponseEdit::SetHeaders),
        BW_OUT_RESPONSE => out.response(name).map(ResponseEdit::Replace),
        _ => Err(out.unexpected("after_response_lent")),
    }
}

/// An endpoint call through `handle_lent` (ABI 1.2): the future the call guard holds inline for
/// a shared request ([`DynamicPlugin::lent_handle_shared`]), or the one the [`Plugin::handle`]
/// (or [`Plugin::handle_shared`]) box holds. The request (or the caller's `Arc` of it) lives in
/// it and its views with it (in the call's [`SpareViews`] block), lent until the call is over.
///
/// A hand-written future rather than an `async fn`: it is the only state of the call, so the box
/// `handle` returns is its one allocation, small enough for the allocator's per-thread cache, and
/// nothing holds a second copy of the request; held inline by the guard, the call allocates
/// nothing. Nothing runs before the first poll (a guard may
/// drop a call it does not let through). The first poll points the views at the request (the
/// future is pinned by then, so neither moves while the plugin may read them) and calls the
/// plugin; a call that is ready then (most are) answers in that poll.
///
/// Fields drop in declaration order. `state` goes first: releasing a waiting call's task handle
/// cancels a task still running, and the plugin's `task_cancel` returns only once the task has
/// stopped reading the request (the ABI's rule for `handle_lent`). Only then go the views and the
/// request. If the future is leaked instead of dropped, nothing is freed, so the lent memory stays
/// valid.
pub(crate) struct LentHandle<'a> {
    state: LentState,
    plugin: &'a DynamicPlugin,
    f: LentHandleFn,
    views: SpareViews,
    request: LentRequestHeld,
    /// The views point into this value: it must not move once they are made.
    _pinned: PhantomPinned,
}

/// The request a [`LentHandle`] lends: its own, or one it shares with its caller (a hook chain),
/// which only reads it; either way it stays where it is, and alive, while the handle lives.
enum LentRequestHeld {
    Owned(Request),
    Shared(Arc<Request>),
}

impl LentRequestHeld {
    fn get(&self) -> &Request {
        match self {
            LentRequestHeld::Owned(request) => request,
            LentRequestHeld::Shared(request) => request,
        }
    }
}

/// The views a lent call lends: a block of their own on the heap, so that the call's future stays
/// small (it is held inline by its guard, in the server's own future). Each thread keeps one spare
/// block: a call takes it and gives it back when it is dropped, so calls that follow one another
/// allocate nothing. The block stays with its call until the call is dropped (after its task
/// handle: a cancelled task has stopped reading by then), and a leaked call leaks it, so what
/// the plugin may read stays valid as long as the lease lasts.
struct SpareViews(Option<Box<LentViews>>);

/// A [`SpareViews`] block.
struct LentViews {
    request: RequestViews<LENT_INLINE_PAIRS>,
    response: ResponseViews<LENT_RESPONSE_PAIRS>,
}

thread_local! {
    /// This thread's spare views block.
    static SPARE_VIEWS: std::cell::Cell<Option<Box<LentViews>>> =
        const { std::cell::Cell::new(None) };
}

impl SpareViews {
    /// This thread's spare block, or none yet: nothing is allocated before the call is made.
    fn take() -> SpareViews {
        SpareViews(SPARE_VIEWS.try_with(std::cell::Cell::take).ok().flatten())
    }

    /// The block, allocated now if there was no spare one.
    fn get(&mut self) -> &mut LentViews {
        self.0.get_or_insert_with(|| {
            Box::new(LentViews {
                request: RequestViews::new(),
                response: ResponseViews::new(),
            })
        })
    }
}

impl Drop for SpareViews {
    fn drop(&mut self) {
        if let Some(views) = self.0.take() {
            // Kept as this thread's spare unless it has one (then, or while the thread ends, it
            // is freed).
            let _ = SPARE_VIEWS.try_with(|spare| {
                let kept = spare.take();
                spare.set(kept.or(Some(views)));
            });
        }
    }
}

/// Where a lent call is. Small: a call is held inline by its guard (in the server's own future),
/// and most calls never wait, so what only a waiting call needs is boxed, when it starts waiting.
enum LentState {
    /// Not polled yet: the plugin has not been called.
    Start,
    /// The plugin's task runs; its output arrives through `waiting`.
    Waiting(Box<Pending>),
    /// Answered.
    Over,
}

/// What a waiting lent call holds. Fields drop in declaration order: the task handle (whose
/// release cancels a task still running) before the pending output.
struct Pending {
    waiting: Waiting,
    /// The pending output, released when the call is over (as every output is).
    _pending: Output,
}

impl LentState {
    /// Polls the task of a waiting call; once it has answered, its output (the task handle and
    /// the pending output go first, as in `finish`).
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Output> {
        let LentState::Waiting(pending) = self else {
            unreachable!("called while waiting");
        };
        let Poll::Ready(raw) = Pin::new(&mut pending.waiting.receiver).poll(cx) else {
            return Poll::Pending;
        };
        *self = LentState::Over;
        Poll::Ready(Output {
            raw: raw.unwrap_or_else(|_| cancelled_output()),
        })
    }
}

impl<'a> LentHandle<'a> {
    fn new(plugin: &'a DynamicPlugin, f: LentHandleFn, request: LentRequestHeld) -> LentHandle<'a> {
        LentHandle {
            state: LentState::Start,
            plugin,
            f,
            views: SpareViews::take(),
            request,
            _pinned: PhantomPinned,
        }
    }

    /// Polls the task of a waiting call; once it has answered, its handle and the pending output go
    /// (as in `finish`).
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response, CallError>> {
        self.state.poll_waiting(cx).map(|out| self.answer(&out))
    }

    fn answer(&self, out: &Output) -> Result<Response, CallError> {
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(&self.plugin.info.name),
            _ => Err(out.unexpected("handle")),
        }
    }
}

impl Future for LentHandle<'_> {
    type Output = Result<Response, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out of the pinned value: the views and the request stay where
        // they are until it is dropped; only `state` (which nothing points into) is replaced.
        let this = unsafe { self.get_unchecked_mut() };
        match &mut this.state {
            LentState::Start => {
                let mut out = Output::empty();
                let view: *const BwRequest = this.views.get().request.fill(this.request.get());
                let f = this.f;
                // SAFETY: live instance; `view` and what it points to live in this pinned future
                // and stay valid until it is dropped, which releases a task handle first (see
                // `LentHandle`).
                let waiting = this
                    .plugin
                    .start(&mut out, |instance, raw| unsafe { f(instance, view, raw) });
                match waiting {
                    None => {
                        this.state = LentState::Over;
                        Poll::Ready(this.answer(&out))
                    }
                    Some(waiting) => {
                        this.state = LentState::Waiting(Box::new(Pending {
                            waiting,
                            _pending: out,
                        }));
                        // The task may have completed already: look at once.
                        this.poll_waiting(cx)
                    }
                }
            }
            LentState::Waiting(_) => this.poll_waiting(cx),
            LentState::Over => panic!("a plugin call polled after it answered"),
        }
    }
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
///
/// # Safety
/// `ctx` must be the `ctx` of the [`BwHostServices`] this host gave an instance (its
/// `Services::name`), called before that instance's `instance_free` returns; `target` and
/// `message` must be valid as [`BwStr::as_bytes`] for the duration of the call. Any thread may call
/// it.
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

impl DynamicPlugin {
    /// Creates an instance named `name` of the plugin in `library`, leaving the threads of the
    /// library's runtime to the plugin's default.
    pub fn new(library: Arc<LoadedLibrary>, name: &str) -> Result<DynamicPlugin, HostError> {
        DynamicPlugin::with_workers(library, name, None)
    }

    /// As [`new`](Self::new), asking the plugin to run its waiting calls on `workers` threads
    /// (`BwHostServices::workers`; `None`: the plugin's default).
    pub fn with_workers(
        library: Arc<LoadedLibrary>,
        name: &str,
        workers: Option<NonZeroU32>,
    ) -> Result<DynamicPlugin, HostError> {
        // Before the instance: a plugin whose schema cannot be read does not start.
        let config_schema = library.config_schema(name)?.map(Arc::new);
        let mut services = Box::new(Services {
            abi: BwHostServices {
                size: size_of::<BwHostServices>() as u32,
                abi_minor: ABI_MINOR,
                reserved: 0,
                ctx: std::ptr::null_mut(),
                plugin_name: BwStr::EMPTY,
                max_log_level: max_log_level(),
                log: Some(host_log),
                workers: workers.map_or(0, NonZeroU32::get),
                reserved2: 0,
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
        let out = Output { raw: out };
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
                config_schema,
            },
            handle_lent: vtable
                .handle_lent
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            before_request_lent: vtable
                .before_request_lent
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            after_response_lent: vtable
                .after_response_lent
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            before_request_now: vtable
                .before_request_now
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            after_response_now: vtable
                .after_response_now
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            handle_now: vtable
                .handle_now
                .filter(|_| LENDING.load(Ordering::Relaxed)),
            library,
            instance,
            _services: services,
        })
    }

    /// This instance with lending off: endpoint calls go to the plugin's `handle` (the copying
    /// path of ABI 1.1) even when it has `handle_lent`. For benchmarks comparing the two.
    #[doc(hidden)]
    pub fn without_lending(mut self) -> DynamicPlugin {
        self.handle_lent = None;
        self.before_request_lent = None;
        self.after_response_lent = None;
        self.before_request_now = None;
        self.after_response_now = None;
        self.handle_now = None;
        self
    }

    /// Whether instances created from now on, in this process, serve endpoint calls through a
    /// plugin's `handle_lent` and `handle_now` and hook calls through its `*_lent` and `*_now`
    /// entries (the default), or only through the copying `handle`, `before_request` and
    /// `after_response`. For benchmarks that compare the two on the whole server path;
    /// [`DynamicPlugin::without_lending`] turns it off for one instance.
    #[doc(hidden)]
    pub fn set_lending(on: bool) {
        LENDING.store(on, Ordering::Relaxed);
    }

    /// An endpoint call through the plugin's `handle_lent` of a request the caller shares, as a
    /// future the caller may hold inline (the call guard does: no allocation); the request back
    /// when the plugin has no such entry (or lending is off). Nothing runs before its first poll.
    pub(crate) fn lent_handle_shared(
        &self,
        request: Arc<Request>,
    ) -> Result<LentHandle<'_>, Arc<Request>> {
        match self.handle_lent {
            Some(f) => Ok(LentHandle::new(self, f, LentRequestHeld::Shared(request))),
            None => Err(request),
        }
    }

    /// A `before_request` hook call through the plugin's `before_request_lent`, as a future the
    /// caller may hold inline; the request back when the plugin has no such entry.
    pub(crate) fn lent_before_request(
        &self,
        request: Arc<Request>,
    ) -> Result<LentHook<'_, RequestEdit>, Arc<Request>> {
        match self.before_request_lent {
            Some(f) => Ok(LentHook::new(
                self,
                LentHookFn::Before(f),
                request_edit,
                request,
                None,
            )),
            None => Err(request),
        }
    }

    /// An `after_response` hook call through the plugin's `after_response_lent`, as a future the
    /// caller may hold inline; the request and the response back when the plugin has no such
    /// entry.
    pub(crate) fn lent_after_response(
        &self,
        request: Arc<Request>,
        response: Arc<Response>,
    ) -> Result<LentHook<'_, ResponseEdit>, (Arc<Request>, Arc<Response>)> {
        match self.after_response_lent {
            Some(f) => Ok(LentHook::new(
                self,
                LentHookFn::After(f),
                response_edit,
                request,
                Some(response),
            )),
            None => Err((request, response)),
        }
    }

    /// An endpoint call through the plugin's `handle_now` (ABI 1.4), `f`, made and answered at
    /// once: the request's views on the stack, lent for the call only, and no future.
    fn now_handle(&self, f: LentHandleFn, request: &Request) -> Result<Response, CallError> {
        let mut out = Output::empty();
        with_request_view(request, |view| {
            // SAFETY: live instance; the views borrow `request` and live on this stack for the
            // call, which is as long as `handle_now` may use them (a wrongly pending task is
            // released in `now_ready`, while they still live).
            let status = unsafe { f(self.instance, view, &mut out.raw) };
            self.now_ready("handle_now", status, &mut out)
        })?;
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(&self.info.name),
            _ => Err(out.unexpected("handle_now")),
        }
    }

    /// Whether `before_request` hook calls go to the plugin's `before_request_now` (ABI 1.3):
    /// [`DynamicPlugin::now_before_request`] makes them.
    pub(crate) fn has_before_request_now(&self) -> bool {
        self.before_request_now.is_some()
    }

    /// Whether `after_response` hook calls go to the plugin's `after_response_now` (ABI 1.3).
    pub(crate) fn has_after_response_now(&self) -> bool {
        self.after_response_now.is_some()
    }

    /// A `before_request` hook call through the plugin's `before_request_now` (ABI 1.3), made and
    /// answered at once: the request's views on the stack, lent for the call only, and the headers
    /// the hook sets copied into the edit as it sends them. Only for a plugin that
    /// [has the entry](Self::has_before_request_now); else the plugin's error.
    pub(crate) fn now_before_request(&self, request: &Request) -> Result<RequestEdit, CallError> {
        let Some(f) = self.before_request_now else {
            return Err(self.no_entry("before_request_now"));
        };
        let mut sink = HeaderSink::new();
        let mut out = Output::empty();
        with_request_view(request, |view| {
            let abi = sink.abi();
            // SAFETY: live instance; the views borrow `request` and the ABI sink points to `sink`,
            // both alive and unmoved for the call, which is as long as a `_now` entry may use them
            // (a wrongly pending task is released in `now_ready`, while they still live).
            let status = unsafe { f(self.instance, view, &abi, &mut out.raw) };
            self.now_ready("before_request_now", status, &mut out)
        })?;
        self.sink_took_all(&sink)?;
        let name = &self.info.name;
        let more = match out.raw.kind {
            BW_OUT_CONTINUE => None,
            BW_OUT_HEADERS => Some(out.header_edits(name, false)?),
            _ => return request_edit(self, &out),
        };
        Ok(match sink.into_headers(more) {
            SunkHeaders::None => RequestEdit::Continue,
            SunkHeaders::One(name, value) => RequestEdit::SetHeader(name, value),
            SunkHeaders::Many(headers) => RequestEdit::SetHeaders(headers),
        })
    }

    /// An `after_response` hook call through the plugin's `after_response_now` (ABI 1.3), made
    /// and answered at once, as [`DynamicPlugin::now_before_request`]; the request and the
    /// response lent for the call only.
    pub(crate) fn now_after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<ResponseEdit, CallError> {
        let Some(f) = self.after_response_now else {
            return Err(self.no_entry("after_response_now"));
        };
        let mut sink = HeaderSink::new();
        let mut out = Output::empty();
        let mut response_views = ResponseViews::<LENT_RESPONSE_PAIRS>::new();
        let response_view: *const BwResponse = response_views.fill(response);
        with_request_view(request, |view| {
            let abi = sink.abi();
            // SAFETY: as in `now_before_request`; the response views borrow `response` and live
            // on this stack for the call.
            let status = unsafe { f(self.instance, view, response_view, &abi, &mut out.raw) };
            self.now_ready("after_response_now", status, &mut out)
        })?;
        self.sink_took_all(&sink)?;
        let name = &self.info.name;
        let more = match out.raw.kind {
            BW_OUT_CONTINUE => None,
            BW_OUT_HEADERS => Some(out.header_edits(name, true)?),
            _ => return response_edit(self, &out),
        };
        Ok(match sink.into_headers(more) {
            SunkHeaders::None => ResponseEdit::Keep,
            SunkHeaders::One(name, value) => ResponseEdit::SetHeader(name, value),
            SunkHeaders::Many(headers) => ResponseEdit::SetHeaders(headers),
        })
    }

    /// Checks that a hook's `_now` call sent only headers the host took.
    fn sink_took_all(&self, sink: &HeaderSink) -> Result<(), CallError> {
        if let Some(what) = sink.refused {
            return Err(CallError::InvalidResponse(format!(
                "plugin `{}` set {what} that is not UTF-8",
                self.info.name
            )));
        }
        Ok(())
    }

    /// Checks that a `_now` call answered at once: a pending answer's task is released
    /// unstarted, and the call fails. Called while the views lent to the call still live: the
    /// ABI lets a plugin's task read them until `task_cancel` returns, also unstarted.
    fn now_ready(&self, entry: &str, status: i32, out: &mut Output) -> Result<(), CallError> {
        if status != BW_READY || out.raw.kind == BW_OUT_PENDING {
            if out.raw.kind == BW_OUT_PENDING
                && !out.raw.task.is_null()
                && let Some(cancel) = self.vtable().task_cancel
            {
                // SAFETY: the task of this call's pending output, never started, released exactly
                // once (the output forgets it).
                unsafe { cancel(std::mem::replace(&mut out.raw.task, std::ptr::null_mut())) };
            }
            return Err(CallError::InvalidResponse(format!(
                "plugin `{}` answered `{entry}` with a pending call; it must answer at once",
                self.info.name
            )));
        }
        Ok(())
    }

    /// The error of a call to an entry the plugin does not have.
    fn no_entry(&self, entry: &str) -> CallError {
        CallError::InvalidResponse(format!(
            "plugin `{}` has no `{entry}` entry",
            self.info.name
        ))
    }

    /// An endpoint call through `handle`, which lends the request for the call only: the plugin
    /// copies what it keeps (ABI 1.0 and 1.1, or a plugin that does not opt in to lending).
    async fn handle_copied<R>(&self, request: R) -> Result<Response, CallError>
    where
        R: std::borrow::Borrow<Request> + Send,
    {
        let f = self.vtable().handle.expect("checked at load time");
        let mut out = Output::empty();
        let mut waiting = with_request_view(request.borrow(), |abi| {
            // SAFETY: live instance; the request views borrow `request`, which outlives the call
            // (the plugin copies what it keeps before returning, even when the call is pending).
            self.start(&mut out, |instance, raw| unsafe { f(instance, abi, raw) })
        });
        drop(request);
        finish(&mut out, &mut waiting).await;
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(&self.info.name),
            _ => Err(out.unexpected("handle")),
        }
    }

    /// Starts one ABI call: `call` gets the instance and `out`'s zeroed output and returns the ABI
    /// status. A pending call's task is started and returned. Synchronous, so the borrowed views the
    /// closure captures never live across an `.await`; the output is filled in place, never moved.
    fn start(
        &self,
        out: &mut Output,
        call: impl FnOnce(*mut c_void, *mut BwOutput) -> i32,
    ) -> Option<Waiting> {
        let status = call(self.instance, &mut out.raw);
        if status != BW_PENDING || out.raw.kind != BW_OUT_PENDING {
            return None;
        }
        let vtable = self.library.vtable();
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
        let handle = unsafe { start(out.raw.task, completion) };
        Some(Waiting {
            receiver,
            _guard: TaskGuard { handle, cancel },
        })
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

    async fn initialize(&self, config: &serde_json::Value) -> Result<(), CallError> {
        let json = serde_json::to_vec(config)
            .map_err(|e| PluginError::Config(format!("cannot encode config: {e}")))?;
        let f = self.vtable().initialize.expect("checked at load time");
        let mut out = Output::empty();
        // SAFETY: live instance of this library; the config bytes and output outlive the call.
        let mut waiting = self.start(&mut out, |instance, raw| unsafe {
            f(instance, BwStr::new(&json), raw)
        });
        finish(&mut out, &mut waiting).await;
        match out.raw.kind {
            BW_OUT_DONE => Ok(()),
            _ => Err(out.unexpected("initialize")),
        }
    }

    // Not an `async fn`: a lent call's future is the box's whole content (see `LentHandle`).
    fn handle<'life0, 'async_trait>(
        &'life0 self,
        request: Request,
    ) -> BoxFuture<'async_trait, Result<Response, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        match self.handle_lent {
            Some(f) => Box::pin(LentHandle::new(self, f, LentRequestHeld::Owned(request))),
            None => Box::pin(self.handle_copied(request)),
        }
    }

    // As `handle`; the request is lent where the caller shares it, never copied for the call.
    fn handle_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
    ) -> BoxFuture<'async_trait, Result<Response, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        match self.lent_handle_shared(request) {
            Ok(call) => Box::pin(call),
            Err(request) => Box::pin(self.handle_copied(request)),
        }
    }

    async fn before_request(&self, request: &Request) -> Result<HookAction, CallError> {
        let f = self.vtable().before_request.expect("checked at load time");
        let mut out = Output::empty();
        let mut waiting = with_request_view(request, |abi| {
            // SAFETY: as in `handle`.
            self.start(&mut out, |instance, raw| unsafe { f(instance, abi, raw) })
        });
        finish(&mut out, &mut waiting).await;
        let plugin = &self.info.name;
        match out.raw.kind {
            BW_OUT_CONTINUE => Ok(HookAction::Continue),
            BW_OUT_REQUEST => out.request(plugin).map(HookAction::ContinueWith),
            BW_OUT_RESPONSE => out.response(plugin).map(HookAction::Respond),
            _ => Err(out.unexpected("before_request")),
        }
    }

    async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, CallError> {
        let f = self.vtable().after_response.expect("checked at load time");
        let mut out = Output::empty();
        let mut waiting = with_request_view(request, |abi| {
            let headers: Vec<BwKv> = response.headers.iter().map(kv).collect();
            let abi_response = BwResponse {
                status: response.status,
                headers: BwKvList::new(&headers),
                body: BwStr::new(&response.body),
            };
            // SAFETY: as in `handle`; the response views borrow `response` and `headers`, which
            // outlive the call.
            self.start(&mut out, |instance, raw| unsafe {
                f(instance, abi, &abi_response, raw)
            })
        });
        finish(&mut out, &mut waiting).await;
        match out.raw.kind {
            BW_OUT_RESPONSE => out.response(&self.info.name),
            _ => Err(out.unexpected("after_response")),
        }
    }

    // Not an `async fn`: a lent hook call's future is the box's whole content (see `LentHook`).
    fn before_request_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
    ) -> BoxFuture<'async_trait, Result<RequestEdit, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        match self.lent_before_request(request) {
            Ok(call) => Box::pin(call),
            Err(request) => {
                Box::pin(async move { Ok(self.before_request(&request).await?.into()) })
            }
        }
    }

    // As `before_request_shared`.
    fn after_response_shared<'life0, 'async_trait>(
        &'life0 self,
        request: Arc<Request>,
        response: Arc<Response>,
    ) -> BoxFuture<'async_trait, Result<ResponseEdit, CallError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        match self.lent_after_response(request, response) {
            Ok(call) => Box::pin(call),
            Err((request, response)) => Box::pin(async move {
                Ok(ResponseEdit::Replace(
                    self.after_response(&request, &response).await?,
                ))
            }),
        }
    }

    fn answers_now(&self) -> bool {
        self.handle_now.is_some()
    }

    fn handle_now(&self, request: &Request) -> Option<Result<Response, CallError>> {
        let f = self.handle_now?;
        Some(self.now_handle(f, request))
    }

    fn as_library(&self) -> Option<&DynamicPlugin> {
        Some(self)
    }

    async fn health_check(&self) -> Health {
        let f = self.vtable().health_check.expect("checked at load time");
        let mut out = Output::empty();
        // SAFETY: live instance of this library; valid output.
        let mut waiting = self.start(&mut out, |instance, raw| unsafe { f(instance, raw) });
        finish(&mut out, &mut waiting).await;
        match (out.raw.kind, out.raw.code) {
            (BW_OUT_HEALTH, BW_HEALTH_HEALTHY) => Health::Healthy,
            (BW_OUT_HEALTH, BW_HEALTH_DEGRADED) => Health::Degraded(out.message()),
            (BW_OUT_HEALTH, _) => Health::Unhealthy(out.message()),
            _ => Health::Unhealthy(out.unexpected("health_check").to_string()),
        }
    }

    async fn shutdown(&self) -> Result<(), CallError> {
        let f = self.vtable().shutdown.expect("checked at load time");
        let mut out = Output::empty();
        // SAFETY: live instance of this library; valid output.
        let mut waiting = self.start(&mut out, |instance, raw| unsafe { f(instance, raw) });
        finish(&mut out, &mut waiting).await;
        match out.raw.kind {
            BW_OUT_DONE => Ok(()),
            _ => Err(out.unexpected("shutdown")),
        }
    }
}

impl DynamicPlugin {
    /// Calls the plugin's `handle_lent` (when lending is on and it has one; else `handle`) straight
    /// through the vtable with a prebuilt request, then releases the output; returns the response status (0 when the call did not answer at once). The floor
    /// under every host call, for benchmarks.
    #[doc(hidden)]
    pub fn bare_handle(&self, request: &BwRequest) -> u16 {
        let Some(handle) = self.handle_lent.or(self.vtable().handle) else {
            return 0;
        };
        let mut raw = BwOutput::empty();
        // SAFETY: live instance of this library; the request and output outlive the call.
        let status = unsafe { handle(self.instance, request, &mut raw) };
        let output = Output { raw };
        if status == BW_READY && output.raw.kind == BW_OUT_RESPONSE {
            output.raw.response.status
        } else {
            0
        }
    }
}

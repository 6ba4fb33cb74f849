//! The plugin side of the C ABI: the `extern "C"` functions behind
//! [`export_plugin!`](crate::export_plugin).
//!
//! Not a public API: [`export_plugin!`](crate::export_plugin) is. Every function here catches
//! panics, so none crosses the boundary, and turns a plugin's future into the ABI's
//! ready-or-pending protocol:
//!
//! 1. The call's future is polled once, inline, on the host's thread, inside the plugin's own tokio
//!    runtime context. A handler that does not wait (most do not) finishes here, with no thread hop.
//! 2. If it is pending, the host gets a task and starts it with a completion; the task then runs on
//!    the plugin's runtime, so while the plugin waits for I/O it holds no host thread, and completes
//!    exactly once, also when cancelled.
//!
//! `handle` copies the request the host lends for the call into a [`Request`](crate::Request);
//! `handle_lent` (ABI 1.2, exported when the plugin sets
//! [`HANDLE_LENT`](crate::BackworksPlugin::HANDLE_LENT)) reads it in place, as a [`LentRequest`],
//! for as long as the call's future lives: `call` drops that future before the call's completion
//! and before `task_cancel` returns, which is when the host's lease ends. A plugin that sets
//! [`HANDLE_SYNC`](crate::BackworksPlugin::HANDLE_SYNC) exports its `handle_sync` under the same
//! entry and under ABI 1.4's `handle_now` (which a newer host calls without a future), called as
//! a plain function and always ready (`call::now`), so the lease is the call.

mod call;
mod input;
mod lent;
mod lent_response;
mod output;

pub use lent::{LentRequest, Pairs};
pub use lent_response::LentResponse;

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::abi::*;
use crate::host_link::HostLink;
use crate::{
    BackworksPlugin, HookAction, PluginError, PluginResult, RequestEdit, Response, ResponseEdit,
    Text,
};
use call::HeldRequest;
use output::{Outcome, write_output};

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
            const __BW_HOOKS: $crate::Hooks = <$plugin as $crate::BackworksPlugin>::HOOKS;
            const __BW_META_LEN: usize = $crate::metadata::encoded_len(
                $name,
                $version,
                $description,
                __BW_PANIC_UNWIND,
                __BW_HOOKS,
            );
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
            static __BW_METADATA: [u8; __BW_META_LEN] = $crate::metadata::encode(
                $name,
                $version,
                $description,
                __BW_PANIC_UNWIND,
                __BW_HOOKS,
            );

            // No `#[allow]` or `#[expect]` of `non_upper_case_globals` here: rustc exempts
            // `#[no_mangle]` statics from that lint (the name is the ABI's), so an `#[expect]`
            // would be reported unfulfilled in every plugin and an `#[allow]` suppresses nothing.
            #[unsafe(no_mangle)]
            static backworks_plugin: $crate::abi::BwPluginVTable =
                $crate::export::vtable::<$plugin>(&__BW_METADATA);
        };
    };
}

/// The vtable of plugin type `P`, pointing at `metadata`. Used by
/// [`export_plugin!`](crate::export_plugin).
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
        task_start: Some(call::task_start),
        task_cancel: Some(call::task_cancel),
        config_schema: Some(config_schema::<P>),
        // A synchronous endpoint fills the same entry: the host sees a call that is ready at once.
        handle_lent: if P::HANDLE_SYNC {
            Some(handle_sync::<P>)
        } else if P::HANDLE_LENT {
            Some(handle_lent::<P>)
        } else {
            None
        },
        // Synchronous hooks fill the same entries: the host sees a call that is ready at once.
        before_request_lent: if P::HOOKS_SYNC {
            Some(before_request_sync::<P>)
        } else if P::HOOKS_LENT {
            Some(before_request_lent::<P>)
        } else {
            None
        },
        after_response_lent: if P::HOOKS_SYNC {
            Some(after_response_sync::<P>)
        } else if P::HOOKS_LENT {
            Some(after_response_lent::<P>)
        } else {
            None
        },
        // ABI 1.3: the same synchronous hooks, their headers sent through the host's sink. A host
        // of 1.2 never reads these and calls the `_lent` entries above.
        before_request_now: if P::HOOKS_SYNC {
            Some(before_request_now::<P>)
        } else {
            None
        },
        after_response_now: if P::HOOKS_SYNC {
            Some(after_response_now::<P>)
        } else {
            None
        },
        // ABI 1.4: the same synchronous endpoint, which the host then calls without a future and
        // with the request's views on its stack. A host of 1.2 or 1.3 calls `handle_lent` above.
        handle_now: if P::HANDLE_SYNC {
            Some(handle_sync::<P>)
        } else {
            None
        },
    }
}

/// The vtable's `config_schema`: [`BackworksPlugin::config_schema`] as JSON text, or DONE when
/// the plugin declares none. Creates no instance; a panic becomes an error output.
///
/// # Safety
/// `out` must be valid for writes, and not used by anyone else, for the duration of the call.
unsafe extern "C" fn config_schema<P: BackworksPlugin>(out: *mut BwOutput) -> i32 {
    guard(out, || {
        let outcome = match P::config_schema() {
            Some(schema) => Outcome::Schema(schema.to_string()),
            None => Outcome::Done,
        };
        if !out.is_null() {
            // SAFETY: the host passes a valid, exclusive output for the duration of the call.
            unsafe { write_output(&mut *out, outcome) };
        }
        BW_READY
    })
}

/// What `instance_new` returns to the host.
pub(super) struct Instance<P> {
    plugin: Arc<P>,
    host: Arc<HostLink>,
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

/// The vtable's `instance_new`: a new value of `P` with its link to the host, or null with the reason
/// in `out`.
///
/// # Safety
/// `out` must be valid for writes, and not used by anyone else, for the duration of the call.
/// `services` must be null (an error output) or point to the host's services of this instance,
/// readable for at least the `size` it states, and valid, unchanged and usable from any thread until
/// `instance_free` of the returned instance has returned.
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
        // SAFETY: the host keeps its services valid until `instance_free`. Its struct may be older
        // and smaller than ours, so fields are read in place, never through a reference to the
        // whole struct: `size` first (every version has it), then only fields within it.
        let size = unsafe { (*services).size } as usize;
        if size < HOST_SERVICES_SIZE_V1_0 {
            // SAFETY: the host passes a valid, exclusive output for the duration of the call.
            unsafe {
                write_output(
                    &mut *out,
                    Outcome::Error(PluginError::Internal(format!(
                        "host services are {size} bytes, expected at least {HOST_SERVICES_SIZE_V1_0}"
                    ))),
                )
            };
            return BW_READY;
        }
        // SAFETY: a v1.0 field, within `size`.
        let max_log_level = unsafe { (*services).max_log_level };
        if size >= size_of::<BwHostServices>() {
            // SAFETY: a v1.2 field, within `size`.
            crate::runtime::LIBRARY.request_workers(unsafe { (*services).workers });
        }
        // SAFETY: the host keeps its services valid, unchanged and thread-safe until
        // `instance_free` returns, which detaches the link first.
        let link = Arc::new(unsafe { HostLink::new(services, max_log_level) });
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

/// The vtable's `instance_free`: detaches the instance from the host and drops it.
///
/// # Safety
/// `instance` must be null or come from `instance_new::<P>` of this library, be passed here exactly
/// once, and have no call running on it; it must not be used afterwards. (A task still pending holds
/// its own references to the plugin value and the link, so it stays sound, but the ABI asks the host
/// to finish or cancel it first.)
unsafe extern "C" fn instance_free<P: BackworksPlugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `instance` came from `instance_new::<P>`, and the host frees it once, when no call
        // on it runs.
        let instance = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
        crate::logging::uninstall(&instance.host);
        instance.host.detach();
        let _context = crate::runtime::LIBRARY.built().map(|rt| rt.enter());
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

/// The plugin value of an instance, for a future that [`call::drive`] keeps no longer than the
/// instance, or than the task's own `Arc` of the value.
fn plugin<P>(this: &Instance<P>) -> &'static P {
    // SAFETY: the value lives in the `Arc`'s heap block, which outlives the call (the host keeps the
    // instance alive during a call) and, if the call is pending, the task (which holds a clone of
    // the `Arc`). `drive`'s contract makes the future that borrows it drop before both.
    unsafe { &*Arc::as_ptr(&this.plugin) }
}

fn done(result: PluginResult<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Error(e),
    }
}

fn responded(result: PluginResult<Response>) -> Outcome {
    match result {
        Ok(response) => Outcome::Response(response),
        Err(e) => Outcome::Error(e),
    }
}

/// The vtable's `initialize`: parses the config and runs [`BackworksPlugin::initialize`].
///
/// # Safety
/// `this` must come from `instance_new::<P>` of this library and not be freed before the call
/// returns; `config_json` must be valid as [`BwStr::as_bytes`], and `out` valid for writes and used
/// by no one else, for the duration of the call.
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
        let future = plugin(this).initialize(config);
        // SAFETY: the future borrows only the plugin value; `out` is the host's valid output.
        unsafe { call::drive(this, out, future, None, done) }
    })
}

/// The vtable's `handle`: copies the request and runs [`BackworksPlugin::handle`].
///
/// # Safety
/// `this` must come from `instance_new::<P>` of this library and not be freed before the call
/// returns; `request` must point to a request whose views are valid (as [`BwStr::as_bytes`] and
/// [`BwKvList::as_slice`]), and `out` be valid for writes and used by no one else, for the duration
/// of the call.
unsafe extern "C" fn handle<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request valid for the call.
        let (this, request) = unsafe { (instance::<P>(this), input::request(&*request)) };
        let future = plugin(this).handle(request);
        // SAFETY: the future borrows only the plugin value; `out` is the host's valid output.
        unsafe { call::drive(this, out, future, None, responded) }
    })
}

/// The vtable's `handle_lent` (ABI 1.2): runs [`BackworksPlugin::handle_lent`] on the host's
/// request, read in place.
///
/// # Safety
/// As [`handle`], except that the request and everything it points to must stay valid and
/// unchanged until the call is over: until this returns [`BW_READY`], or, when it returns
/// [`BW_PENDING`], until the task's completion is called or `task_cancel` of the task returns.
unsafe extern "C" fn handle_lent<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request it lends until
        // the call is over, keeping the ABI's conventions (UTF-8 text, lower-case header names).
        // The lease lasts as long as the future that borrows the request: `drive` drops the future
        // before it returns READY, or moves it into the task, which drops it before it calls the
        // completion and before `task_cancel` returns (`call::TaskCell`).
        let (this, lent) = unsafe { (instance::<P>(this), LentRequest::from_host(&*request)) };
        let future = plugin(this).handle_lent(lent);
        // SAFETY: the future borrows the plugin value and the lent request (above); `out` is the
        // host's valid output.
        unsafe { call::drive(this, out, future, None, responded) }
    })
}

/// The vtable's `handle_lent` and `handle_now` (ABI 1.4) of a plugin with synchronous endpoints
/// ([`BackworksPlugin::HANDLE_SYNC`]): calls [`BackworksPlugin::handle_sync`] on the host's
/// request, read in place, and is always ready, as both entries allow.
///
/// # Safety
/// As [`handle_lent`].
unsafe extern "C" fn handle_sync<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    // SAFETY: the host's arguments, as `request_now` needs them.
    unsafe { request_now::<P, _>(this, request, out, P::handle_sync, responded) }
}

/// Runs `call` on the instance `this` and the host's `request`, read in place, as a call that
/// never waits (`call::now`: always ready, a panic an error output), its answer written to `out`
/// through `map`: the body of every synchronous entry that takes only the request.
///
/// # Safety
/// As [`handle_lent`], except that the request need stay valid only until this returns.
unsafe fn request_now<P: BackworksPlugin, T>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
    call: impl FnOnce(&P, LentRequest<'_>) -> T,
    map: impl FnOnce(T) -> Outcome,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request it lends until
        // the call returns, keeping the ABI's conventions; nothing borrows it beyond the call.
        let (instance, lent) = unsafe { (instance::<P>(this), LentRequest::from_host(&*request)) };
        // SAFETY: `out` is the host's valid output.
        unsafe { call::now(instance, out, || call(plugin(instance), lent), map) }
    })
}

/// The vtable's `before_request`: copies the request and runs
/// [`BackworksPlugin::before_request`].
///
/// # Safety
/// As [`handle`].
unsafe extern "C" fn before_request<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request valid for the call.
        let (this, request) = unsafe { (instance::<P>(this), input::request(&*request)) };
        let request = HeldRequest::new(request);
        // SAFETY: `drive` drops the future before `request`.
        let future = plugin(this).before_request(unsafe { request.get() });
        // SAFETY: the future borrows only the plugin value and `request`; `out` is valid.
        unsafe {
            call::drive(this, out, future, Some(request), |result| match result {
                Ok(HookAction::Continue) => Outcome::Continue,
                Ok(HookAction::ContinueWith(request)) => Outcome::Request(request),
                Ok(HookAction::Respond(response)) => Outcome::Response(response),
                Err(e) => Outcome::Error(e),
            })
        }
    })
}

/// The vtable's `after_response`: copies the request and the response and runs
/// [`BackworksPlugin::after_response`].
///
/// # Safety
/// As [`handle`], and `response` like `request`.
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
                input::request(&*request),
                input::response(&*response),
            )
        };
        let request = HeldRequest::new(request);
        // SAFETY: `drive` drops the future before `request`.
        let future = plugin(this).after_response(unsafe { request.get() }, response);
        // SAFETY: the future borrows only the plugin value and `request`; `out` is valid.
        unsafe { call::drive(this, out, future, Some(request), responded) }
    })
}

/// The vtable's `before_request_lent` (ABI 1.2): runs [`BackworksPlugin::before_request_lent`]
/// on the host's request, read in place; a header edit crosses back as `HEADERS`.
///
/// # Safety
/// As [`handle_lent`].
unsafe extern "C" fn before_request_lent<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library and a request it lends until
        // the call is over, keeping the ABI's conventions; as in `handle_lent`, the future that
        // borrows the request is dropped before the lease ends.
        let (instance, lent) = unsafe { (instance::<P>(this), LentRequest::from_host(&*request)) };
        let future = plugin(instance).before_request_lent(lent);
        // SAFETY: the future borrows the plugin value and the lent request; `out` is valid.
        unsafe { call::drive(instance, out, future, None, request_edited) }
    })
}

/// The outcome of a request edit: a header edit crosses back as `HEADERS`, an empty one as
/// `CONTINUE`.
fn request_edited(result: PluginResult<RequestEdit>) -> Outcome {
    match result {
        Ok(RequestEdit::Continue) => Outcome::Continue,
        Ok(RequestEdit::SetHeader(name, value)) => Outcome::RequestHeader(name, value),
        Ok(RequestEdit::SetHeaders(headers)) if headers.is_empty() => Outcome::Continue,
        Ok(RequestEdit::SetHeaders(headers)) => Outcome::RequestHeaders(headers),
        Ok(RequestEdit::Replace(request)) => Outcome::Request(request),
        Ok(RequestEdit::Respond(response)) => Outcome::Response(response),
        Err(e) => Outcome::Error(e),
    }
}

/// The vtable's `before_request_lent` of a plugin with synchronous hooks
/// ([`BackworksPlugin::HOOKS_SYNC`]): calls [`BackworksPlugin::before_request_sync`] on the host's
/// request, read in place, and is always ready.
///
/// # Safety
/// As [`before_request_lent`].
unsafe extern "C" fn before_request_sync<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    out: *mut BwOutput,
) -> i32 {
    // SAFETY: the host's arguments, as `request_now` needs them.
    unsafe { request_now::<P, _>(this, request, out, P::before_request_sync, request_edited) }
}

/// The vtable's `before_request_now` (ABI 1.3) of a plugin with synchronous hooks: calls
/// [`BackworksPlugin::before_request_sync`] on the host's request, read in place, and sends the
/// headers it sets through the host's `sink`, so that nothing crosses in the output to be
/// released; always ready.
///
/// # Safety
/// As [`before_request_sync`], and `sink` valid for the call.
unsafe extern "C" fn before_request_now<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    sink: *const BwHeaderSink,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library, a request it lends until the
        // call returns, keeping the ABI's conventions, and a sink valid for the call; nothing
        // borrows them beyond the call.
        let (instance, lent, sink) = unsafe {
            (
                instance::<P>(this),
                LentRequest::from_host(&*request),
                sink.as_ref(),
            )
        };
        // SAFETY: `out` is the host's valid output.
        unsafe {
            call::now(
                instance,
                out,
                || plugin(instance).before_request_sync(lent),
                |result| through_sink(sink, request_edited(result)),
            )
        }
    })
}

/// Sends the headers of a header edit through the host's `sink` (ABI 1.3's `_now` entries): the
/// call then answers CONTINUE, and nothing crosses in its output. Any other outcome, or no sink,
/// goes out as it is.
fn through_sink(sink: Option<&BwHeaderSink>, outcome: Outcome) -> Outcome {
    let Some((ctx, set)) = sink.and_then(|sink| Some((sink.ctx, sink.set?))) else {
        return outcome;
    };
    let send = |name: &Text, value: &Text| {
        // SAFETY: the host's sink function with its context, during the call it was given for;
        // the strings are lent for this call only (the host copies them).
        let refused = unsafe {
            set(
                ctx,
                BwStr::new(name.as_bytes()),
                BwStr::new(value.as_bytes()),
            )
        };
        if refused == 0 {
            Ok(())
        } else {
            Err(PluginError::Internal(format!(
                "the host refused header `{name}`"
            )))
        }
    };
    let sent = match &outcome {
        Outcome::RequestHeader(name, value) | Outcome::ResponseHeader(name, value) => {
            send(name, value)
        }
        Outcome::RequestHeaders(headers) | Outcome::ResponseHeaders(headers) => headers
            .as_pairs()
            .iter()
            .try_for_each(|(name, value)| send(name, value)),
        _ => return outcome,
    };
    match sent {
        Ok(()) => Outcome::Continue,
        Err(error) => Outcome::Error(error),
    }
}

/// The vtable's `after_response_lent` (ABI 1.2): runs [`BackworksPlugin::after_response_lent`]
/// on the host's request and response, read in place; the response crosses back only when it is
/// replaced, a header edit as `HEADERS`, an unchanged response as `CONTINUE`.
///
/// # Safety
/// As [`handle_lent`], and `response` lent like `request`.
unsafe extern "C" fn after_response_lent<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    response: *const BwResponse,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library, and a request and response it
        // lends until the call is over, keeping the ABI's conventions; as in `handle_lent`, the
        // future that borrows them is dropped before the lease ends.
        let (instance, lent_request, lent_response) = unsafe {
            (
                instance::<P>(this),
                LentRequest::from_host(&*request),
                LentResponse::from_host(&*response),
            )
        };
        let future = plugin(instance).after_response_lent(lent_request, lent_response);
        // SAFETY: the future borrows the plugin value and the lent request and response; `out`
        // is valid.
        unsafe { call::drive(instance, out, future, None, response_edited) }
    })
}

/// The outcome of a response edit: a header edit crosses back as `HEADERS`, a kept response (or
/// an empty edit) as `CONTINUE`.
fn response_edited(result: PluginResult<ResponseEdit>) -> Outcome {
    match result {
        Ok(ResponseEdit::Keep) => Outcome::Continue,
        Ok(ResponseEdit::SetHeader(name, value)) => Outcome::ResponseHeader(name, value),
        Ok(ResponseEdit::SetHeaders(headers)) if headers.is_empty() => Outcome::Continue,
        Ok(ResponseEdit::SetHeaders(headers)) => Outcome::ResponseHeaders(headers),
        Ok(ResponseEdit::Replace(response)) => Outcome::Response(response),
        Err(e) => Outcome::Error(e),
    }
}

/// The vtable's `after_response_lent` of a plugin with synchronous hooks
/// ([`BackworksPlugin::HOOKS_SYNC`]): calls [`BackworksPlugin::after_response_sync`] on the host's
/// request and response, read in place, and is always ready.
///
/// # Safety
/// As [`after_response_lent`].
unsafe extern "C" fn after_response_sync<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    response: *const BwResponse,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library, and a request and response it
        // lends until the call returns, keeping the ABI's conventions; nothing borrows them beyond
        // the call.
        let (instance, lent_request, lent_response) = unsafe {
            (
                instance::<P>(this),
                LentRequest::from_host(&*request),
                LentResponse::from_host(&*response),
            )
        };
        // SAFETY: `out` is the host's valid output.
        unsafe {
            call::now(
                instance,
                out,
                || plugin(instance).after_response_sync(lent_request, lent_response),
                response_edited,
            )
        }
    })
}

/// The vtable's `after_response_now` (ABI 1.3) of a plugin with synchronous hooks: calls
/// [`BackworksPlugin::after_response_sync`] on the host's request and response, read in place,
/// and sends the headers it sets through the host's `sink`; always ready.
///
/// # Safety
/// As [`after_response_sync`], and `sink` valid for the call.
unsafe extern "C" fn after_response_now<P: BackworksPlugin>(
    this: *mut c_void,
    request: *const BwRequest,
    response: *const BwResponse,
    sink: *const BwHeaderSink,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library, a request and a response it
        // lends until the call returns, keeping the ABI's conventions, and a sink valid for the
        // call; nothing borrows them beyond the call.
        let (instance, lent_request, lent_response, sink) = unsafe {
            (
                instance::<P>(this),
                LentRequest::from_host(&*request),
                LentResponse::from_host(&*response),
                sink.as_ref(),
            )
        };
        // SAFETY: `out` is the host's valid output.
        unsafe {
            call::now(
                instance,
                out,
                || plugin(instance).after_response_sync(lent_request, lent_response),
                |result| through_sink(sink, response_edited(result)),
            )
        }
    })
}

/// The vtable's `health_check`: runs [`BackworksPlugin::health_check`].
///
/// # Safety
/// `this` must come from `instance_new::<P>` of this library and not be freed before the call
/// returns; `out` must be valid for writes and used by no one else for the duration of the call.
unsafe extern "C" fn health_check<P: BackworksPlugin>(
    this: *mut c_void,
    out: *mut BwOutput,
) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library.
        let this = unsafe { instance::<P>(this) };
        let future = plugin(this).health_check();
        // SAFETY: the future borrows only the plugin value; `out` is the host's valid output.
        unsafe { call::drive(this, out, future, None, Outcome::Health) }
    })
}

/// The vtable's `shutdown`: runs [`BackworksPlugin::shutdown`].
///
/// # Safety
/// As [`health_check`].
unsafe extern "C" fn shutdown<P: BackworksPlugin>(this: *mut c_void, out: *mut BwOutput) -> i32 {
    guard(out, || {
        // SAFETY: the host passes a live instance of this library.
        let this = unsafe { instance::<P>(this) };
        let future = plugin(this).shutdown();
        // SAFETY: the future borrows only the plugin value; `out` is the host's valid output.
        unsafe { call::drive(this, out, future, None, done) }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::{LentRequest, Request, Text};

    /// Answers by path: `/echo` (201, a header naming the `id` parameter, the body back), `/empty`
    /// (204, nothing else), `/wait` (after a tokio timer), `/panic`.
    #[derive(Default)]
    struct Probe;

    #[async_trait::async_trait]
    impl BackworksPlugin for Probe {
        async fn handle(&self, request: Request) -> PluginResult<Response> {
            match request.path.as_str() {
                "/echo" => Ok(Response::new(201)
                    .with_header("X-Id", request.param("id").unwrap_or("-"))
                    .with_body(request.body)),
                "/empty" => Ok(Response::new(204)),
                "/wait" => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(Response::new(200).with_body("waited"))
                }
                "/panic" => panic!("probe panicked"),
                other => Err(PluginError::NotFound(other.to_owned())),
            }
        }

        async fn before_request(&self, request: &Request) -> PluginResult<HookAction> {
            let mut changed = request.clone();
            changed.headers.insert("x-seen", "yes");
            Ok(HookAction::ContinueWith(changed))
        }
    }

    const VTABLE: BwPluginVTable = vtable::<Probe>(b"");

    /// Declares a schema, or panics in `config_schema` when `PANIC_SCHEMA` says so.
    #[derive(Default)]
    struct Schemed;

    static PANIC_SCHEMA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    #[async_trait::async_trait]
    impl BackworksPlugin for Schemed {
        fn config_schema() -> Option<serde_json::Value> {
            if PANIC_SCHEMA.load(std::sync::atomic::Ordering::Relaxed) {
                panic!("schema panicked");
            }
            Some(serde_json::json!({"type": "object"}))
        }
    }

    /// Calls a vtable's `config_schema`: the output's kind and message, released.
    fn schema_of(vtable: &BwPluginVTable) -> (u32, u32, String) {
        let mut out = BwOutput::empty();
        // SAFETY: a valid zeroed output, released below.
        let status = unsafe { (vtable.config_schema.unwrap())(&mut out) };
        assert_eq!(status, BW_READY);
        // SAFETY: unreleased output.
        let message = unsafe { out.message.to_string_lossy() };
        if let Some(release) = out.release {
            // SAFETY: released once.
            unsafe { release(out.owner) };
        }
        (out.kind, out.code, message)
    }

    #[test]
    fn config_schema_writes_the_schema_none_or_the_caught_panic() {
        assert_eq!(
            schema_of(&vtable::<Schemed>(b"")),
            (BW_OUT_SCHEMA, 0, r#"{"type":"object"}"#.to_owned())
        );
        assert_eq!(schema_of(&VTABLE), (BW_OUT_DONE, 0, String::new()));
        PANIC_SCHEMA.store(true, std::sync::atomic::Ordering::Relaxed);
        let panicked = schema_of(&vtable::<Schemed>(b""));
        PANIC_SCHEMA.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            panicked,
            (BW_OUT_ERROR, BW_ERR_PANIC, "schema panicked".to_owned())
        );
    }

    /// An instance of `Probe` with host services that log nowhere.
    struct Harness {
        instance: *mut c_void,
        _services: Box<BwHostServices>,
    }

    impl Harness {
        fn new() -> Harness {
            let services = Box::new(BwHostServices {
                size: size_of::<BwHostServices>() as u32,
                abi_minor: ABI_MINOR,
                reserved: 0,
                ctx: std::ptr::null_mut(),
                plugin_name: BwStr::new(b"probe"),
                max_log_level: 0,
                log: None,
                workers: 0,
                reserved2: 0,
            });
            let mut out = BwOutput::empty();
            // SAFETY: valid services that outlive the instance, and a valid output.
            let instance = unsafe { (VTABLE.instance_new.unwrap())(&*services, &mut out) };
            assert!(!instance.is_null());
            assert_eq!(out.kind, BW_OUT_DONE);
            Harness {
                instance,
                _services: services,
            }
        }

        /// Calls `handle` with `path`, one parameter `id=7` and body `hi`.
        fn handle(&self, path: &str, out: &mut BwOutput) -> i32 {
            let params = [BwKv {
                key: BwStr::new(b"id"),
                value: BwStr::new(b"7"),
            }];
            let request = BwRequest {
                method: BwStr::new(b"POST"),
                path: BwStr::new(path.as_bytes()),
                params: BwKvList::new(&params),
                body: BwStr::new(b"hi"),
                ..BwRequest::EMPTY
            };
            // SAFETY: a live instance; the request and output outlive the call.
            unsafe { (VTABLE.handle.unwrap())(self.instance, &request, out) }
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            // SAFETY: created by `instance_new`, freed once, with no call running.
            unsafe { (VTABLE.instance_free.unwrap())(self.instance) };
        }
    }

    /// `instance_new` with host services of `size` bytes asking for `workers`: whether it made an
    /// instance (freed again).
    fn instance_with(size: usize, workers: u32) -> bool {
        let services = Box::new(BwHostServices {
            size: size as u32,
            abi_minor: 1,
            reserved: 0,
            ctx: std::ptr::null_mut(),
            plugin_name: BwStr::new(b"older"),
            max_log_level: 0,
            log: None,
            workers,
            reserved2: 0,
        });
        let mut out = BwOutput::empty();
        // SAFETY: valid services (readable for all of our struct, whatever `size` says) that
        // outlive the instance, and a valid output.
        let instance = unsafe { (VTABLE.instance_new.unwrap())(&*services, &mut out) };
        if instance.is_null() {
            assert_eq!(out.kind, BW_OUT_ERROR);
            take(out);
            return false;
        }
        // SAFETY: created above, freed once, with no call running.
        unsafe { (VTABLE.instance_free.unwrap())(instance) };
        true
    }

    #[test]
    fn workers_are_read_only_from_a_host_whose_services_have_them() {
        // A 1.1 host's 48 bytes: an instance, and `workers` (past its size) is not read.
        assert!(instance_with(HOST_SERVICES_SIZE_V1_0, 7));
        assert_ne!(crate::runtime::LIBRARY.requested(), 7);
        assert!(instance_with(size_of::<BwHostServices>(), 5));
        assert_eq!(crate::runtime::LIBRARY.requested(), 5);
        // Smaller than 1.0's: refused.
        assert!(!instance_with(HOST_SERVICES_SIZE_V1_0 - 8, 0));
    }

    /// An output's kind, status, headers and body.
    type Copied = (u32, u16, Vec<(String, String)>, Vec<u8>);

    /// What an output holds, copied, and released.
    fn take(mut out: BwOutput) -> Copied {
        // SAFETY: an unreleased output of this library: its views are valid.
        let copied = unsafe {
            (
                out.kind,
                out.response.status,
                out.response
                    .headers
                    .as_slice()
                    .iter()
                    .map(|kv| (kv.key.to_string_lossy(), kv.value.to_string_lossy()))
                    .collect(),
                out.response.body.as_bytes().to_vec(),
            )
        };
        if let Some(release) = out.release.take() {
            // SAFETY: released exactly once, by its owner's function.
            unsafe { release(out.owner) };
        }
        copied
    }

    #[test]
    fn a_ready_call_hands_over_its_response() {
        let probe = Harness::new();
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/echo", &mut out), BW_READY);
        assert!(out.release.is_some(), "headers and body need an owner");
        assert_eq!(
            take(out),
            (
                BW_OUT_RESPONSE,
                201,
                vec![("x-id".to_owned(), "7".to_owned())],
                b"hi".to_vec()
            )
        );
    }

    #[test]
    fn an_empty_response_takes_no_owner() {
        let probe = Harness::new();
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/empty", &mut out), BW_READY);
        assert!(out.release.is_none() && out.owner.is_null());
        assert_eq!(take(out), (BW_OUT_RESPONSE, 204, vec![], vec![]));
    }

    #[test]
    fn a_panic_is_an_error_output_and_the_instance_keeps_serving() {
        let probe = Harness::new();
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/panic", &mut out), BW_READY);
        assert_eq!((out.kind, out.code), (BW_OUT_ERROR, BW_ERR_PANIC));
        // SAFETY: unreleased output.
        let message = unsafe { out.message.to_string_lossy() };
        assert_eq!(message, "probe panicked");
        take(out);
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/empty", &mut out), BW_READY);
        assert_eq!(take(out).1, 204);
    }

    #[test]
    fn a_hook_replacement_request_crosses_with_its_views() {
        let probe = Harness::new();
        let request = BwRequest {
            method: BwStr::new(b"GET"),
            path: BwStr::new(b"/x"),
            ..BwRequest::EMPTY
        };
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request and output outlive the call.
        let status =
            unsafe { (VTABLE.before_request.unwrap())(probe.instance, &request, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_REQUEST));
        // SAFETY: unreleased output.
        let changed = unsafe { input::request(&out.request) };
        assert_eq!(changed.method, "GET");
        assert_eq!(changed.path, Text::from("/x"));
        assert_eq!(changed.header("x-seen"), Some("yes"));
        if let Some(release) = out.release {
            // SAFETY: released once.
            unsafe { release(out.owner) };
        }
    }

    /// The test's completion: sends what the output holds to the test and releases it.
    ///
    /// # Safety
    /// `ctx` must be a `Box<mpsc::Sender<Copied>>` leaked for this completion and passed here once;
    /// `output` must point to an unreleased output of this library, which this takes over.
    unsafe extern "C" fn send_completion(ctx: *mut c_void, output: *mut BwOutput) {
        // SAFETY: `ctx` is the boxed sender of the test, passed to exactly one completion; the
        // output is ours now.
        let (sender, output) = unsafe {
            (
                Box::from_raw(ctx.cast::<mpsc::Sender<Copied>>()),
                output.read(),
            )
        };
        let _ = sender.send(take(output));
    }

    #[test]
    fn a_waiting_call_becomes_a_task_that_completes_once() {
        let probe = Harness::new();
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/wait", &mut out), BW_PENDING);
        assert_eq!(out.kind, BW_OUT_PENDING);
        assert!(!out.task.is_null() && out.release.is_none());
        let (sender, receiver) = mpsc::channel::<Copied>();
        let completion = BwCompletion {
            ctx: Box::into_raw(Box::new(sender)).cast(),
            complete: Some(send_completion),
        };
        // SAFETY: the pending task of this call, started once; its handle is released below.
        let handle = unsafe { (VTABLE.task_start.unwrap())(out.task, completion) };
        let answer = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the task completes");
        assert_eq!(answer, (BW_OUT_RESPONSE, 200, vec![], b"waited".to_vec()));
        // SAFETY: released once, after completion.
        unsafe { (VTABLE.task_cancel.unwrap())(handle) };
    }

    /// Reads its request in place: `/loop` reads the path every millisecond until cancelled,
    /// recording what it read in `READS`; anything else answers the path, parameter `id` and
    /// header `x-seen` (`/wait` after a tokio timer).
    #[derive(Default)]
    struct Reader;

    static READS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    #[async_trait::async_trait]
    impl BackworksPlugin for Reader {
        const HANDLE_LENT: bool = true;

        async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
            let path: &str = request.path();
            if path == "/loop" {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    READS.lock().unwrap().push(path.to_owned());
                }
            }
            if path == "/wait" {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let param = request.param("id").unwrap_or("-");
            let header = request.header("x-seen").unwrap_or("-");
            Ok(Response::new(200).with_body(format!("{path} {param} {header}")))
        }
    }

    static READER: BwPluginVTable = vtable::<Reader>(b"");

    /// A request the test owns, lent to `handle_lent` by views into these buffers.
    struct HostRequest {
        path: Vec<u8>,
        header: Vec<u8>,
        _pairs: Box<[BwKv; 2]>,
        view: Box<BwRequest>,
    }

    impl HostRequest {
        fn new(path: &[u8]) -> HostRequest {
            let (path, header) = (path.to_vec(), b"yes".to_vec());
            let pairs = Box::new([
                BwKv {
                    key: BwStr::new(b"id"),
                    value: BwStr::new(b"7"),
                },
                BwKv {
                    key: BwStr::new(b"x-seen"),
                    value: BwStr::new(&header),
                },
            ]);
            let view = Box::new(BwRequest {
                method: BwStr::new(b"GET"),
                path: BwStr::new(&path),
                params: BwKvList::new(&pairs[..1]),
                headers: BwKvList::new(&pairs[1..]),
                ..BwRequest::EMPTY
            });
            HostRequest {
                path,
                header,
                _pairs: pairs,
                view,
            }
        }

        /// What the host does when the lease is over: the memory is reused.
        fn poison(&mut self) {
            self.path.fill(b'X');
            self.header.fill(b'X');
        }
    }

    /// An instance of `vtable`'s plugin named `name`, with host services that log nowhere; the
    /// services must outlive the instance.
    fn instance_of(
        vtable: &BwPluginVTable,
        name: &'static [u8],
    ) -> (*mut c_void, Box<BwHostServices>) {
        let services = Box::new(BwHostServices {
            size: size_of::<BwHostServices>() as u32,
            abi_minor: ABI_MINOR,
            reserved: 0,
            ctx: std::ptr::null_mut(),
            plugin_name: BwStr::new(name),
            max_log_level: 0,
            log: None,
            workers: 0,
            reserved2: 0,
        });
        let mut out = BwOutput::empty();
        // SAFETY: valid services that outlive the instance, and a valid output.
        let instance = unsafe { (vtable.instance_new.unwrap())(&*services, &mut out) };
        assert!(!instance.is_null());
        (instance, services)
    }

    /// An instance of `Reader`.
    fn reader() -> (*mut c_void, Box<BwHostServices>) {
        instance_of(&READER, b"reader")
    }

    /// Starts a pending task with a completion that sends its output to the returned receiver.
    fn start(vtable: &BwPluginVTable, task: *mut c_void) -> (*mut c_void, mpsc::Receiver<Copied>) {
        let (sender, receiver) = mpsc::channel::<Copied>();
        let completion = BwCompletion {
            ctx: Box::into_raw(Box::new(sender)).cast(),
            complete: Some(send_completion),
        };
        // SAFETY: a pending task of this vtable, started once; the caller cancels the handle once.
        let handle = unsafe { (vtable.task_start.unwrap())(task, completion) };
        (handle, receiver)
    }

    #[test]
    fn only_a_plugin_that_handles_lent_requests_exports_the_entry() {
        assert!(VTABLE.handle_lent.is_none());
        assert!(READER.handle_lent.is_some());
        // `handle_now` (ABI 1.4) only for an endpoint that never waits.
        assert!(VTABLE.handle_now.is_none() && READER.handle_now.is_none());
        assert!(TAGGER.handle_now.is_none());
        assert!(GREETER.handle_now.is_some());
        assert_eq!(READER.abi_minor, ABI_MINOR);
        assert_eq!(READER.size as usize, size_of::<BwPluginVTable>());
    }

    #[test]
    fn a_lent_request_is_read_in_place_across_an_await() {
        let (instance, services) = reader();
        let request = HostRequest::new(b"/now");
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request outlives the call and the output is valid.
        let status = unsafe { (READER.handle_lent.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!(status, BW_READY);
        assert_eq!(take(out).3, b"/now 7 yes");

        let request = HostRequest::new(b"/wait");
        let mut out = BwOutput::empty();
        // SAFETY: as above; the request lives until the completion has been received.
        let status = unsafe { (READER.handle_lent.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!((status, out.kind), (BW_PENDING, BW_OUT_PENDING));
        let (handle, receiver) = start(&READER, out.task);
        let answer = receiver.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            answer,
            (BW_OUT_RESPONSE, 200, vec![], b"/wait 7 yes".to_vec())
        );
        // SAFETY: released once, after completion.
        unsafe { (READER.task_cancel.unwrap())(handle) };
        // SAFETY: no call runs on the instance any more.
        unsafe { (READER.instance_free.unwrap())(instance) };
        drop((request, services));
    }

    /// The host's side of the lease: once `task_cancel` has returned, the host frees or reuses
    /// the request's memory (here: overwrites it). The task must never read it again. Nothing
    /// here is timed: the pause after the cancel only gives a task that kept running the chance
    /// to be caught, and the test fails on what it read, never on how long anything took.
    #[test]
    fn a_cancelled_lent_call_stops_reading_before_task_cancel_returns() {
        let (instance, services) = reader();
        let mut request = HostRequest::new(b"/loop");
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request outlives the call and the output is valid.
        let status = unsafe { (READER.handle_lent.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!(status, BW_PENDING);
        let (handle, receiver) = start(&READER, out.task);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while READS.lock().unwrap().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "the task never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: the started task's handle, released once.
        unsafe { (READER.task_cancel.unwrap())(handle) };
        let reads_at_cancel = READS.lock().unwrap().len();
        request.poison();
        let cancelled = receiver.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(cancelled.0, BW_OUT_ERROR);
        std::thread::sleep(Duration::from_millis(20));
        let reads = READS.lock().unwrap().clone();
        assert_eq!(
            reads.len(),
            reads_at_cancel,
            "the task read on after task_cancel"
        );
        assert!(reads.iter().all(|read| read == "/loop"), "{reads:?}");
        // SAFETY: no call runs on the instance any more.
        unsafe { (READER.instance_free.unwrap())(instance) };
        drop((request, services));
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_host_that_lends_text_that_is_not_utf8_gets_an_error_in_a_debug_build() {
        let (instance, services) = reader();
        let request = HostRequest::new(b"/a\xffb");
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request outlives the call and the output is valid. The
        // request breaks the ABI's UTF-8 convention, which a debug build asserts before reading.
        let status = unsafe { (READER.handle_lent.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!(status, BW_READY);
        assert_eq!(out.kind, BW_OUT_ERROR);
        assert_eq!(out.code, BW_ERR_PANIC);
        drop(take(out));
        // SAFETY: no call runs on the instance any more.
        unsafe { (READER.instance_free.unwrap())(instance) };
        drop((request, services));
    }

    #[test]
    fn a_never_started_task_is_freed_by_cancel() {
        let probe = Harness::new();
        let mut out = BwOutput::empty();
        assert_eq!(probe.handle("/wait", &mut out), BW_PENDING);
        // SAFETY: the never-started task, passed to `task_cancel` once.
        unsafe { (VTABLE.task_cancel.unwrap())(out.task) };
    }

    /// Synchronous hooks: `before_request_sync` sets `x-tag` to the path, whether it ran inside a
    /// tokio runtime (`x-runtime`), and panics for `/panic`; `after_response_sync` copies the
    /// response's status into `x-status`, or answers an error for a 500.
    #[derive(Default)]
    struct Tagger;

    #[async_trait::async_trait]
    impl BackworksPlugin for Tagger {
        const HOOKS: crate::Hooks = crate::Hooks::ALL;
        const HOOKS_SYNC: bool = true;
        // Set too: the synchronous hooks win.
        const HOOKS_LENT: bool = true;

        fn before_request_sync(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
            if request.path() == "/panic" {
                panic!("tagger panicked");
            }
            let runtime = tokio::runtime::Handle::try_current().is_ok();
            if request.path() == "/refused" {
                return Ok(RequestEdit::SetHeader(
                    "x-refused".into(),
                    "by the host's sink".into(),
                ));
            }
            Ok(RequestEdit::SetHeaders(
                [
                    ("x-tag", request.path()),
                    ("x-runtime", if runtime { "yes" } else { "no" }),
                ]
                .into_iter()
                .collect(),
            ))
        }

        async fn before_request_lent(
            &self,
            _request: LentRequest<'_>,
        ) -> PluginResult<RequestEdit> {
            unreachable!("HOOKS_SYNC takes precedence over HOOKS_LENT")
        }

        fn after_response_sync(
            &self,
            _request: LentRequest<'_>,
            response: LentResponse<'_>,
        ) -> PluginResult<ResponseEdit> {
            if response.status() == 500 {
                return Err(PluginError::Internal("tagger refused".to_owned()));
            }
            Ok(ResponseEdit::SetHeader(
                "x-status".into(),
                response.status().to_string().into(),
            ))
        }
    }

    static TAGGER: BwPluginVTable = vtable::<Tagger>(b"");

    /// A synchronous endpoint: answers the path, parameter `id`, header `x-seen` and whether it
    /// ran inside a tokio runtime; `/panic` panics, `/missing` is a 404.
    #[derive(Default)]
    struct Greeter;

    #[async_trait::async_trait]
    impl BackworksPlugin for Greeter {
        const HANDLE_SYNC: bool = true;
        // Set too: the synchronous endpoint wins.
        const HANDLE_LENT: bool = true;

        fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
            match request.path() {
                "/panic" => panic!("greeter panicked"),
                "/missing" => Err(PluginError::NotFound("nothing here".to_owned())),
                path => {
                    let runtime = tokio::runtime::Handle::try_current().is_ok();
                    Ok(Response::text(format!(
                        "{path} {} {} {runtime}",
                        request.param("id").unwrap_or("-"),
                        request.header("x-seen").unwrap_or("-"),
                    )))
                }
            }
        }

        async fn handle_lent(&self, _request: LentRequest<'_>) -> PluginResult<Response> {
            unreachable!("HANDLE_SYNC takes precedence over HANDLE_LENT")
        }
    }

    static GREETER: BwPluginVTable = vtable::<Greeter>(b"");

    #[test]
    fn a_built_in_synchronous_endpoint_is_reached_through_the_async_methods() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut request = Request::new("GET", "/hi");
        request.params.push(("id".into(), "3".into()));
        let body = |answer: PluginResult<Response>| answer.unwrap().body;
        assert_eq!(
            body(runtime.block_on(Greeter.handle(request.clone()))),
            b"/hi 3 - true"
        );
        assert_eq!(body(Greeter.handle_sync(request.lend())), b"/hi 3 - false");

        // A plugin that implements only `handle_sync`: the defaults of both async methods reach it.
        #[derive(Default)]
        struct Only;

        #[async_trait::async_trait]
        impl BackworksPlugin for Only {
            const HANDLE_SYNC: bool = true;

            fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
                Ok(Response::text(request.path().to_owned()))
            }
        }
        assert_eq!(body(runtime.block_on(Only.handle(request.clone()))), b"/hi");
        assert_eq!(
            body(runtime.block_on(Only.handle_lent(request.lend()))),
            b"/hi"
        );
    }

    #[test]
    fn a_synchronous_endpoint_answers_through_the_lent_and_now_entries_at_once() {
        let (instance, services) = instance_of(&GREETER, b"greeter");
        let text = || {
            (
                "content-type".to_owned(),
                "text/plain; charset=utf-8".to_owned(),
            )
        };
        let request = HostRequest::new(b"/hi");
        // ABI 1.4's `handle_now`, and `handle_lent` for a host of 1.2 or 1.3: the same answers.
        for entry in [GREETER.handle_now.unwrap(), GREETER.handle_lent.unwrap()] {
            let mut out = BwOutput::empty();
            // SAFETY: a live instance; the request outlives the call and the output is valid.
            let status = unsafe { entry(instance, &*request.view, &mut out) };
            assert_eq!(status, BW_READY, "never pending, never a task");
            assert_eq!(
                take(out),
                (
                    BW_OUT_RESPONSE,
                    200,
                    vec![text()],
                    b"/hi 7 yes true".to_vec()
                )
            );

            // An error and a panic are error outputs; the instance goes on answering.
            for (path, code, message) in [
                (&b"/missing"[..], BW_ERR_NOT_FOUND, "nothing here"),
                (b"/panic", BW_ERR_PANIC, "greeter panicked"),
            ] {
                let failing = HostRequest::new(path);
                let mut out = BwOutput::empty();
                // SAFETY: as above.
                let status = unsafe { entry(instance, &*failing.view, &mut out) };
                assert_eq!((status, out.kind, out.code), (BW_READY, BW_OUT_ERROR, code));
                // SAFETY: unreleased output.
                assert_eq!(unsafe { out.message.to_string_lossy() }, message);
                take(out);
            }
        }

        // A host older than ABI 1.2 calls the copying entry, which reaches the same method.
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { (GREETER.handle.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!(
            (status, take(out)),
            (
                BW_READY,
                (
                    BW_OUT_RESPONSE,
                    200,
                    vec![text()],
                    b"/hi 7 yes true".to_vec()
                )
            )
        );

        // SAFETY: no call runs on the instance any more.
        unsafe { (GREETER.instance_free.unwrap())(instance) };
        drop((request, services));
    }

    /// The pairs of an output's list, copied.
    fn pairs_of(list: BwKvList) -> Vec<(String, String)> {
        // SAFETY: the list of an unreleased output of this library.
        unsafe { list.as_slice() }
            .iter()
            // SAFETY: as above.
            .map(|kv| unsafe { (kv.key.to_string_lossy(), kv.value.to_string_lossy()) })
            .collect()
    }

    #[test]
    fn synchronous_hooks_answer_through_the_lent_entries_at_once() {
        let (instance, services) = instance_of(&TAGGER, b"tagger");
        let (before, after) = (
            TAGGER.before_request_lent.unwrap(),
            TAGGER.after_response_lent.unwrap(),
        );

        let request = HostRequest::new(b"/tagged");
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request outlives the call and the output is valid.
        let status = unsafe { before(instance, &*request.view, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_HEADERS));
        assert_eq!(
            pairs_of(out.request.headers),
            [("x-tag", "/tagged"), ("x-runtime", "yes")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        take(out);

        let response = BwResponse {
            status: 201,
            ..BwResponse::EMPTY
        };
        let mut out = BwOutput::empty();
        // SAFETY: as above, and the response outlives the call.
        let status = unsafe { after(instance, &*request.view, &response, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_HEADERS));
        assert_eq!(take(out).2, [("x-status".to_owned(), "201".to_owned())]);

        // An error and a panic are error outputs; the instance goes on answering.
        let failed = BwResponse {
            status: 500,
            ..BwResponse::EMPTY
        };
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { after(instance, &*request.view, &failed, &mut out) };
        assert_eq!(
            (status, out.kind, out.code),
            (BW_READY, BW_OUT_ERROR, BW_ERR_INTERNAL)
        );
        take(out);
        let panicking = HostRequest::new(b"/panic");
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { before(instance, &*panicking.view, &mut out) };
        assert_eq!(
            (status, out.kind, out.code),
            (BW_READY, BW_OUT_ERROR, BW_ERR_PANIC)
        );
        // SAFETY: unreleased output.
        assert_eq!(unsafe { out.message.to_string_lossy() }, "tagger panicked");
        take(out);
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { before(instance, &*request.view, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_HEADERS));
        take(out);

        // A host older than ABI 1.2 calls the copying entry, which reaches the same hook.
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status =
            unsafe { (TAGGER.before_request.unwrap())(instance, &*request.view, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_REQUEST));
        // SAFETY: unreleased output.
        let changed = unsafe { input::request(&out.request) };
        assert_eq!(changed.header("x-tag"), Some("/tagged"));
        assert_eq!(changed.header("x-seen"), Some("yes"));
        if let Some(release) = out.release {
            // SAFETY: released once.
            unsafe { release(out.owner) };
        }

        // SAFETY: no call runs on the instance any more.
        unsafe { (TAGGER.instance_free.unwrap())(instance) };
        drop((request, panicking, services));
    }

    /// A host's header sink for the tests: collects what it is sent, and refuses `x-refused`.
    #[derive(Default)]
    struct Collected(Vec<(String, String)>);

    /// The `set` of the tests' sink.
    ///
    /// # Safety
    /// `ctx` must be a `Collected` no one else uses during the call; the strings as
    /// [`BwStr::as_bytes`].
    unsafe extern "C" fn collect(ctx: *mut c_void, name: BwStr, value: BwStr) -> i32 {
        // SAFETY: `ctx` is the test's `Collected`, used by this call only; the strings are lent
        // for the call.
        let (collected, name, value) = unsafe {
            (
                &mut *ctx.cast::<Collected>(),
                name.to_string_lossy(),
                value.to_string_lossy(),
            )
        };
        if name == "x-refused" {
            return 1;
        }
        collected.0.push((name, value));
        0
    }

    #[test]
    fn synchronous_hooks_send_their_headers_through_the_host_sink() {
        // Only synchronous hooks have the `_now` entries (ABI 1.3).
        assert!(VTABLE.before_request_now.is_none() && VTABLE.after_response_now.is_none());
        assert!(READER.before_request_now.is_none() && READER.after_response_now.is_none());
        let (instance, services) = instance_of(&TAGGER, b"tagger");
        let (before, after) = (
            TAGGER.before_request_now.unwrap(),
            TAGGER.after_response_now.unwrap(),
        );
        let mut collected = Collected::default();
        let sink = BwHeaderSink {
            ctx: (&raw mut collected).cast(),
            set: Some(collect),
        };

        // The headers go to the sink, in order; the output says CONTINUE and holds nothing.
        let request = HostRequest::new(b"/tagged");
        let mut out = BwOutput::empty();
        // SAFETY: a live instance; the request, the sink and the output outlive the call.
        let status = unsafe { before(instance, &*request.view, &sink, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_CONTINUE));
        assert!(out.release.is_none() && out.owner.is_null());
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            std::mem::take(&mut collected.0),
            pairs(&[("x-tag", "/tagged"), ("x-runtime", "yes")])
        );

        let response = BwResponse {
            status: 201,
            ..BwResponse::EMPTY
        };
        let mut out = BwOutput::empty();
        // SAFETY: as above, and the response outlives the call.
        let status = unsafe { after(instance, &*request.view, &response, &sink, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_CONTINUE));
        assert_eq!(
            std::mem::take(&mut collected.0),
            pairs(&[("x-status", "201")])
        );

        // An error and a panic are error outputs, with nothing sent; a header the host refuses
        // fails the call. The instance goes on answering.
        let failed = BwResponse {
            status: 500,
            ..BwResponse::EMPTY
        };
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { after(instance, &*request.view, &failed, &sink, &mut out) };
        assert_eq!(
            (status, out.kind, out.code),
            (BW_READY, BW_OUT_ERROR, BW_ERR_INTERNAL)
        );
        take(out);
        let panicking = HostRequest::new(b"/panic");
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { before(instance, &*panicking.view, &sink, &mut out) };
        assert_eq!(
            (status, out.kind, out.code),
            (BW_READY, BW_OUT_ERROR, BW_ERR_PANIC)
        );
        take(out);
        let refused = HostRequest::new(b"/refused");
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { before(instance, &*refused.view, &sink, &mut out) };
        assert_eq!(
            (status, out.kind, out.code),
            (BW_READY, BW_OUT_ERROR, BW_ERR_INTERNAL)
        );
        // SAFETY: unreleased output.
        let message = unsafe { out.message.to_string_lossy() };
        assert_eq!(message, "the host refused header `x-refused`");
        take(out);
        assert!(collected.0.is_empty(), "{:?}", collected.0);

        // Without a sink function, the headers cross in the output as from the `_lent` entry.
        let no_sink = BwHeaderSink {
            ctx: std::ptr::null_mut(),
            set: None,
        };
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { before(instance, &*request.view, &no_sink, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_HEADERS));
        assert_eq!(
            pairs_of(out.request.headers),
            pairs(&[("x-tag", "/tagged"), ("x-runtime", "yes")])
        );
        take(out);
        // A one-header edit (`SetHeader`) crosses as a list of one.
        let mut out = BwOutput::empty();
        // SAFETY: as above.
        let status = unsafe { after(instance, &*request.view, &response, &no_sink, &mut out) };
        assert_eq!((status, out.kind), (BW_READY, BW_OUT_HEADERS));
        assert_eq!(
            pairs_of(out.response.headers),
            pairs(&[("x-status", "201")])
        );
        take(out);

        // SAFETY: no call runs on the instance any more.
        unsafe { (TAGGER.instance_free.unwrap())(instance) };
        drop((request, panicking, refused, services));
    }

    #[tokio::test]
    async fn the_async_hooks_of_a_synchronous_plugin_call_the_synchronous_ones() {
        let request = Request::new("GET", "/x");
        let HookAction::ContinueWith(changed) = Tagger.before_request(&request).await.unwrap()
        else {
            panic!("a changed request");
        };
        assert_eq!(changed.header("x-tag"), Some("/x"));
        let response = Tagger
            .after_response(&changed, Response::new(204))
            .await
            .unwrap();
        assert_eq!(response.headers.get("x-status"), Some("204"));
        assert!(
            Tagger
                .after_response(&changed, Response::new(500))
                .await
                .is_err()
        );
    }
}

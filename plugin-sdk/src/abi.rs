//! The stable C ABI between the Backworks host and a plugin library.
//!
//! This is the only `#[repr(C)]` module of the SDK, and the only contract the two sides share at run
//! time. `plugin-sdk/include/backworks_plugin.h` is the same contract for C; a test compiles a C plugin
//! against that header and loads it in the host, and another asserts every size and offset below.
//!
//! # Shape
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`], a static [`BwPluginVTable`]. It is plain
//! data: the host reads its magic, size and ABI version *before* it calls any function of the plugin.
//! The library also carries its metadata in a section of its own ([`METADATA_SECTION`]) so the host can
//! inspect the file without loading it (see [`crate::metadata`]).
//!
//! # Rules
//! - **Append-only.** New fields go at the end of [`BwPluginVTable`] and [`BwHostServices`], and bump
//!   [`ABI_MINOR`]. Each struct starts with its own size, so either side can tell which fields the other
//!   one has. Any other change bumps [`ABI_MAJOR`].
//! - **Whoever allocates, frees.** Everything a plugin hands over lives in a [`BwOutput`] whose
//!   `release` function (the plugin's own) the host calls exactly once when it has copied what it needs.
//!   Everything the host lends to a call ([`BwRequest`], [`BwResponse`], config bytes) is borrowed for
//!   the duration of that call only, except the request of [`BwPluginVTable::handle_lent`] (ABI
//!   1.2), which stays lent until the call is over, also when it is pending: until its task's
//!   completion is called or `task_cancel` returns.
//! - **No panic crosses.** Every function behind a pointer here returns a status instead of unwinding.
//! - **No blocking.** A call either finishes at once ([`BW_READY`]) or returns [`BW_PENDING`] with a
//!   task that the host starts with a [`BwCompletion`]; the plugin calls the completion exactly once,
//!   from any thread, when the task is done or cancelled.
//!
//! Integers are native-endian; `size_t` is `usize`. Strings are UTF-8 without a terminating NUL.
//!
//! # What lives here
//! The types, the constants, the accessors either side needs to read a view ([`BwStr::as_bytes`],
//! [`BwKvList::as_slice`] and the like) and the layout tests; nothing else. Turning views into owned
//! values and back is the job of the side that does it: the plugin side's is in the SDK's `export`
//! module (`export/input.rs`, `export/output.rs`), the host's in its loader.

use std::ffi::c_void;

/// The first eight bytes of [`BwPluginVTable`]: `"BWPLUGIN"` read as a little-endian `u64`.
pub const ABI_MAGIC: u64 = u64::from_le_bytes(*b"BWPLUGIN");
/// Incompatible changes bump the major version; a host only loads plugins of its own major.
pub const ABI_MAJOR: u16 = 1;
/// Appended fields bump the minor version; a host loads plugins of any minor of its major.
///
/// Minor 1 appended [`BwPluginVTable::config_schema`]; minor 2 appended
/// [`BwPluginVTable::handle_lent`], [`BwPluginVTable::before_request_lent`] and
/// [`BwPluginVTable::after_response_lent`]; minor 3 appended [`BwPluginVTable::before_request_now`]
/// and [`BwPluginVTable::after_response_now`], with [`BwHeaderSink`]; minor 4 appended
/// [`BwPluginVTable::handle_now`].
pub const ABI_MINOR: u16 = 4;
/// The name of the exported static [`BwPluginVTable`].
pub const ENTRY_SYMBOL: &str = "backworks_plugin";
/// [`ENTRY_SYMBOL`] with its terminating NUL, as `dlsym` wants it.
pub const ENTRY_SYMBOL_NUL: &[u8] = b"backworks_plugin\0";
/// The section that holds the plugin's metadata on ELF targets.
pub const METADATA_SECTION: &str = ".backworks_meta";
/// The section that holds the plugin's metadata on Mach-O targets (segment, section).
pub const METADATA_SECTION_MACHO: &str = "__DATA,__bw_meta";

/// Return value of a call: the output is filled in.
pub const BW_READY: i32 = 0;
/// Return value of a call: the output's `task` must be started with `task_start`.
pub const BW_PENDING: i32 = 1;

/// [`BwOutput::kind`]: nothing (a zeroed output).
pub const BW_OUT_NONE: u32 = 0;
/// [`BwOutput::kind`]: success without a value (`initialize`, `shutdown`).
pub const BW_OUT_DONE: u32 = 1;
/// [`BwOutput::kind`]: a response in `response` (`handle`, `after_response`, an early answer of
/// `before_request`).
pub const BW_OUT_RESPONSE: u32 = 2;
/// [`BwOutput::kind`]: `before_request` replaced the request with `request`; the chain goes on.
pub const BW_OUT_REQUEST: u32 = 3;
/// [`BwOutput::kind`]: `before_request` left the request as it was; the chain goes on.
pub const BW_OUT_CONTINUE: u32 = 4;
/// [`BwOutput::kind`]: an error; `code` is one of the `BW_ERR_*` values, `message` says what failed,
/// and for [`BW_ERR_STATUS`] `response.status` is the HTTP status to answer.
pub const BW_OUT_ERROR: u32 = 5;
/// [`BwOutput::kind`]: a health report; `code` is one of the `BW_HEALTH_*` values, `message` optional.
pub const BW_OUT_HEALTH: u32 = 6;
/// [`BwOutput::kind`]: the call is pending; `task` must be started or the output released.
pub const BW_OUT_PENDING: u32 = 7;
/// [`BwOutput::kind`]: the plugin's config schema, JSON Schema text (UTF-8) in `message`
/// (`config_schema`, ABI 1.1).
pub const BW_OUT_SCHEMA: u32 = 8;
/// [`BwOutput::kind`] (ABI 1.2, only from `before_request_lent` and `after_response_lent`): the
/// chain goes on with the request (`before_request_lent`, headers in `request.headers`) or the
/// response (`after_response_lent`, headers in `response.headers`) the hook was lent, with these
/// headers set: each name given replaces every header of that name (names compared ignoring
/// case), or is added at the end when there was none. Nothing else of the output is read.
pub const BW_OUT_HEADERS: u32 = 9;

/// Error code: the plugin failed for a reason of its own (HTTP 500).
pub const BW_ERR_INTERNAL: u32 = 0;
/// Error code: the plugin panicked; `message` holds the panic message (HTTP 500).
pub const BW_ERR_PANIC: u32 = 1;
/// Error code: the request is malformed (HTTP 400).
pub const BW_ERR_BAD_REQUEST: u32 = 2;
/// Error code: the caller is not authenticated (HTTP 401).
pub const BW_ERR_UNAUTHORIZED: u32 = 3;
/// Error code: the caller may not do this (HTTP 403).
pub const BW_ERR_FORBIDDEN: u32 = 4;
/// Error code: no such resource (HTTP 404).
pub const BW_ERR_NOT_FOUND: u32 = 5;
/// Error code: the plugin's configuration is invalid (HTTP 500, or a failed `initialize`).
pub const BW_ERR_CONFIG: u32 = 6;
/// Error code: a dependency of the plugin is unavailable (HTTP 503).
pub const BW_ERR_UNAVAILABLE: u32 = 7;
/// Error code: the task was cancelled before it finished.
pub const BW_ERR_CANCELLED: u32 = 8;
/// Error code: answer with the HTTP status in `response.status`.
pub const BW_ERR_STATUS: u32 = 9;

/// Health code: the plugin works.
pub const BW_HEALTH_HEALTHY: u32 = 0;
/// Health code: the plugin works with reduced service.
pub const BW_HEALTH_DEGRADED: u32 = 1;
/// Health code: the plugin does not work.
pub const BW_HEALTH_UNHEALTHY: u32 = 2;

/// Log levels of [`BwHostServices::log`], most severe first.
pub const BW_LOG_ERROR: u32 = 1;
/// See [`BW_LOG_ERROR`].
pub const BW_LOG_WARN: u32 = 2;
/// See [`BW_LOG_ERROR`].
pub const BW_LOG_INFO: u32 = 3;
/// See [`BW_LOG_ERROR`].
pub const BW_LOG_DEBUG: u32 = 4;
/// See [`BW_LOG_ERROR`].
pub const BW_LOG_TRACE: u32 = 5;

/// Borrowed bytes: `len` bytes at `ptr` (`ptr` may be dangling or null when `len` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwStr {
    /// First byte.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

/// A name and a value, both borrowed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwKv {
    /// The name (header names are lower case).
    pub key: BwStr,
    /// The value.
    pub value: BwStr,
}

/// A borrowed list of [`BwKv`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwKvList {
    /// First pair.
    pub ptr: *const BwKv,
    /// Number of pairs.
    pub len: usize,
}

/// An HTTP request, borrowed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwRequest {
    /// Method, upper case (`GET`).
    pub method: BwStr,
    /// Path without the query string (`/hello/ana`).
    pub path: BwStr,
    /// Values of the endpoint's `{param}` segments.
    pub params: BwKvList,
    /// Decoded query parameters in order.
    pub query: BwKvList,
    /// Headers in order, names in lower case.
    pub headers: BwKvList,
    /// Body bytes.
    pub body: BwStr,
}

/// An HTTP response, borrowed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order.
    pub headers: BwKvList,
    /// Body bytes.
    pub body: BwStr,
}

/// What a call produced. The host passes a zeroed one; the plugin fills it in.
///
/// Everything it points to belongs to the plugin until the host calls `release(owner)`, which it does
/// exactly once when `release` is not null.
#[repr(C)]
#[derive(Debug)]
pub struct BwOutput {
    /// One of the `BW_OUT_*` values.
    pub kind: u32,
    /// `BW_ERR_*` for [`BW_OUT_ERROR`], `BW_HEALTH_*` for [`BW_OUT_HEALTH`], else 0.
    pub code: u32,
    /// The replacement request of [`BW_OUT_REQUEST`].
    pub request: BwRequest,
    /// The response of [`BW_OUT_RESPONSE`]; `status` also carries [`BW_ERR_STATUS`]'s status.
    pub response: BwResponse,
    /// Error or health message.
    pub message: BwStr,
    /// The task of [`BW_OUT_PENDING`], to pass to `task_start` (or to `task_cancel` to drop it).
    pub task: *mut c_void,
    /// Passed to `release`.
    pub owner: *mut c_void,
    /// Frees what this output points to; called once by the host. May be null.
    pub release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

/// How a pending task reports its result. Provided by the host to `task_start`.
#[repr(C)]
#[derive(Debug)]
pub struct BwCompletion {
    /// The host's context; passed back to `complete`.
    pub ctx: *mut c_void,
    /// Called exactly once, from any thread, with the task's output (a [`BW_OUT_ERROR`] with
    /// [`BW_ERR_CANCELLED`] if the task was cancelled). The host takes ownership of the output's
    /// contents; the `BwOutput` itself is only valid during the call.
    pub complete: Option<unsafe extern "C" fn(ctx: *mut c_void, output: *mut BwOutput)>,
}

/// ABI 1.3: where a hook call of [`BwPluginVTable::before_request_now`] or
/// [`BwPluginVTable::after_response_now`] sends the headers it sets, one at a time, so that they
/// cross without an output of the plugin's to hold them and to release. Provided by the host for
/// the duration of the call only.
#[repr(C)]
#[derive(Debug)]
pub struct BwHeaderSink {
    /// The host's context; passed back to `set`.
    pub ctx: *mut c_void,
    /// Sets header `name` to `value` on the request (`before_request_now`) or the response
    /// (`after_response_now`) the call goes on with, in place of any header of that name (any
    /// case). The host copies both strings before it returns; a later `set` of the same name adds
    /// a second value. Returns 0, or nonzero when the host refuses the header (a name or value that
    /// is not UTF-8): the plugin should then answer ERROR, and the host fails the call anyway.
    /// Called only from the thread of the call, during the call; never unwinds.
    pub set: Option<unsafe extern "C" fn(ctx: *mut c_void, name: BwStr, value: BwStr) -> i32>,
}

/// Services the host offers a plugin instance, passed to `instance_new`. The host keeps it alive and
/// unchanged until `instance_free` has returned.
#[repr(C)]
#[derive(Debug)]
pub struct BwHostServices {
    /// `size_of::<BwHostServices>()` as the host compiled it; fields past it do not exist.
    pub size: u32,
    /// The host's [`ABI_MINOR`].
    pub abi_minor: u16,
    /// Padding, zero.
    pub reserved: u16,
    /// The host's context; first argument of every function below.
    pub ctx: *mut c_void,
    /// The name the operator gave this plugin instance in the config.
    pub plugin_name: BwStr,
    /// The most verbose `BW_LOG_*` level the host will record (0: none).
    pub max_log_level: u32,
    /// Records one log line of the plugin. Thread-safe; never unwinds.
    pub log:
        Option<unsafe extern "C" fn(ctx: *mut c_void, level: u32, target: BwStr, message: BwStr)>,
    /// v1.2: how many threads the plugin's runtime should run its waiting calls on, as the
    /// operator configured it; 0: the plugin's default. The plugin starts them when it first has
    /// something to wait on, and caps the number at [`MAX_WORKERS`]. A library's instances share
    /// one runtime, which gets the largest number any of them asked for before it started.
    pub workers: u32,
    /// v1.2: padding, zero.
    pub reserved2: u32,
}

/// `size_of::<BwHostServices>()` of ABI 1.0 and 1.1 (64-bit targets): the smallest a plugin
/// accepts. Fields past a host's `size` do not exist: a plugin reads them only when it is larger.
pub const HOST_SERVICES_SIZE_V1_0: usize = std::mem::offset_of!(BwHostServices, workers);

/// The most threads a plugin's runtime starts for [`BwHostServices::workers`]; larger requests
/// are capped.
pub const MAX_WORKERS: u32 = 64;

/// The root of a plugin library, exported as the static [`ENTRY_SYMBOL`].
///
/// Every function pointer is nullable in the type; a plugin sets the ten of v1.0 (the host refuses
/// one that does not), while `config_schema` (v1.1), the `*_lent` entries (v1.2), the hooks'
/// `*_now` entries (v1.3) and `handle_now` (v1.4) may be null.
/// `instance` arguments are what `instance_new` returned; a plugin must accept concurrent calls on
/// one instance from several threads.
#[repr(C)]
#[derive(Debug)]
pub struct BwPluginVTable {
    /// [`ABI_MAGIC`].
    pub magic: u64,
    /// `size_of::<BwPluginVTable>()` as the plugin compiled it.
    pub size: u32,
    /// The plugin's [`ABI_MAJOR`].
    pub abi_major: u16,
    /// The plugin's [`ABI_MINOR`].
    pub abi_minor: u16,
    /// The same bytes as the metadata section (see [`crate::metadata`]).
    pub metadata: BwStr,
    /// Creates an instance. Returns null on failure, with the reason in `out`.
    pub instance_new: Option<
        unsafe extern "C" fn(host: *const BwHostServices, out: *mut BwOutput) -> *mut c_void,
    >,
    /// Destroys an instance once no call on it is running or pending.
    pub instance_free: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// Initializes the instance with its config, a JSON document. Output: DONE or ERROR.
    pub initialize: Option<
        unsafe extern "C" fn(instance: *mut c_void, config_json: BwStr, out: *mut BwOutput) -> i32,
    >,
    /// Serves an endpoint. Output: RESPONSE or ERROR.
    pub handle: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// Runs before the endpoint. Output: CONTINUE, REQUEST, RESPONSE (answer early) or ERROR.
    pub before_request: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// Runs after the endpoint. Output: RESPONSE (possibly changed) or ERROR.
    pub after_response: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            response: *const BwResponse,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// Reports health. Output: HEALTH or ERROR.
    pub health_check:
        Option<unsafe extern "C" fn(instance: *mut c_void, out: *mut BwOutput) -> i32>,
    /// Shuts the instance down. Output: DONE or ERROR.
    pub shutdown: Option<unsafe extern "C" fn(instance: *mut c_void, out: *mut BwOutput) -> i32>,
    /// Starts a pending task. The plugin calls `completion` exactly once. Returns a handle that the
    /// host passes to `task_cancel` exactly once.
    pub task_start:
        Option<unsafe extern "C" fn(task: *mut c_void, completion: BwCompletion) -> *mut c_void>,
    /// Releases a task handle: cancels the task if it still runs (its completion then reports
    /// [`BW_ERR_CANCELLED`]), else only frees the handle. Also accepts a never-started `task`.
    pub task_cancel: Option<unsafe extern "C" fn(handle: *mut c_void)>,
    /// ABI 1.1: the JSON Schema of the plugin's config. Needs no instance and creates none.
    /// Output: SCHEMA (the JSON text in `message`), DONE (the plugin declares no schema) or ERROR;
    /// returns [`BW_READY`]. May be null (no schema here; a C plugin may declare one in its
    /// metadata's `config_schema` key instead). A host reads it only when `size` covers it.
    pub config_schema: Option<unsafe extern "C" fn(out: *mut BwOutput) -> i32>,
    /// ABI 1.2: serves an endpoint like `handle`, reading the request in place. The host keeps
    /// `request` and everything it points to valid and unchanged until the call is over: until it
    /// returns [`BW_READY`]; if it returns [`BW_PENDING`], until the task's completion is called or
    /// `task_cancel` of the task (started or not) returns, whichever comes first. So a plugin that
    /// sets this entry must stop reading the request before it calls the completion, and its
    /// `task_cancel` must not return while the task could still read it. May be null: the host then
    /// calls `handle`, whose request is lent for the call only. A host reads it only when `size`
    /// covers it.
    pub handle_lent: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// ABI 1.2: runs before the endpoint like `before_request`, reading the request in place, lent
    /// as to `handle_lent` (until the call is over, also when it is pending). Output: CONTINUE,
    /// HEADERS (set these request headers and go on: nothing else of the request is copied either
    /// way), REQUEST, RESPONSE (answer early) or ERROR. May be null: the host then calls
    /// `before_request`. A host reads it only when `size` covers it.
    pub before_request_lent: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// ABI 1.2: runs after the endpoint like `after_response`, reading the request and the
    /// response in place, both lent as the request of `handle_lent` is. Output: CONTINUE (the
    /// response goes on unchanged), HEADERS (set these response headers; status and body stay),
    /// RESPONSE (this response instead) or ERROR. May be null: the host then calls
    /// `after_response`. A host reads it only when `size` covers it.
    pub after_response_lent: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            response: *const BwResponse,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// ABI 1.3: runs before the endpoint like `before_request_lent`, as a call that never waits:
    /// it must return [`BW_READY`] (a host treats anything else as the plugin's error, and starts
    /// no task). The request is lent for the call only. The headers it sets go to `sink` (set
    /// them and go on); output: CONTINUE (go on, with the headers given to `sink` set), HEADERS
    /// (as in `before_request_lent`; set after those given to `sink`), REQUEST, RESPONSE (answer
    /// early) or ERROR. May be null: the host then calls `before_request_lent`. A host reads it only
    /// when `size` covers it.
    pub before_request_now: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            sink: *const BwHeaderSink,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// ABI 1.3: runs after the endpoint like `after_response_lent`, as a call that never waits
    /// (see `before_request_now`). The request and the response are lent for the call only; the
    /// response headers it sets go to `sink`. Output: CONTINUE (the response goes on, with the
    /// headers given to `sink` set), HEADERS, RESPONSE (this response instead) or ERROR. May be
    /// null: the host then calls `after_response_lent`. A host reads it only when `size` covers it.
    pub after_response_now: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            response: *const BwResponse,
            sink: *const BwHeaderSink,
            out: *mut BwOutput,
        ) -> i32,
    >,
    /// ABI 1.4: serves an endpoint like `handle_lent`, as a call that never waits: it must
    /// return [`BW_READY`] (a host treats anything else as the plugin's error, and starts no
    /// task). The request is lent for the call only, so the host can lend it from its stack and
    /// make the call without a future. Output: RESPONSE or ERROR. May be null: the host then calls
    /// `handle_lent` (or `handle`). A host reads it only when `size` covers it. A plugin whose
    /// endpoint never waits may point `handle_lent` at the same function, for hosts of 1.2 and
    /// 1.3.
    pub handle_now: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request: *const BwRequest,
            out: *mut BwOutput,
        ) -> i32,
    >,
}

/// The size of a [`BwPluginVTable`] of ABI 1.0, which ended with `task_cancel`: the least a host of
/// this major accepts.
pub const VTABLE_SIZE_V1_0: usize = std::mem::offset_of!(BwPluginVTable, config_schema);
/// The size of a [`BwPluginVTable`] of ABI 1.1, which ended with `config_schema`.
pub const VTABLE_SIZE_V1_1: usize = std::mem::offset_of!(BwPluginVTable, handle_lent);
/// The size of a [`BwPluginVTable`] of ABI 1.2, which ended with `after_response_lent`.
pub const VTABLE_SIZE_V1_2: usize = std::mem::offset_of!(BwPluginVTable, before_request_now);
/// The size of a [`BwPluginVTable`] of ABI 1.3, which ended with `after_response_now`.
pub const VTABLE_SIZE_V1_3: usize = std::mem::offset_of!(BwPluginVTable, handle_now);

// SAFETY: the vtable is immutable data: function pointers and a pointer to the library's own
// immutable metadata bytes. Sharing it between threads is sound.
unsafe impl Sync for BwPluginVTable {}

impl BwStr {
    /// An empty string.
    pub const EMPTY: BwStr = BwStr {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows `bytes`; the result is valid while `bytes` is.
    pub const fn new(bytes: &[u8]) -> BwStr {
        BwStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes this points to.
    ///
    /// # Safety
    /// `ptr` must point to `len` initialized bytes (or `len` must be 0) that stay valid and unchanged
    /// for `'a`.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller guarantees `len` valid bytes at a non-null `ptr` for `'a`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// Copies the bytes into a `String`, replacing invalid UTF-8.
    ///
    /// # Safety
    /// As [`BwStr::as_bytes`], for the duration of the call.
    pub unsafe fn to_string_lossy(self) -> String {
        // SAFETY: the caller's contract.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }

    /// The bytes as UTF-8 text, or `None` if they are not UTF-8.
    ///
    /// # Safety
    /// As [`BwStr::as_bytes`], for `'a`.
    pub unsafe fn to_str<'a>(self) -> Option<&'a str> {
        // SAFETY: the caller's contract.
        let bytes = unsafe { self.as_bytes() };
        // Header names and values are short and almost always ASCII: checked a word at a time,
        // that costs a fraction of the general UTF-8 check.
        if bytes.is_ascii() {
            // SAFETY: ASCII is UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).ok()
    }
}

impl BwKvList {
    /// An empty list.
    pub const EMPTY: BwKvList = BwKvList {
        ptr: std::ptr::NonNull::<BwKv>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows `pairs`; the result is valid while `pairs` is.
    pub fn new(pairs: &[BwKv]) -> BwKvList {
        BwKvList {
            ptr: pairs.as_ptr(),
            len: pairs.len(),
        }
    }

    /// The pairs this points to.
    ///
    /// # Safety
    /// `ptr` must point to `len` initialized pairs (or `len` must be 0) that stay valid for `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [BwKv] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller guarantees `len` valid pairs at a non-null `ptr` for `'a`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

impl BwRequest {
    /// A request with every field empty.
    pub const EMPTY: BwRequest = BwRequest {
        method: BwStr::EMPTY,
        path: BwStr::EMPTY,
        params: BwKvList::EMPTY,
        query: BwKvList::EMPTY,
        headers: BwKvList::EMPTY,
        body: BwStr::EMPTY,
    };
}

impl BwResponse {
    /// A response with status 0 and every other field empty.
    pub const EMPTY: BwResponse = BwResponse {
        status: 0,
        headers: BwKvList::EMPTY,
        body: BwStr::EMPTY,
    };
}

impl BwOutput {
    /// The zeroed output the host passes to a call.
    pub const fn empty() -> BwOutput {
        BwOutput {
            kind: BW_OUT_NONE,
            code: 0,
            request: BwRequest::EMPTY,
            response: BwResponse::EMPTY,
            message: BwStr::EMPTY,
            task: std::ptr::null_mut(),
            owner: std::ptr::null_mut(),
            release: None,
        }
    }
}

impl Default for BwOutput {
    fn default() -> Self {
        BwOutput::empty()
    }
}

// SAFETY: an output is a bag of pointers into memory owned by the plugin's `owner`, which the plugin
// allocated for exactly this hand-over; it does not depend on the thread that made it, and the host
// moves it to the thread that awaits the call.
unsafe impl Send for BwOutput {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // These figures are the ABI. If one changes, the ABI major must change and the C header with it.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn layout_is_stable() {
        assert_eq!(size_of::<BwStr>(), 16);
        assert_eq!(size_of::<BwKv>(), 32);
        assert_eq!(size_of::<BwKvList>(), 16);
        assert_eq!(size_of::<BwRequest>(), 96);
        assert_eq!(offset_of!(BwRequest, path), 16);
        assert_eq!(offset_of!(BwRequest, params), 32);
        assert_eq!(offset_of!(BwRequest, query), 48);
        assert_eq!(offset_of!(BwRequest, headers), 64);
        assert_eq!(offset_of!(BwRequest, body), 80);
        assert_eq!(size_of::<BwResponse>(), 40);
        assert_eq!(offset_of!(BwResponse, headers), 8);
        assert_eq!(offset_of!(BwResponse, body), 24);
        assert_eq!(size_of::<BwOutput>(), 184);
        assert_eq!(offset_of!(BwOutput, code), 4);
        assert_eq!(offset_of!(BwOutput, request), 8);
        assert_eq!(offset_of!(BwOutput, response), 104);
        assert_eq!(offset_of!(BwOutput, message), 144);
        assert_eq!(offset_of!(BwOutput, task), 160);
        assert_eq!(offset_of!(BwOutput, owner), 168);
        assert_eq!(offset_of!(BwOutput, release), 176);
        assert_eq!(size_of::<BwCompletion>(), 16);
        assert_eq!(size_of::<BwHostServices>(), 56);
        assert_eq!(offset_of!(BwHostServices, ctx), 8);
        assert_eq!(offset_of!(BwHostServices, plugin_name), 16);
        assert_eq!(offset_of!(BwHostServices, max_log_level), 32);
        assert_eq!(offset_of!(BwHostServices, log), 40);
        assert_eq!(HOST_SERVICES_SIZE_V1_0, 48);
        assert_eq!(offset_of!(BwHostServices, workers), 48);
        assert_eq!(offset_of!(BwHostServices, reserved2), 52);
        assert_eq!(size_of::<BwHeaderSink>(), 16);
        assert_eq!(offset_of!(BwHeaderSink, set), 8);
        assert_eq!(size_of::<BwPluginVTable>(), 168);
        assert_eq!(VTABLE_SIZE_V1_0, 112);
        assert_eq!(VTABLE_SIZE_V1_1, 120);
        assert_eq!(VTABLE_SIZE_V1_2, 144);
        assert_eq!(VTABLE_SIZE_V1_3, 160);
        assert_eq!(align_of::<BwPluginVTable>(), 8);
        assert_eq!(offset_of!(BwPluginVTable, size), 8);
        assert_eq!(offset_of!(BwPluginVTable, abi_major), 12);
        assert_eq!(offset_of!(BwPluginVTable, abi_minor), 14);
        assert_eq!(offset_of!(BwPluginVTable, metadata), 16);
        assert_eq!(offset_of!(BwPluginVTable, instance_new), 32);
        assert_eq!(offset_of!(BwPluginVTable, instance_free), 40);
        assert_eq!(offset_of!(BwPluginVTable, initialize), 48);
        assert_eq!(offset_of!(BwPluginVTable, handle), 56);
        assert_eq!(offset_of!(BwPluginVTable, before_request), 64);
        assert_eq!(offset_of!(BwPluginVTable, after_response), 72);
        assert_eq!(offset_of!(BwPluginVTable, health_check), 80);
        assert_eq!(offset_of!(BwPluginVTable, shutdown), 88);
        assert_eq!(offset_of!(BwPluginVTable, task_start), 96);
        assert_eq!(offset_of!(BwPluginVTable, task_cancel), 104);
        assert_eq!(offset_of!(BwPluginVTable, config_schema), 112);
        assert_eq!(offset_of!(BwPluginVTable, handle_lent), 120);
        assert_eq!(offset_of!(BwPluginVTable, before_request_lent), 128);
        assert_eq!(offset_of!(BwPluginVTable, after_response_lent), 136);
        assert_eq!(offset_of!(BwPluginVTable, before_request_now), 144);
        assert_eq!(offset_of!(BwPluginVTable, after_response_now), 152);
        assert_eq!(offset_of!(BwPluginVTable, handle_now), 160);
    }

    #[test]
    fn text_is_checked_as_utf8_ascii_or_not() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (b"", Some("")),
            (b"x-request-id", Some("x-request-id")),
            (
                b"a value longer than a word or two",
                Some("a value longer than a word or two"),
            ),
            ("żółw, a tortoise".as_bytes(), Some("żółw, a tortoise")),
            (b"ascii then \xff", None),
            (b"\xc3", None),
            (b"a surrogate \xed\xa0\x80 here", None),
        ];
        for (bytes, text) in cases {
            // SAFETY: the bytes are alive for the call.
            assert_eq!(unsafe { BwStr::new(bytes).to_str() }, text, "{bytes:?}");
        }
    }

    #[test]
    fn magic_spells_bwplugin() {
        assert_eq!(&ABI_MAGIC.to_le_bytes(), b"BWPLUGIN");
        assert_eq!(ENTRY_SYMBOL_NUL, format!("{ENTRY_SYMBOL}\0").as_bytes());
    }
}

//! One call into a plugin library, from the host's side: borrowed views of the request (on the
//! stack for a call that lends them for the call only, in the call's future for `handle_lent`,
//! which lends them until the call is over), the plugin's output filled in place, the wait for a
//! pending task, and the checked copy of the output into host types, released through the plugin's
//! own function.

use std::ffi::c_void;

use crate::CallError;
use backworks_plugin_sdk::abi::*;
use backworks_plugin_sdk::{ErrorKind, Headers, PluginError, Request, Response, Text};
use tokio::sync::oneshot;

/// An output the plugin handed over; released through the plugin's function when dropped. (The
/// code of `release` stays mapped: libraries are never unloaded.)
pub(super) struct Output {
    pub(super) raw: BwOutput,
}

impl Output {
    /// The zeroed output a call starts with.
    pub(super) fn empty() -> Output {
        Output {
            raw: BwOutput::empty(),
        }
    }
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
pub(super) struct TaskGuard {
    pub(super) handle: *mut c_void,
    pub(super) cancel: unsafe extern "C" fn(*mut c_void),
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

/// A call whose task is running; its output arrives through `receiver`. Dropping it releases the
/// task handle, which cancels the task if it has not completed.
pub(super) struct Waiting {
    pub(super) receiver: oneshot::Receiver<BwOutput>,
    /// Cancels the task if this call is dropped before it completes.
    pub(super) _guard: TaskGuard,
}

/// Finishes a started call: at once if it was ready, else when its task completes; then releases
/// the task handle (`waiting` is `None` afterwards) and puts the task's output in `out` (releasing
/// the pending output it replaces). If this future is dropped first, the handle stays in
/// `waiting`, whose owner releases it, which cancels the task.
pub(super) async fn finish(out: &mut Output, waiting: &mut Option<Waiting>) {
    let Some(task) = waiting else {
        return;
    };
    let raw = (&mut task.receiver)
        .await
        .unwrap_or_else(|_| cancelled_output());
    *waiting = None;
    *out = Output { raw };
}

/// What a call whose completion was dropped uncalled answers: only if the plugin broke the ABI.
pub(super) fn cancelled_output() -> BwOutput {
    let mut lost = BwOutput::empty();
    lost.kind = BW_OUT_ERROR;
    lost.code = BW_ERR_CANCELLED;
    lost
}

/// The completion a pending task calls: moves the output into the waiting call's channel.
///
/// # Safety
/// `ctx` must be the boxed sender made for this task (the `ctx` of the [`BwCompletion`] given to
/// `task_start`), and this must be called exactly once for it; `output` must point to a valid
/// output for the duration of the call, whose contents (and the duty to release them) pass to the
/// host.
pub(super) unsafe extern "C" fn on_complete(ctx: *mut c_void, output: *mut BwOutput) {
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

pub(super) fn str_view(s: &str) -> BwStr {
    BwStr::new(s.as_bytes())
}

pub(super) fn kv((key, value): (&str, &str)) -> BwKv {
    BwKv {
        key: str_view(key),
        value: str_view(value),
    }
}

/// Pairs of a request whose views fit on the stack; more take one allocation.
const INLINE_PAIRS: usize = 16;

/// Pairs of a lent request whose views fit inline in the call's future, which is boxed: a larger
/// future costs more to move into its box and leaves the allocator's per-thread cache (over 1 KiB).
pub(super) const LENT_INLINE_PAIRS: usize = 8;

/// Borrowed ABI views of a [`Request`]: pointers into its strings (no copies) and the pair arrays
/// they need, inline up to `N` pairs. [`RequestViews::fill`] points them at a request; they are
/// valid while that request is alive and unchanged, and this value is not moved.
pub(super) struct RequestViews<const N: usize> {
    inline: [std::mem::MaybeUninit<BwKv>; N],
    heap: Vec<BwKv>,
    view: BwRequest,
}

// SAFETY: the views are plain pointers into a `Request` (which is `Send + Sync`) and into this
// value; nothing in them is tied to a thread, and the ABI lets a plugin read a lent request from
// any thread.
unsafe impl<const N: usize> Send for RequestViews<N> {}

impl<const N: usize> RequestViews<N> {
    /// Views of nothing yet; allocates nothing and initializes no pair.
    pub(super) fn new() -> RequestViews<N> {
        RequestViews {
            inline: [const { std::mem::MaybeUninit::uninit() }; N],
            heap: Vec::new(),
            view: BwRequest::EMPTY,
        }
    }

    /// Points the views at `request` and returns them. They stay valid while `request` is alive
    /// and unchanged and `self` is neither moved nor filled again.
    pub(super) fn fill(&mut self, request: &Request) -> &BwRequest {
        let (params, query, headers) = (&request.params, &request.query, &request.headers);
        let total = params.len() + query.len() + headers.len();
        let pairs: &[BwKv] = if total <= N {
            // One plain loop per list, each over the rest of the slots.
            let mut filled = 0;
            for (slot, (k, v)) in self.inline[filled..].iter_mut().zip(params) {
                slot.write(kv((k, v)));
            }
            filled += params.len();
            for (slot, (k, v)) in self.inline[filled..].iter_mut().zip(query) {
                slot.write(kv((k, v)));
            }
            filled += query.len();
            for (slot, pair) in self.inline[filled..].iter_mut().zip(headers.iter()) {
                slot.write(kv(pair));
            }
            filled += headers.len();
            // SAFETY: `filled` is `total`, at most `N`, and the three loops above
            // wrote the first `filled` elements (each list has exactly its `len()` pairs).
            unsafe { std::slice::from_raw_parts(self.inline.as_ptr().cast::<BwKv>(), filled) }
        } else {
            self.heap.clear();
            self.heap.extend(
                params
                    .iter()
                    .chain(query)
                    .map(|(k, v)| kv((k, v)))
                    .chain(headers.iter().map(kv)),
            );
            &self.heap
        };
        let (params, rest) = pairs.split_at(params.len());
        let (query, headers) = rest.split_at(query.len());
        self.view = BwRequest {
            method: str_view(&request.method),
            path: str_view(&request.path),
            params: BwKvList::new(params),
            query: BwKvList::new(query),
            headers: BwKvList::new(headers),
            body: BwStr::new(&request.body),
        };
        &self.view
    }
}

/// Headers of a lent response whose views fit inline in a hook call's future; more take one
/// allocation.
pub(super) const LENT_RESPONSE_PAIRS: usize = 4;

/// Borrowed ABI views of a [`Response`], as [`RequestViews`] are of a request: pointers into it,
/// with its header pairs inline up to `N`.
pub(super) struct ResponseViews<const N: usize> {
    inline: [std::mem::MaybeUninit<BwKv>; N],
    heap: Vec<BwKv>,
    view: BwResponse,
}

// SAFETY: as `RequestViews`: plain pointers into a `Response` (`Send + Sync`) and into this value.
unsafe impl<const N: usize> Send for ResponseViews<N> {}

impl<const N: usize> ResponseViews<N> {
    /// Views of nothing yet; allocates nothing.
    pub(super) fn new() -> ResponseViews<N> {
        ResponseViews {
            inline: [const { std::mem::MaybeUninit::uninit() }; N],
            heap: Vec::new(),
            view: BwResponse::EMPTY,
        }
    }

    /// Points the views at `response` and returns them; valid on the terms of
    /// [`RequestViews::fill`].
    pub(super) fn fill(&mut self, response: &Response) -> &BwResponse {
        let headers = &response.headers;
        let pairs: &[BwKv] = if headers.len() <= N {
            for (slot, pair) in self.inline.iter_mut().zip(headers.iter()) {
                slot.write(kv(pair));
            }
            // SAFETY: the loop wrote the first `headers.len()` (at most `N`) elements.
            unsafe {
                std::slice::from_raw_parts(self.inline.as_ptr().cast::<BwKv>(), headers.len())
            }
        } else {
            self.heap.clear();
            self.heap.extend(headers.iter().map(kv));
            &self.heap
        };
        self.view = BwResponse {
            status: response.status,
            headers: BwKvList::new(pairs),
            body: BwStr::new(&response.body),
        };
        &self.view
    }
}

/// Calls `f` with borrowed ABI views of `request` (pointers into its strings, no copies), built on
/// the stack.
pub(super) fn with_request_view<R>(request: &Request, f: impl FnOnce(&BwRequest) -> R) -> R {
    f(RequestViews::<INLINE_PAIRS>::new().fill(request))
}

/// The plugin's invalid response: text of it that is not UTF-8.
fn not_utf8(plugin: &str, what: std::fmt::Arguments<'_>) -> CallError {
    CallError::InvalidResponse(format!(
        "plugin `{plugin}` answered {what} that is not UTF-8"
    ))
}

/// Copies plugin-owned pairs into owned strings, refusing any that is not UTF-8.
///
/// # Safety
/// As [`BwKvList::as_slice`], and each pair's strings as [`BwStr::as_bytes`], during the call.
unsafe fn pairs(plugin: &str, what: &str, list: BwKvList) -> Result<Vec<(Text, Text)>, CallError> {
    // SAFETY: the caller's contract.
    let list = unsafe { list.as_slice() };
    let mut pairs = Vec::with_capacity(list.len());
    for pair in list {
        // SAFETY: the caller's contract covers the pairs' strings.
        let Some(key) = (unsafe { pair.key.to_str() }) else {
            return Err(not_utf8(plugin, format_args!("a {what} name")));
        };
        // SAFETY: as above.
        let Some(value) = (unsafe { pair.value.to_str() }) else {
            return Err(not_utf8(plugin, format_args!("a value of {what} `{key}`")));
        };
        pairs.push((key.into(), value.into()));
    }
    Ok(pairs)
}

/// Copies plugin-owned header pairs into [`Headers`] (names lower-cased), with room for `spare`
/// more, refusing any that is not UTF-8.
///
/// # Safety
/// As [`pairs`].
unsafe fn headers(
    plugin: &str,
    what: &str,
    list: BwKvList,
    spare: usize,
) -> Result<Headers, CallError> {
    // SAFETY: the caller's contract.
    let list = unsafe { list.as_slice() };
    let mut headers = Headers::with_capacity(list.len() + spare);
    for pair in list {
        // SAFETY: the caller's contract covers the pairs' strings.
        let Some(key) = (unsafe { pair.key.to_str() }) else {
            return Err(not_utf8(plugin, format_args!("a {what} name")));
        };
        // SAFETY: as above.
        let Some(value) = (unsafe { pair.value.to_str() }) else {
            return Err(not_utf8(plugin, format_args!("a value of {what} `{key}`")));
        };
        headers.append(key, value);
    }
    Ok(headers)
}

/// The headers a hook call of ABI 1.3 (`before_request_now`, `after_response_now`) sets, sent
/// one at a time through the [`BwHeaderSink`] it is given ([`HeaderSink::abi`]): copied as they
/// come, checked like an output's, with nothing of the plugin's to release afterwards. The first
/// is kept apart, so that the common edit of one header needs no list.
pub(super) struct HeaderSink {
    first: Option<(Text, Text)>,
    /// The headers after the first (names lower-cased).
    rest: Headers,
    /// What the plugin sent that was refused (text that is not UTF-8), if anything.
    pub(super) refused: Option<&'static str>,
}

/// What a [`HeaderSink`] got.
pub(super) enum SunkHeaders {
    None,
    /// One header, its name as the plugin sent it: whoever applies the edit
    /// ([`Headers::insert`]) lower-cases it, so it is not done twice (measured: ~190
    /// instructions a request on the hook path).
    One(Text, Text),
    /// More than one, in the order sent, names lower-cased.
    Many(Headers),
}

impl HeaderSink {
    pub(super) fn new() -> HeaderSink {
        HeaderSink {
            first: None,
            rest: Headers::new(),
            refused: None,
        }
    }

    fn push(&mut self, name: &str, value: &str) {
        if self.first.is_none() {
            self.first = Some((Text::from(name), Text::from(value)));
        } else {
            self.rest.append(name, value);
        }
    }

    /// The headers sent, followed by `more` (an output's header edit, if it has one).
    pub(super) fn into_headers(self, more: Option<Headers>) -> SunkHeaders {
        let more = more.filter(|more| !more.is_empty());
        match (self.first, more) {
            (None, None) => SunkHeaders::None,
            (None, Some(more)) => SunkHeaders::Many(more),
            (Some((name, value)), None) if self.rest.is_empty() => SunkHeaders::One(name, value),
            (Some((name, value)), more) => {
                let more = more.unwrap_or_default();
                let mut headers = Headers::with_capacity(1 + self.rest.len() + more.len());
                headers.append(name, value);
                for (name, value) in self.rest.iter().chain(more.iter()) {
                    headers.append(name, value);
                }
                SunkHeaders::Many(headers)
            }
        }
    }

    /// The ABI sink that writes into this one; valid while `self` is neither moved nor dropped
    /// (the call it is given to).
    pub(super) fn abi(&mut self) -> BwHeaderSink {
        BwHeaderSink {
            ctx: std::ptr::from_mut(self).cast(),
            set: Some(header_sink_set),
        }
    }
}

/// The `set` of a [`HeaderSink`]'s ABI sink.
///
/// # Safety
/// `ctx` must be the [`HeaderSink`] the sink was made from, alive and used by no one else for the
/// call; `name` and `value` as [`BwStr::as_bytes`] for the call.
unsafe extern "C" fn header_sink_set(ctx: *mut c_void, name: BwStr, value: BwStr) -> i32 {
    // No panic crosses back into the plugin: a failure to copy is a refusal.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's contract: `ctx` is the call's own sink, and the strings are lent
        // for this call.
        let (sink, name, value) = unsafe {
            (
                &mut *ctx.cast::<HeaderSink>(),
                name.to_str(),
                value.to_str(),
            )
        };
        match (name, value) {
            (Some(name), Some(value)) => {
                sink.push(name, value);
                0
            }
            (None, _) => {
                sink.refused.get_or_insert("a header name");
                1
            }
            (_, None) => {
                sink.refused.get_or_insert("a header value");
                1
            }
        }
    }))
    .unwrap_or(1)
}

/// Room left in a plugin's response headers for a hook's edit: a header such as `x-request-id`
/// is then added without growing the list.
const RESPONSE_SPARE_HEADERS: usize = 1;

impl Output {
    pub(super) fn message(&self) -> String {
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe { self.raw.message.to_string_lossy() }
    }

    /// The plugin's error of an `ERROR` output, its kind read from its code through the SDK's
    /// kind table (an unknown code is `internal`).
    pub(super) fn error(&self) -> PluginError {
        let kind = ErrorKind::from_abi_code(self.raw.code).unwrap_or(ErrorKind::Internal);
        PluginError::new(kind, self.raw.response.status, self.message())
    }

    /// The response of a `RESPONSE` output, checked: a status outside 100–999 or text that is not
    /// UTF-8 is the plugin's invalid response, naming it.
    pub(super) fn response(&self, plugin: &str) -> Result<Response, CallError> {
        let raw = &self.raw.response;
        if !(100..=999).contains(&raw.status) {
            return Err(CallError::InvalidResponse(format!(
                "plugin `{plugin}` answered an invalid HTTP status {}",
                raw.status
            )));
        }
        let headers = if raw.headers.len == 0 {
            Headers::new()
        } else {
            // SAFETY: the output is unreleased, so its views are valid.
            unsafe { headers(plugin, "header", raw.headers, RESPONSE_SPARE_HEADERS)? }
        };
        Ok(Response {
            status: raw.status,
            headers,
            body: if raw.body.len == 0 {
                Vec::new()
            } else {
                // SAFETY: the output is unreleased, so its views are valid.
                unsafe { raw.body.as_bytes() }.to_vec()
            },
        })
    }

    /// The replacement request of a `REQUEST` output, checked like [`Output::response`].
    pub(super) fn request(&self, plugin: &str) -> Result<Request, CallError> {
        let raw = &self.raw.request;
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe {
            Ok(Request {
                method: raw
                    .method
                    .to_str()
                    .ok_or_else(|| not_utf8(plugin, format_args!("a request method")))?
                    .into(),
                path: raw
                    .path
                    .to_str()
                    .ok_or_else(|| not_utf8(plugin, format_args!("a request path")))?
                    .into(),
                params: pairs(plugin, "path parameter", raw.params)?,
                query: pairs(plugin, "query parameter", raw.query)?,
                headers: headers(plugin, "request header", raw.headers, 0)?,
                body: raw.body.as_bytes().to_vec(),
            })
        }
    }

    /// The headers of a `HEADERS` output (ABI 1.2's lent hooks): the response's list when
    /// `of_response`, else the request's; checked like [`Output::response`].
    pub(super) fn header_edits(
        &self,
        plugin: &str,
        of_response: bool,
    ) -> Result<Headers, CallError> {
        let (list, what) = if of_response {
            (self.raw.response.headers, "header")
        } else {
            (self.raw.request.headers, "request header")
        };
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe { headers(plugin, what, list, 0) }
    }

    /// The error of an output that is not the answer `call` expects: the plugin's error, or an
    /// invalid response when it answered another kind of output.
    pub(super) fn unexpected(&self, call: &str) -> CallError {
        if self.raw.kind == BW_OUT_ERROR {
            self.error().into()
        } else {
            CallError::InvalidResponse(format!(
                "plugin answered `{call}` with output kind {}",
                self.raw.kind
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output answering `status` with `headers`; the caller keeps them alive while it is read.
    fn answer(status: u16, headers: &[BwKv]) -> Output {
        let mut out = Output::empty();
        out.raw.kind = BW_OUT_RESPONSE;
        out.raw.response.status = status;
        out.raw.response.headers = BwKvList::new(headers);
        out.raw.response.body = BwStr::new(b"body");
        out
    }

    fn invalid(result: Result<Response, CallError>) -> String {
        match result {
            Err(CallError::InvalidResponse(message)) => message,
            other => panic!("expected an invalid response, got {other:?}"),
        }
    }

    #[test]
    fn a_sink_keeps_one_header_apart_and_lists_more_in_order() {
        let sent = |pairs: &[(&[u8], &[u8])], more: Option<Headers>| {
            let mut sink = HeaderSink::new();
            let abi = sink.abi();
            for (name, value) in pairs {
                // SAFETY: the sink's own function and context, the strings alive for the call.
                let refused =
                    unsafe { (abi.set.unwrap())(abi.ctx, BwStr::new(name), BwStr::new(value)) };
                assert_eq!(refused, i32::from(std::str::from_utf8(value).is_err()));
            }
            (sink.refused, sink.into_headers(more))
        };
        let listed = |headers: &Headers| {
            headers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        };
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        };

        assert!(matches!(sent(&[], None), (None, SunkHeaders::None)));
        let more: Headers = [("X-More", "m")].into_iter().collect();
        let (_, SunkHeaders::Many(headers)) = sent(&[], Some(more.clone())) else {
            panic!("an output's edit alone is listed");
        };
        assert_eq!(listed(&headers), pairs(&[("x-more", "m")]));
        // One header: as sent (the chain's `Headers::insert` lower-cases it), with no list.
        let (_, SunkHeaders::One(name, value)) = sent(&[(b"X-One", b"1")], None) else {
            panic!("one header is kept apart");
        };
        assert_eq!((name.as_str(), value.as_str()), ("X-One", "1"));
        // More: in the order sent, then the output's, names lower-cased.
        let (_, SunkHeaders::Many(headers)) =
            sent(&[(b"X-One", b"1"), (b"x-two", b"2")], Some(more))
        else {
            panic!("two headers are listed");
        };
        assert_eq!(
            listed(&headers),
            pairs(&[("x-one", "1"), ("x-two", "2"), ("x-more", "m")])
        );
        // A value that is not UTF-8 is refused and remembered; what came before it stays.
        let (refused, SunkHeaders::One(name, _)) =
            sent(&[(b"x-ok", b"1"), (b"x-bad", b"\xff")], None)
        else {
            panic!("the refused header is not kept");
        };
        assert_eq!((refused, name.as_str()), (Some("a header value"), "x-ok"));
    }

    #[test]
    fn responses_are_copied_and_checked() {
        let good = [BwKv {
            key: BwStr::new(b"X-Name"),
            value: BwStr::new(b"v"),
        }];
        let response = answer(201, &good).response("p").expect("a valid response");
        assert_eq!(response.status, 201);
        assert_eq!(
            response.headers.iter().collect::<Vec<_>>(),
            [("x-name", "v")]
        );
        assert_eq!(response.body, b"body");

        let bad_value = [BwKv {
            key: BwStr::new(b"x-bad"),
            value: BwStr::new(b"\xff\xfe"),
        }];
        let message = invalid(answer(200, &bad_value).response("p"));
        assert_eq!(
            message,
            "plugin `p` answered a value of header `x-bad` that is not UTF-8"
        );

        let bad_name = [BwKv {
            key: BwStr::new(b"x-\xc3"),
            value: BwStr::new(b"v"),
        }];
        let message = invalid(answer(200, &bad_name).response("p"));
        assert_eq!(
            message,
            "plugin `p` answered a header name that is not UTF-8"
        );

        let message = invalid(answer(42, &[]).response("p"));
        assert_eq!(message, "plugin `p` answered an invalid HTTP status 42");
    }

    #[test]
    fn response_views_borrow_every_header_inline_or_on_the_heap() {
        for count in [0, 1, LENT_RESPONSE_PAIRS, LENT_RESPONSE_PAIRS + 1, 9] {
            let mut response = Response::new(203).with_body("body");
            for i in 0..count {
                response.headers.append(format!("x-h{i}"), format!("v{i}"));
            }
            let mut views = ResponseViews::<LENT_RESPONSE_PAIRS>::new();
            let view = views.fill(&response);
            assert_eq!(view.status, 203);
            // SAFETY: the views borrow `response`, alive and unchanged here.
            let (headers, body) = unsafe {
                (
                    view.headers
                        .as_slice()
                        .iter()
                        .map(|kv| (kv.key.to_string_lossy(), kv.value.to_string_lossy()))
                        .collect::<Vec<_>>(),
                    view.body.as_bytes().to_vec(),
                )
            };
            let expected: Vec<(String, String)> = (0..count)
                .map(|i| (format!("x-h{i}"), format!("v{i}")))
                .collect();
            assert_eq!(headers, expected, "{count} headers");
            assert_eq!(body, b"body");
        }
    }

    #[test]
    fn request_views_borrow_every_part_on_the_stack_or_the_heap() {
        for headers in [1, INLINE_PAIRS + 3] {
            let mut request = Request::new("PUT", "/a/b");
            request.params.push(("id".into(), "7".into()));
            request.query.push(("q".into(), "x y".into()));
            for i in 0..headers {
                request.headers.append(format!("h{i}"), "v");
            }
            request.body = b"body".to_vec();
            let seen = with_request_view(&request, |abi| {
                // SAFETY: the views borrow `request`, alive for this closure.
                unsafe {
                    let pairs = |list: BwKvList| -> Vec<(String, String)> {
                        list.as_slice()
                            .iter()
                            .map(|kv| (kv.key.to_string_lossy(), kv.value.to_string_lossy()))
                            .collect()
                    };
                    (
                        abi.method.to_string_lossy(),
                        abi.path.to_string_lossy(),
                        pairs(abi.params),
                        pairs(abi.query),
                        pairs(abi.headers).len(),
                        abi.body.as_bytes().to_vec(),
                    )
                }
            });
            assert_eq!(seen.0, "PUT");
            assert_eq!(seen.1, "/a/b");
            assert_eq!(seen.2, [("id".to_owned(), "7".to_owned())]);
            assert_eq!(seen.3, [("q".to_owned(), "x y".to_owned())]);
            assert_eq!(seen.4, headers);
            assert_eq!(seen.5, b"body");
        }
    }
}

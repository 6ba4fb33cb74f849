//! Writing a finished call's outcome into a [`BwOutput`]: views into values the plugin owns, and the
//! `release` function that frees them.
//!
//! An output that points to nothing (done, continue, healthy, a response with no headers and no
//! body) takes no allocation and has no `release`. A hook's edit of a header or two moves into a
//! small boxed [`Edit`], a response with a few headers into a boxed [`Answer`]; anything else into
//! one boxed [`Owned`]. The views point into their heap buffers: the response's body is handed
//! over as it is, never copied.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::*;
use crate::{Headers, Health, PluginError, Request, Response, Text};

/// What a finished call hands over, before it is written into a [`BwOutput`].
pub(super) enum Outcome {
    Done,
    Response(Response),
    Request(Request),
    Continue,
    Health(Health),
    Error(PluginError),
    /// A config schema's JSON text (`config_schema`).
    Schema(String),
    /// Request headers to set (`before_request_lent`): `HEADERS` with `request.headers`.
    RequestHeaders(Headers),
    /// Response headers to set (`after_response_lent`): `HEADERS` with `response.headers`.
    ResponseHeaders(Headers),
    /// One request header to set, as `RequestHeaders` of one.
    RequestHeader(Text, Text),
    /// One response header to set, as `ResponseHeaders` of one.
    ResponseHeader(Text, Text),
}

/// Pairs of an output whose views fit in its owner, without a list of their own to allocate: a
/// response's few headers, a hook's header edit.
const INLINE_PAIRS: usize = 4;

/// An empty pair, for slots not written yet.
const NO_PAIR: BwKv = BwKv {
    key: BwStr::EMPTY,
    value: BwStr::EMPTY,
};

/// What an output's `owner` points to: the values its views borrow from.
struct Owned {
    /// The pair views, when there are at most [`INLINE_PAIRS`]; else in `pairs`.
    inline: [BwKv; INLINE_PAIRS],
    pairs: Vec<BwKv>,
    request: Option<Request>,
    response: Option<Response>,
    headers: Option<Headers>,
    message: String,
}

/// The `release` of every output [`write_output`] gives an owner: frees the boxed `T` (an
/// [`Owned`], an [`Edit`] or an [`Answer`]) that its views point into.
///
/// # Safety
/// `owner` must be null or the `owner` of an output that [`write_output`] filled with a `Box<T>`,
/// passed here exactly once; no view of that output may be read afterwards.
unsafe extern "C" fn release_box<T>(owner: *mut c_void) {
    if !owner.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `owner` is the `Box<T>` leaked by `write_output`, released once by the host.
            drop(unsafe { Box::from_raw(owner.cast::<T>()) })
        }));
    }
}

/// Points the first of `pairs` at `headers` (at most `pairs.len()` of them, which the callers
/// check) and returns the list of them.
fn header_views(headers: &Headers, pairs: &mut [BwKv]) -> BwKvList {
    let len = headers.len();
    for ((key, value), slot) in headers.iter().zip(pairs.iter_mut()) {
        *slot = BwKv {
            key: str_view(key),
            value: str_view(value),
        };
    }
    if len == 0 {
        BwKvList::EMPTY
    } else {
        BwKvList::new(&pairs[..len])
    }
}

fn str_view(s: &str) -> BwStr {
    BwStr::new(s.as_bytes())
}

/// The error code (and, for [`BW_ERR_STATUS`], the status) an error crosses the ABI with: its
/// kind's code, from the one table ([`crate::ErrorKind`]).
fn error_code(error: &PluginError) -> (u32, u16) {
    match error {
        PluginError::Status { status, .. } => (BW_ERR_STATUS, *status),
        _ => (error.error_kind().abi_code(), 0),
    }
}

/// Fills `out` with `outcome`. Borrowed views point into a boxed [`Owned`] that `release` frees.
pub(super) fn write_output(out: &mut BwOutput, outcome: Outcome) {
    *out = BwOutput::empty();
    // Outputs that point to nothing (the common answers of a no-op call) first, without the owner.
    match outcome {
        Outcome::Done => out.kind = BW_OUT_DONE,
        Outcome::Continue => out.kind = BW_OUT_CONTINUE,
        Outcome::Health(Health::Healthy) => {
            out.kind = BW_OUT_HEALTH;
            out.code = BW_HEALTH_HEALTHY;
        }
        Outcome::Response(response) if response.headers.is_empty() && response.body.is_empty() => {
            out.kind = BW_OUT_RESPONSE;
            out.response.status = response.status;
        }
        Outcome::Response(response) if response.headers.len() <= ANSWER_PAIRS => {
            write_answer(out, response);
        }
        Outcome::RequestHeaders(headers) if headers.len() <= EDIT_PAIRS => {
            write_edit(out, headers, false);
        }
        Outcome::ResponseHeaders(headers) if headers.len() <= EDIT_PAIRS => {
            write_edit(out, headers, true);
        }
        // One header crosses as a list of one (ABI 1.3's `_now` entries send it through the
        // host's sink instead, without the list).
        Outcome::RequestHeader(name, value) => write_edit(out, one_header(name, value), false),
        Outcome::ResponseHeader(name, value) => write_edit(out, one_header(name, value), true),
        outcome => write_owned(out, outcome),
    }
}

/// The list of a one-header edit.
fn one_header(name: Text, value: Text) -> Headers {
    [(name, value)].into_iter().collect()
}

/// Pairs of a hook's header edit that go in a [`Edit`] owner rather than a whole [`Owned`].
const EDIT_PAIRS: usize = 2;

/// What the `owner` of a small header edit points to: the headers and their views, a fraction of
/// an [`Owned`]'s size (a hook's edit of a header or two is the most common hook answer).
struct Edit {
    pairs: [BwKv; EDIT_PAIRS],
    headers: Headers,
}

/// [`write_output`] of a header edit of at most [`EDIT_PAIRS`] pairs: `HEADERS`, with the
/// response's list when `of_response`, else the request's.
fn write_edit(out: &mut BwOutput, headers: Headers, of_response: bool) {
    let mut edit = Box::new(Edit {
        pairs: [NO_PAIR; EDIT_PAIRS],
        headers,
    });
    let Edit { pairs, headers } = &mut *edit;
    let list = header_views(headers, pairs);
    out.kind = BW_OUT_HEADERS;
    if of_response {
        out.response.headers = list;
    } else {
        out.request.headers = list;
    }
    out.owner = Box::into_raw(edit).cast();
    out.release = Some(release_box::<Edit>);
}

/// Headers of a response that goes in an [`Answer`] owner rather than a whole [`Owned`].
const ANSWER_PAIRS: usize = 4;

/// What the `owner` of a response with at most [`ANSWER_PAIRS`] headers points to: the response
/// and its header views, without the fields of an [`Owned`] it would leave empty (an endpoint's
/// answer is the most common output; measured: ~200 instructions a call less than an `Owned`).
struct Answer {
    pairs: [BwKv; ANSWER_PAIRS],
    response: Response,
}

/// [`write_output`] of a response with at most [`ANSWER_PAIRS`] headers. The body is handed over
/// as it is: the views point into the response's own buffers, which stay put in the box.
fn write_answer(out: &mut BwOutput, response: Response) {
    let mut answer = Box::new(Answer {
        pairs: [NO_PAIR; ANSWER_PAIRS],
        response,
    });
    let Answer { pairs, response } = &mut *answer;
    out.kind = BW_OUT_RESPONSE;
    out.response.status = response.status;
    out.response.headers = header_views(&response.headers, pairs);
    out.response.body = BwStr::new(&response.body);
    out.owner = Box::into_raw(answer).cast();
    out.release = Some(release_box::<Answer>);
}

/// [`write_output`] of an outcome with something to point to.
#[inline(never)]
fn write_owned(out: &mut BwOutput, outcome: Outcome) {
    let mut owned = Owned {
        inline: [NO_PAIR; INLINE_PAIRS],
        pairs: Vec::new(),
        request: None,
        response: None,
        headers: None,
        message: String::new(),
    };
    let mut response_headers = false;
    match outcome {
        // Written by `write_output`; handled here too so that this stays total.
        Outcome::Done => {
            out.kind = BW_OUT_DONE;
            return;
        }
        Outcome::Continue => {
            out.kind = BW_OUT_CONTINUE;
            return;
        }
        Outcome::Health(health) => {
            out.kind = BW_OUT_HEALTH;
            out.code = match health {
                Health::Healthy => BW_HEALTH_HEALTHY,
                Health::Degraded(_) => BW_HEALTH_DEGRADED,
                _ => BW_HEALTH_UNHEALTHY,
            };
            owned.message = health.message().to_owned();
        }
        Outcome::Error(error) => {
            out.kind = BW_OUT_ERROR;
            let (code, status) = error_code(&error);
            out.code = code;
            out.response.status = status;
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
        Outcome::Schema(text) => {
            out.kind = BW_OUT_SCHEMA;
            owned.message = text;
        }
        Outcome::RequestHeaders(headers) => {
            out.kind = BW_OUT_HEADERS;
            owned.headers = Some(headers);
        }
        Outcome::ResponseHeaders(headers) => {
            out.kind = BW_OUT_HEADERS;
            owned.headers = Some(headers);
            response_headers = true;
        }
        Outcome::RequestHeader(name, value) => {
            out.kind = BW_OUT_HEADERS;
            owned.headers = Some(one_header(name, value));
        }
        Outcome::ResponseHeader(name, value) => {
            out.kind = BW_OUT_HEADERS;
            owned.headers = Some(one_header(name, value));
            response_headers = true;
        }
    }
    let mut owned = Box::new(owned);
    // Views point into the heap buffers of the owned values, which stay put when the box moves,
    // and into the box itself (a few pairs), which is not moved again.
    let Owned {
        inline,
        pairs,
        request,
        response,
        headers,
        message,
    } = &mut *owned;
    out.message = str_view(message);
    let total = response.as_ref().map_or(0, |r| r.headers.len())
        + request
            .as_ref()
            .map_or(0, |r| r.params.len() + r.query.len() + r.headers.len())
        + headers.as_ref().map_or(0, Headers::len);
    let slots: &mut [BwKv] = if total <= INLINE_PAIRS {
        &mut inline[..total]
    } else {
        *pairs = vec![NO_PAIR; total];
        pairs
    };
    let mut filled = 0;
    let mut push = |iter: &mut dyn Iterator<Item = (&str, &str)>| {
        let start = filled;
        for ((key, value), slot) in iter.zip(slots[start..].iter_mut()) {
            *slot = BwKv {
                key: str_view(key),
                value: str_view(value),
            };
            filled += 1;
        }
        (start, filled - start)
    };
    let mut lists = [(0, 0); 3];
    if let Some(response) = response {
        lists[0] = push(&mut response.headers.iter());
        out.response.status = response.status;
        out.response.body = BwStr::new(&response.body);
    }
    if let Some(request) = request {
        lists[0] = push(&mut request.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        lists[1] = push(&mut request.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        lists[2] = push(&mut request.headers.iter());
        out.request.method = str_view(&request.method);
        out.request.path = str_view(&request.path);
        out.request.body = BwStr::new(&request.body);
    }
    if let Some(headers) = headers {
        lists[0] = push(&mut headers.iter());
    }
    let pairs: &[BwKv] = slots;
    // Every pair is written: turn the (start, len) ranges into views.
    let list = |(start, len): (usize, usize)| {
        if len == 0 {
            BwKvList::EMPTY
        } else {
            BwKvList::new(&pairs[start..start + len])
        }
    };
    if out.kind == BW_OUT_RESPONSE {
        out.response.headers = list(lists[0]);
    }
    if out.kind == BW_OUT_HEADERS {
        if response_headers {
            out.response.headers = list(lists[0]);
        } else {
            out.request.headers = list(lists[0]);
        }
    }
    if out.kind == BW_OUT_REQUEST {
        out.request.params = list(lists[0]);
        out.request.query = list(lists[1]);
        out.request.headers = list(lists[2]);
    }
    out.owner = Box::into_raw(owned).cast();
    out.release = Some(release_box::<Owned>);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pairs an output's list points to.
    fn read(list: BwKvList) -> Vec<(String, String)> {
        // SAFETY: the output is unreleased, so its views are valid.
        unsafe { list.as_slice() }
            .iter()
            // SAFETY: as above.
            .map(|kv| unsafe { (kv.key.to_string_lossy(), kv.value.to_string_lossy()) })
            .collect()
    }

    fn release(out: BwOutput) {
        if let Some(release) = out.release {
            // SAFETY: the owner of this output, released once.
            unsafe { release(out.owner) };
        }
    }

    #[test]
    fn pairs_in_the_owner_or_in_a_list_read_the_same() {
        // A body without headers: an `Answer` with no pairs.
        let mut out = BwOutput::empty();
        write_output(
            &mut out,
            Outcome::Response(Response::new(202).with_body("only")),
        );
        assert_eq!((out.kind, out.response.status), (BW_OUT_RESPONSE, 202));
        assert!(out.response.headers.len == 0);
        // SAFETY: the output is unreleased, so its views are valid.
        assert_eq!(unsafe { out.response.body.as_bytes() }, b"only");
        release(out);
        // One to four headers go in an `Answer`, more in an `Owned`: both read the same.
        for count in [1, 2, 3, 4, 5, 9] {
            let pairs: Vec<(String, String)> = (0..count)
                .map(|i| (format!("x-h{i}"), format!("v{i}")))
                .collect();
            let mut response = Response::new(201).with_body("b");
            for (name, value) in &pairs {
                response = response.with_header(name.as_str(), value.as_str());
            }
            let mut out = BwOutput::empty();
            write_output(&mut out, Outcome::Response(response));
            assert_eq!(out.kind, BW_OUT_RESPONSE);
            assert_eq!(
                read(out.response.headers),
                pairs,
                "{count} response headers"
            );
            // SAFETY: the output is unreleased, so its views are valid.
            assert_eq!(unsafe { out.response.body.as_bytes() }, b"b");
            let owner: unsafe extern "C" fn(*mut c_void) = if count <= ANSWER_PAIRS {
                release_box::<Answer>
            } else {
                release_box::<Owned>
            };
            assert_eq!(
                out.release.map(|f| f as usize),
                Some(owner as usize),
                "{count} response headers: the owner of their size"
            );
            release(out);

            let edit: Headers = pairs.iter().cloned().collect();
            let mut out = BwOutput::empty();
            write_output(&mut out, Outcome::ResponseHeaders(edit));
            assert_eq!(out.kind, BW_OUT_HEADERS);
            assert_eq!(read(out.response.headers), pairs, "{count} edited headers");
            assert!(out.request.headers.len == 0);
            release(out);

            let edit: Headers = pairs.iter().cloned().collect();
            let mut out = BwOutput::empty();
            write_output(&mut out, Outcome::RequestHeaders(edit));
            assert_eq!(out.kind, BW_OUT_HEADERS);
            assert_eq!(read(out.request.headers), pairs, "{count} request edits");
            assert!(out.response.headers.len == 0);
            release(out);
        }
        // A request's three lists share the slots, in order, inline or not.
        for (params, query, headers) in [(1, 1, 1), (1, 2, 1), (2, 2, 2), (0, 0, 5)] {
            let list = |prefix: &str, n: usize| -> Vec<(String, String)> {
                (0..n)
                    .map(|i| (format!("{prefix}{i}"), format!("{prefix}-{i}")))
                    .collect()
            };
            let (p, q, h) = (list("p", params), list("q", query), list("h", headers));
            let mut request = Request::new("GET", "/x");
            request.params = p
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect();
            request.query = q
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect();
            request.headers = h.iter().cloned().collect();
            let mut out = BwOutput::empty();
            write_output(&mut out, Outcome::Request(request));
            assert_eq!(out.kind, BW_OUT_REQUEST);
            assert_eq!(read(out.request.params), p);
            assert_eq!(read(out.request.query), q);
            assert_eq!(read(out.request.headers), h);
            release(out);
        }
    }
}

//! Writing a finished call's outcome into a [`BwOutput`]: views into values the plugin owns, and the
//! `release` function that frees them.
//!
//! An output that points to nothing (done, continue, healthy, a response with no headers and no
//! body) takes no allocation and has no `release`. Anything else moves into one boxed [`Owned`],
//! whose heap buffers the views point into: the response's body is handed over as it is, never
//! copied.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::*;
use crate::{Headers, Health, PluginError, Request, Response};

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
}

/// What an output's `owner` points to: the values its views borrow from.
struct Owned {
    pairs: Vec<BwKv>,
    request: Option<Request>,
    response: Option<Response>,
    headers: Option<Headers>,
    message: String,
}

/// The `release` of every output [`write_output`] gives an owner: frees what its views point into.
///
/// # Safety
/// `owner` must be null or the `owner` of an output that [`write_output`] filled, passed here
/// exactly once; no view of that output may be read afterwards.
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
        outcome => write_owned(out, outcome),
    }
}

/// [`write_output`] of an outcome with something to point to.
#[inline(never)]
fn write_owned(out: &mut BwOutput, outcome: Outcome) {
    let mut owned = Owned {
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
    }
    let mut owned = Box::new(owned);
    // Views point into the heap buffers of the owned values, which stay put when the box moves.
    // Pair views are collected first and pointed at once `pairs` has its final address.
    let Owned {
        pairs,
        request,
        response,
        headers,
        message,
    } = &mut *owned;
    out.message = str_view(message);
    let mut push = |iter: &mut dyn Iterator<Item = (&str, &str)>| {
        let start = pairs.len();
        pairs.extend(iter.map(|(key, value)| BwKv {
            key: str_view(key),
            value: str_view(value),
        }));
        (start, pairs.len() - start)
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
    // `pairs` is complete: turn the (start, len) ranges into views.
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
    out.release = Some(release_owned);
}

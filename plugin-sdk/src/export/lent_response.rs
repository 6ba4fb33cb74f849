//! [`LentResponse`]: the response an `after_response` hook reads where it lies, in the memory the
//! host lends for the call (ABI 1.2's `after_response_lent`), as [`LentRequest`](crate::LentRequest)
//! is for the request.
//!
//! The host's bytes are checked once, when the response is made (header text UTF-8, names in
//! lower case); a response that fails the check is copied as `after_response` would copy it and
//! served through [`BackworksPlugin::after_response`](crate::BackworksPlugin::after_response).

use std::fmt;

use super::lent::{Pairs, PairsRepr, host_pairs, pairs_ok};
use crate::abi::BwResponse;
use crate::{Headers, Response, Text};

/// A response read in place: the host's own memory during a hook call of a library plugin, or a
/// [`Response`] it borrows ([`Response::lend`]). `Copy`, and as cheap to pass as a reference.
///
/// Everything it returns borrows the response for `'a`, the call: keep a copy, never a borrow
/// ([`LentResponse::to_response`]).
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// let response = Response::text("hi").with_header("x-a", "1");
/// let lent = response.lend();
/// assert_eq!(lent.status(), 200);
/// assert_eq!(lent.header("X-A"), Some("1"));
/// assert_eq!(lent.body(), b"hi");
/// assert_eq!(lent.to_response(), response);
/// ```
#[derive(Clone, Copy)]
pub struct LentResponse<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// The host's views ([`LentResponse::from_host`]): every header text is UTF-8 and every name
    /// in lower case.
    Host(&'a BwResponse),
    /// A response of the plugin's own (tests, built-in plugins).
    Owned(&'a Response),
}

// SAFETY: `Host` points to memory that the host keeps valid and unchanged for `'a`, readable from
// any thread (the lease of ABI 1.2's `after_response_lent`), and nothing is ever written through
// it; `Owned` is a shared reference to a `Response`, which is `Sync`.
unsafe impl Send for LentResponse<'_> {}
// SAFETY: as above.
unsafe impl Sync for LentResponse<'_> {}

impl<'a> LentResponse<'a> {
    /// The host's response, read in place.
    ///
    /// # Safety
    /// `view`, its header list and every string it points to must stay valid and unchanged,
    /// readable from any thread, for `'a`; every header text must be UTF-8 and every name lower
    /// case (the ABI's conventions for what a host lends; a debug build asserts them).
    pub(crate) unsafe fn from_host(view: &'a BwResponse) -> LentResponse<'a> {
        // SAFETY: the caller's contract.
        debug_assert!(unsafe { pairs_ok(view.headers, true) });
        LentResponse(Repr::Host(view))
    }

    /// Lends `response`, as a library's host would lend its own.
    pub(crate) fn from_response(response: &'a Response) -> LentResponse<'a> {
        LentResponse(Repr::Owned(response))
    }

    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self.0 {
            Repr::Host(view) => view.status,
            Repr::Owned(response) => response.status,
        }
    }

    /// Response headers in order, names in lower case.
    pub fn headers(&self) -> Pairs<'a> {
        match self.0 {
            // SAFETY: a checked host response, valid for `'a`.
            Repr::Host(view) => unsafe { host_pairs(view.headers) },
            Repr::Owned(response) => Pairs(PairsRepr::Owned(response.headers.as_pairs().iter())),
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Body bytes.
    pub fn body(&self) -> &'a [u8] {
        match self.0 {
            // SAFETY: a host response, valid for `'a`.
            Repr::Host(view) => unsafe { view.body.as_bytes() },
            Repr::Owned(response) => &response.body,
        }
    }

    /// A copy of the response that the plugin owns: what to keep beyond the call, or to change.
    pub fn to_response(&self) -> Response {
        match self.0 {
            Repr::Owned(response) => response.clone(),
            Repr::Host(view) => Response {
                status: view.status,
                headers: Headers::from_lowercase_pairs(
                    self.headers()
                        .map(|(k, v)| (Text::from(k), Text::from(v)))
                        .collect(),
                ),
                body: self.body().to_vec(),
            },
        }
    }
}

impl fmt::Debug for LentResponse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentResponse")
            .field("status", &self.status())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("body", &self.body().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{BwKv, BwKvList, BwStr};

    #[test]
    fn a_host_response_is_read_in_place_and_copied_whole() {
        let pairs = [BwKv {
            key: BwStr::new(b"x-id"),
            value: BwStr::new(b"7"),
        }];
        let view = BwResponse {
            status: 201,
            headers: BwKvList::new(&pairs),
            body: BwStr::new(b"body"),
        };
        // SAFETY: `view` and what it points to outlive `lent`.
        let lent = unsafe { LentResponse::from_host(&view) };
        assert_eq!(lent.status(), 201);
        assert_eq!(lent.header("X-Id"), Some("7"));
        assert_eq!(lent.body(), b"body");
        let copy = lent.to_response();
        assert_eq!(
            copy,
            Response::new(201)
                .with_header("x-id", "7")
                .with_body("body")
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_debug_build_asserts_the_host_keeps_the_abi_conventions() {
        for (key, value) in [(&b"X-Upper"[..], &b"v"[..]), (b"x-ok", b"\xff")] {
            let pairs = [BwKv {
                key: BwStr::new(key),
                value: BwStr::new(value),
            }];
            let view = BwResponse {
                status: 200,
                headers: BwKvList::new(&pairs),
                body: BwStr::EMPTY,
            };
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: `view` and what it points to outlive the call; the broken convention
                // is what the debug assertion catches before any text is read.
                unsafe { LentResponse::from_host(&view) };
            }));
            assert!(made.is_err());
        }
    }
}

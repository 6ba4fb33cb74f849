//! [`LentRequest`]: a request read where it lies, in the memory the host lends for the call.
//!
//! A library whose plugin sets [`BackworksPlugin::HANDLE_LENT`](crate::BackworksPlugin::HANDLE_LENT)
//! (or [`HANDLE_SYNC`](crate::BackworksPlugin::HANDLE_SYNC), whose calls are over when they
//! return) exports the vtable's `handle_lent` (ABI 1.2): the host keeps the request's views valid
//! until the call is over, pending or not, and the plugin reads them in place instead of copying
//! them into a [`Request`]. The lifetime of a [`LentRequest`] is that lease: what it hands out borrows it, so
//! the compiler refuses any use that could outlive the call (a spawned task, a `static`, the
//! plugin's own state); what is kept must be copied first ([`LentRequest::to_request`]).
//!
//! The host's texts are UTF-8 and its header names lower case: the ABI's conventions for every
//! request a host sends (`docs/abi.md`, section 1), which the accessors rely on to hand out `&str`
//! without a check per call or per request (a debug build asserts them).

use std::fmt;

use crate::abi::{BwKv, BwKvList, BwRequest, BwStr};
use crate::{Headers, PluginError, PluginResult, Request, Text};

/// A request read in place: the host's own memory during a call of a library plugin, or a
/// [`Request`] it borrows ([`Request::lend`]). `Copy`, and as cheap to pass as a reference.
///
/// Everything it returns borrows the request for `'a`, the call: keep a copy, never a borrow.
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Hello;
///
/// #[async_trait]
/// impl BackworksPlugin for Hello {
///     const HANDLE_LENT: bool = true;
///
///     async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
///         let name = request.param("name").unwrap_or("world"); // a `&str` of the host's memory
///         tokio::task::yield_now().await; // still valid after an `.await`: the call is not over
///         Ok(Response::text(format!("Hello, {name}!")))
///     }
/// }
///
/// let mut request = Request::new("GET", "/hello/ana");
/// request.params.push(("name".into(), "ana".into()));
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let response = rt.block_on(Hello.handle_lent(request.lend())).unwrap();
/// assert_eq!(response.body, b"Hello, ana!");
/// ```
///
/// Keeping a borrow beyond the call does not compile, whether in a `static`...
///
/// ```compile_fail
/// use backworks_plugin_sdk::prelude::*;
///
/// static KEPT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
///
/// #[derive(Default)]
/// struct Keeper;
///
/// #[async_trait]
/// impl BackworksPlugin for Keeper {
///     const HANDLE_LENT: bool = true;
///
///     async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
///         KEPT.lock().unwrap().push(request.path()); // the lent path outlives the call
///         Ok(Response::new(200))
///     }
/// }
/// ```
///
/// ...or in a task or thread of its own:
///
/// ```compile_fail
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Spawner;
///
/// #[async_trait]
/// impl BackworksPlugin for Spawner {
///     const HANDLE_LENT: bool = true;
///
///     async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
///         std::thread::spawn(move || println!("{}", request.path())); // outlives the call
///         Ok(Response::new(200))
///     }
/// }
/// ```
///
/// A copy may go anywhere:
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Spawner;
///
/// #[async_trait]
/// impl BackworksPlugin for Spawner {
///     const HANDLE_LENT: bool = true;
///
///     async fn handle_lent(&self, request: LentRequest<'_>) -> PluginResult<Response> {
///         let owned: Request = request.to_request();
///         std::thread::spawn(move || println!("{}", owned.path));
///         Ok(Response::new(200))
///     }
/// }
/// ```
#[derive(Clone, Copy)]
pub struct LentRequest<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// The host's views ([`LentRequest::from_host`]): every text is UTF-8 and every header name is
    /// in lower case.
    Host(&'a BwRequest),
    /// A request of the plugin's own (tests, built-in plugins).
    Owned(&'a Request),
}

// SAFETY: `Host` points to memory that the host keeps valid and unchanged for `'a`, readable from
// any thread (the lease of ABI 1.2's `handle_lent`), and nothing is ever written through it; `Owned`
// is a shared reference to a `Request`, which is `Sync`.
unsafe impl Send for LentRequest<'_> {}
// SAFETY: as above.
unsafe impl Sync for LentRequest<'_> {}

/// The pairs of a [`LentRequest`] list, in order: `(name, value)`.
#[derive(Debug)]
pub struct Pairs<'a>(pub(super) PairsRepr<'a>);

#[derive(Debug)]
pub(super) enum PairsRepr<'a> {
    /// Checked views of the host (see [`Repr::Host`]).
    Host(std::slice::Iter<'a, BwKv>),
    Owned(std::slice::Iter<'a, (Text, Text)>),
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        match &mut self.0 {
            // SAFETY: the pairs of a checked host request: valid for `'a`, UTF-8.
            PairsRepr::Host(iter) => iter
                .next()
                .map(|kv| unsafe { (host_str(kv.key), host_str(kv.value)) }),
            PairsRepr::Owned(iter) => iter.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            PairsRepr::Host(iter) => iter.size_hint(),
            PairsRepr::Owned(iter) => iter.size_hint(),
        }
    }
}

/// The text of a checked host view.
///
/// # Safety
/// `view` must be valid for `'a` (as [`BwStr::as_bytes`]) and its bytes UTF-8.
pub(super) unsafe fn host_str<'a>(view: BwStr) -> &'a str {
    // SAFETY: the caller's contract.
    unsafe { std::str::from_utf8_unchecked(view.as_bytes()) }
}

/// The pairs of a host list.
///
/// # Safety
/// As [`BwKvList::as_slice`] for `'a`.
pub(super) unsafe fn host_pairs<'a>(list: BwKvList) -> Pairs<'a> {
    // SAFETY: the caller's contract.
    Pairs(PairsRepr::Host(unsafe { list.as_slice() }.iter()))
}

/// Whether every text of `list` is UTF-8 and, with `lower`, no name has an upper-case letter (for
/// a debug build's check of the host).
///
/// # Safety
/// As [`BwKvList::as_slice`], and every pair's strings as [`BwStr::as_bytes`], during the call.
pub(super) unsafe fn pairs_ok(list: BwKvList, lower: bool) -> bool {
    // SAFETY: the caller's contract.
    unsafe { list.as_slice() }.iter().all(|kv| {
        // SAFETY: the caller's contract covers the pairs' strings.
        let (key, value) = unsafe { (kv.key.as_bytes(), kv.value.as_bytes()) };
        utf8(key) && utf8(value) && !(lower && key.iter().any(u8::is_ascii_uppercase))
    })
}

pub(super) fn utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

impl<'a> LentRequest<'a> {
    /// The host's request, read in place.
    ///
    /// # Safety
    /// `view`, every list it points to and every string those point to must stay valid and
    /// unchanged, readable from any thread, for `'a`; every text must be UTF-8 and every header
    /// name lower case (the ABI's conventions for a host's request).
    pub(crate) unsafe fn from_host(view: &'a BwRequest) -> LentRequest<'a> {
        // SAFETY: the caller's contract.
        debug_assert!(unsafe {
            utf8(view.method.as_bytes())
                && utf8(view.path.as_bytes())
                && pairs_ok(view.params, false)
                && pairs_ok(view.query, false)
                && pairs_ok(view.headers, true)
        });
        LentRequest(Repr::Host(view))
    }

    /// Lends `request`, as a library's host would lend its own.
    pub(crate) fn from_request(request: &'a Request) -> LentRequest<'a> {
        LentRequest(Repr::Owned(request))
    }

    /// Method, upper case (`GET`).
    pub fn method(&self) -> &'a str {
        match self.0 {
            // SAFETY: a checked host request, valid for `'a`.
            Repr::Host(view) => unsafe { host_str(view.method) },
            Repr::Owned(request) => &request.method,
        }
    }

    /// Path without the query string.
    pub fn path(&self) -> &'a str {
        match self.0 {
            // SAFETY: a checked host request, valid for `'a`.
            Repr::Host(view) => unsafe { host_str(view.path) },
            Repr::Owned(request) => &request.path,
        }
    }

    /// Values of the endpoint's `{param}` segments, by name.
    pub fn params(&self) -> Pairs<'a> {
        match self.0 {
            // SAFETY: a checked host request, valid for `'a`.
            Repr::Host(view) => unsafe { host_pairs(view.params) },
            Repr::Owned(request) => Pairs(PairsRepr::Owned(request.params.iter())),
        }
    }

    /// Decoded query parameters in order.
    pub fn query(&self) -> Pairs<'a> {
        match self.0 {
            // SAFETY: a checked host request, valid for `'a`.
            Repr::Host(view) => unsafe { host_pairs(view.query) },
            Repr::Owned(request) => Pairs(PairsRepr::Owned(request.query.iter())),
        }
    }

    /// Request headers in order, names in lower case.
    pub fn headers(&self) -> Pairs<'a> {
        match self.0 {
            // SAFETY: a checked host request, valid for `'a`.
            Repr::Host(view) => unsafe { host_pairs(view.headers) },
            Repr::Owned(request) => Pairs(PairsRepr::Owned(request.headers.as_pairs().iter())),
        }
    }

    /// Body bytes.
    pub fn body(&self) -> &'a [u8] {
        match self.0 {
            // SAFETY: a host request, valid for `'a`.
            Repr::Host(view) => unsafe { view.body.as_bytes() },
            Repr::Owned(request) => &request.body,
        }
    }

    /// The value of the `{name}` path segment.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        // The host sends names in lower case, as most are asked for: the plain comparison first.
        self.headers()
            .find(|(k, _)| k.len() == name.len() && (*k == name || k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON; a parse error is a [`PluginError::BadRequest`].
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> PluginResult<T> {
        serde_json::from_slice(self.body())
            .map_err(|e| PluginError::BadRequest(format!("invalid JSON body: {e}")))
    }

    /// A copy of the request that the plugin owns: what to keep beyond the call.
    pub fn to_request(&self) -> Request {
        match self.0 {
            Repr::Owned(request) => request.clone(),
            Repr::Host(_) => {
                let pairs = |pairs: Pairs<'a>| -> Vec<(Text, Text)> {
                    pairs.map(|(k, v)| (k.into(), v.into())).collect()
                };
                Request {
                    method: self.method().into(),
                    path: self.path().into(),
                    params: pairs(self.params()),
                    query: pairs(self.query()),
                    headers: Headers::from_lowercase_pairs(pairs(self.headers())),
                    body: self.body().to_vec(),
                }
            }
        }
    }
}

impl fmt::Debug for LentRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentRequest")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("params", &self.params().collect::<Vec<_>>())
            .field("query", &self.query().collect::<Vec<_>>())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("body", &self.body().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::BwKv;

    fn kv<'a>(k: &'a [u8], v: &'a [u8]) -> BwKv {
        BwKv {
            key: BwStr::new(k),
            value: BwStr::new(v),
        }
    }

    #[test]
    fn a_host_request_reads_in_place_like_its_copy() {
        let params = [kv(b"id", b"42")];
        let query = [kv(b"q", b"x y"), kv(b"q", b"2")];
        let headers = [kv(b"host", b"localhost"), kv(b"x-name", "żółw".as_bytes())];
        let view = BwRequest {
            method: BwStr::new(b"POST"),
            path: BwStr::new(b"/noop/42"),
            params: BwKvList::new(&params),
            query: BwKvList::new(&query),
            headers: BwKvList::new(&headers),
            body: BwStr::new(br#"{"a":1}"#),
        };
        // SAFETY: every view borrows a local that outlives `lent`.
        let lent = unsafe { LentRequest::from_host(&view) };
        assert_eq!((lent.method(), lent.path()), ("POST", "/noop/42"));
        assert_eq!(lent.param("id"), Some("42"));
        assert_eq!(lent.query_param("q"), Some("x y"));
        assert_eq!(lent.header("X-Name"), Some("żółw"));
        assert_eq!(lent.header("absent"), None);
        assert_eq!(lent.json::<serde_json::Value>().unwrap()["a"], 1);
        // The copy and a lent copy read the same.
        let owned = lent.to_request();
        let relent = owned.lend();
        for request in [lent, relent] {
            assert_eq!(request.params().collect::<Vec<_>>(), [("id", "42")]);
            assert_eq!(request.query().count(), 2);
            assert_eq!(
                request.headers().collect::<Vec<_>>(),
                [("host", "localhost"), ("x-name", "żółw")]
            );
            assert_eq!(request.body(), br#"{"a":1}"#);
        }
        assert_eq!(owned.header("x-name"), Some("żółw"));
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_debug_build_asserts_the_host_keeps_the_abi_conventions() {
        let upper = [kv(b"Host", b"x")];
        let bad_value = [kv(b"host", b"a\xffb")];
        for (path, headers) in [
            (&b"/ok"[..], &upper[..]),
            (b"/ok", &bad_value[..]),
            (b"/\xc3", &[][..]),
        ] {
            let view = BwRequest {
                method: BwStr::new(b"GET"),
                path: BwStr::new(path),
                headers: BwKvList::new(headers),
                ..BwRequest::EMPTY
            };
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: every view borrows a local that outlives the call; the broken
                // convention is what the debug assertion catches before any text is read.
                unsafe { LentRequest::from_host(&view) };
            }));
            assert!(made.is_err(), "{:?}", String::from_utf8_lossy(path));
        }
    }
}

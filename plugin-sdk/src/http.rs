//! The plain request and response types a plugin sees.
//!
//! They are owned Rust values with no HTTP library behind them: the host fills them from its HTTP
//! server, and bodies are bytes that are never re-encoded on the way. Text is [`Text`], which keeps
//! short strings inline, so building a request (as the SDK does for every call of a plugin library)
//! takes few allocations.

use crate::{LentRequest, LentResponse, PluginError, PluginResult, Text};

/// Headers in order, names in lower case. Lookups ignore case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Text, Text)>);

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// No headers, with room for `capacity` of them before the list grows.
    pub fn with_capacity(capacity: usize) -> Headers {
        Headers(Vec::with_capacity(capacity))
    }

    /// The first value of `name`.
    ///
    /// ```
    /// # use backworks_plugin_sdk::Headers;
    /// let mut h = Headers::new();
    /// h.insert("X-Request-Id", "42");
    /// assert_eq!(h.get("x-request-id"), Some("42"));
    /// ```
    pub fn get(&self, name: &str) -> Option<&str> {
        // Names are stored in lower case, as most are asked for: the plain comparison first.
        self.0
            .iter()
            .find(|(k, _)| k.len() == name.len() && (**k == *name || k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing every earlier value of `name`.
    pub fn insert(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let name = name.into().into_ascii_lowercase();
        self.0.retain(|(k, _)| *k != name);
        self.0.push((name, value.into()));
    }

    /// Adds a value of `name`, keeping the earlier ones.
    pub fn append(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        self.0
            .push((name.into().into_ascii_lowercase(), value.into()));
    }

    /// Removes every value of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.0.len() != before
    }

    /// Every header in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets every header of `edits`: each name in it replaces every header of that name here,
    /// then its values are added at the end in order. How a hook's [`RequestEdit::SetHeaders`] or
    /// [`ResponseEdit::SetHeaders`] is applied.
    ///
    /// ```
    /// # use backworks_plugin_sdk::Headers;
    /// let mut h: Headers = [("a", "1"), ("b", "2")].into_iter().collect();
    /// h.set_all([("A", "3"), ("c", "4")].into_iter().collect());
    /// assert_eq!(h.iter().collect::<Vec<_>>(), [("b", "2"), ("a", "3"), ("c", "4")]);
    /// ```
    pub fn set_all(&mut self, edits: Headers) {
        if edits.0.len() == 1 {
            let name = &edits.0[0].0;
            self.0.retain(|(k, _)| k != name);
        } else {
            self.0
                .retain(|(name, _)| !edits.0.iter().any(|(edit, _)| edit == name));
        }
        self.0.extend(edits.0);
    }
}

impl Headers {
    /// The pairs in order.
    pub(crate) fn as_pairs(&self) -> &[(Text, Text)] {
        &self.0
    }

    /// Headers from pairs whose names the caller made lower case.
    pub(crate) fn from_lowercase_pairs(pairs: Vec<(Text, Text)>) -> Headers {
        debug_assert!(
            pairs
                .iter()
                .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase()))
        );
        Headers(pairs)
    }
}

impl<K: Into<Text>, V: Into<Text>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.into().into_ascii_lowercase(), v.into()))
                .collect(),
        )
    }
}

/// An HTTP request routed to a plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Method, upper case (`GET`).
    pub method: Text,
    /// Path without the query string.
    pub path: Text,
    /// Values of the endpoint's `{param}` segments, by name.
    pub params: Vec<(Text, Text)>,
    /// Decoded query parameters in order.
    pub query: Vec<(Text, Text)>,
    /// Request headers.
    pub headers: Headers,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with this method and path and nothing else.
    pub fn new(method: impl Into<Text>, path: impl Into<Text>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    /// The value of the `{name}` path segment.
    ///
    /// ```
    /// # use backworks_plugin_sdk::Request;
    /// let mut req = Request::new("GET", "/hello/ana");
    /// req.params.push(("name".into(), "ana".into()));
    /// assert_eq!(req.param("name"), Some("ana"));
    /// ```
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.params, name)
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        lookup(&self.query, name)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body parsed as JSON; a parse error is a [`PluginError::BadRequest`].
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> PluginResult<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| PluginError::BadRequest(format!("invalid JSON body: {e}")))
    }

    /// This request as a [`LentRequest`], the form
    /// [`BackworksPlugin::handle_lent`](crate::BackworksPlugin::handle_lent) and
    /// [`BackworksPlugin::handle_sync`](crate::BackworksPlugin::handle_sync) read: for tests, and
    /// for a plugin built into the host, whose `handle` forwards to one of them.
    pub fn lend(&self) -> LentRequest<'_> {
        LentRequest::from_request(self)
    }
}

fn lookup<'a>(pairs: &'a [(Text, Text)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An HTTP response from a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Default for Response {
    fn default() -> Self {
        Response::new(200)
    }
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A 200 response with a JSON body and `content-type: application/json`.
    ///
    /// ```
    /// # use backworks_plugin_sdk::Response;
    /// let res = Response::json(&serde_json::json!({"message": "hi"}));
    /// assert_eq!(res.status, 200);
    /// assert_eq!(res.body, br#"{"message":"hi"}"#);
    /// assert_eq!(res.headers.get("content-type"), Some("application/json"));
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => Response::new(500).with_body(format!("cannot encode JSON: {e}")),
        }
    }

    /// A 200 response with a text body and `content-type: text/plain; charset=utf-8`.
    pub fn text(body: impl Into<String>) -> Response {
        Response::new(200)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// This response with another status.
    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// This response with header `name` set to `value`.
    pub fn with_header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Response {
        self.headers.insert(name, value);
        self
    }

    /// This response as a [`LentResponse`], the form
    /// [`BackworksPlugin::after_response_lent`](crate::BackworksPlugin::after_response_lent)
    /// reads: for tests, and for a plugin built into the host.
    pub fn lend(&self) -> LentResponse<'_> {
        LentResponse::from_response(self)
    }

    /// This response with this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
}

/// What a `before_request` hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// Go on with the request as it was.
    Continue,
    /// Go on with this request instead (e.g. with a header added).
    ContinueWith(Request),
    /// Answer now with this response; later hooks and the endpoint do not run.
    Respond(Response),
}

/// What a `before_request` hook that reads the request in place decided
/// ([`BackworksPlugin::before_request_lent`](crate::BackworksPlugin::before_request_lent)).
///
/// [`SetHeader`](RequestEdit::SetHeader) and [`SetHeaders`](RequestEdit::SetHeaders) are the
/// cheap ways to change a request: only the headers cross back to the host, which sets them on its
/// own request ([`Headers::set_all`]). `SetHeader` sets one without a list to allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEdit {
    /// Go on with the request as it was.
    Continue,
    /// Go on with the request with this header (name, value) set, replacing every value of that
    /// name (name case does not matter): [`SetHeaders`](RequestEdit::SetHeaders) of one header,
    /// without a list to allocate in the plugin or in the host.
    ///
    /// ```
    /// # use backworks_plugin_sdk::{Request, RequestEdit};
    /// let mut request = Request::new("GET", "/orders");
    /// request.headers.insert("x-tag", "old");
    /// let edit = RequestEdit::SetHeader("X-Tag".into(), "new".into());
    /// let changed = edit.apply(request);
    /// assert_eq!(changed.headers.iter().collect::<Vec<_>>(), [("x-tag", "new")]);
    /// ```
    SetHeader(Text, Text),
    /// Go on with the request with these headers set (see [`Headers::set_all`]).
    SetHeaders(Headers),
    /// Go on with this request instead.
    Replace(Request),
    /// Answer now with this response; later hooks and the endpoint do not run.
    Respond(Response),
}

impl From<HookAction> for RequestEdit {
    fn from(action: HookAction) -> RequestEdit {
        match action {
            HookAction::Continue => RequestEdit::Continue,
            HookAction::ContinueWith(request) => RequestEdit::Replace(request),
            HookAction::Respond(response) => RequestEdit::Respond(response),
        }
    }
}

impl RequestEdit {
    /// The [`HookAction`] of this edit on `request` (a header edit becomes a changed copy).
    pub fn into_action(self, request: &LentRequest<'_>) -> HookAction {
        match self {
            RequestEdit::Continue => HookAction::Continue,
            RequestEdit::SetHeader(..) | RequestEdit::SetHeaders(_) => {
                HookAction::ContinueWith(self.apply(request.to_request()))
            }
            RequestEdit::Replace(request) => HookAction::ContinueWith(request),
            RequestEdit::Respond(response) => HookAction::Respond(response),
        }
    }

    /// The request this edit makes of `request`, when it goes on: unchanged for
    /// [`Continue`](RequestEdit::Continue) and [`Respond`](RequestEdit::Respond).
    pub fn apply(self, mut request: Request) -> Request {
        match self {
            RequestEdit::Continue | RequestEdit::Respond(_) => request,
            RequestEdit::SetHeader(name, value) => {
                request.headers.insert(name, value);
                request
            }
            RequestEdit::SetHeaders(headers) => {
                request.headers.set_all(headers);
                request
            }
            RequestEdit::Replace(replacement) => replacement,
        }
    }
}

/// What an `after_response` hook that reads the response in place decided
/// ([`BackworksPlugin::after_response_lent`](crate::BackworksPlugin::after_response_lent)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEdit {
    /// The response goes on as it was.
    Keep,
    /// The response goes on with this header (name, value) set, replacing every value of that
    /// name (name case does not matter): [`SetHeaders`](ResponseEdit::SetHeaders) of one header,
    /// without a list to allocate in the plugin or in the host.
    SetHeader(Text, Text),
    /// The response goes on with these headers set (see [`Headers::set_all`]); status and body
    /// stay.
    SetHeaders(Headers),
    /// This response goes on instead.
    Replace(Response),
}

impl ResponseEdit {
    /// The response this edit makes of `response`.
    pub fn apply(self, mut response: Response) -> Response {
        match self {
            ResponseEdit::Keep => response,
            ResponseEdit::SetHeader(name, value) => {
                response.headers.insert(name, value);
                response
            }
            ResponseEdit::SetHeaders(headers) => {
                response.headers.set_all(headers);
                response
            }
            ResponseEdit::Replace(replacement) => replacement,
        }
    }

    /// The response this edit makes of a lent `response` (a copy unless replaced).
    pub fn apply_lent(self, response: &LentResponse<'_>) -> Response {
        match self {
            ResponseEdit::Replace(replacement) => replacement,
            edit => edit.apply(response.to_response()),
        }
    }
}

/// A plugin's own view of its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Healthy,
    /// Working with reduced service, and why.
    Degraded(String),
    /// Not working, and why.
    Unhealthy(String),
}

impl Health {
    /// `"healthy"`, `"degraded"` or `"unhealthy"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded(_) => "degraded",
            Health::Unhealthy(_) => "unhealthy",
        }
    }

    /// The reason given, empty when healthy.
    pub fn message(&self) -> &str {
        match self {
            Health::Healthy => "",
            Health::Degraded(m) | Health::Unhealthy(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_insert_replaces() {
        let mut h = Headers::new();
        h.append("Accept", "a");
        h.append("accept", "b");
        assert_eq!(h.len(), 2);
        h.insert("ACCEPT", "c");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("accept", "c")]);
        // Lookups match in any case, and only whole names.
        for name in ["accept", "Accept", "ACCEPT", "aCCEPT"] {
            assert_eq!(h.get(name), Some("c"), "{name}");
        }
        for name in ["accep", "accept ", "accepts", "bccept"] {
            assert_eq!(h.get(name), None, "{name}");
        }
        let mut roomy = Headers::with_capacity(3);
        roomy.append("X-A", "1");
        assert_eq!(roomy.get("x-a"), Some("1"));
        assert!(h.remove("Accept"));
        assert!(h.is_empty());
    }

    #[test]
    fn a_one_header_edit_is_a_header_edit_of_one() {
        let mut request = Request::new("GET", "/x");
        request.headers.append("X-Tag", "a");
        request.headers.append("accept", "*/*");
        request.headers.append("x-tag", "b");
        let one = RequestEdit::SetHeader("X-TAG".into(), "c".into()).apply(request.clone());
        let listed = RequestEdit::SetHeaders([("x-tag", "c")].into_iter().collect()).apply(request);
        assert_eq!(one, listed);
        assert_eq!(
            one.headers.iter().collect::<Vec<_>>(),
            [("accept", "*/*"), ("x-tag", "c")]
        );

        let response = Response::text("hi").with_header("x-served-by", "a");
        let one = ResponseEdit::SetHeader("X-Served-By".into(), "b".into()).apply(response.clone());
        let listed =
            ResponseEdit::SetHeaders([("x-served-by", "b")].into_iter().collect()).apply(response);
        assert_eq!(one, listed);
        assert_eq!(one.headers.get("x-served-by"), Some("b"));
        assert_eq!(one.body, b"hi");
    }

    #[test]
    fn json_body_errors_are_bad_requests() {
        let mut req = Request::new("POST", "/x");
        req.body = b"{not json".to_vec();
        let err = req.json::<serde_json::Value>().unwrap_err();
        assert_eq!(err.status(), 400);
    }
}

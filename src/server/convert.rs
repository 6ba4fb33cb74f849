//! Converting between axum's HTTP types and the SDK's plain request and response.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use backworks_plugin_host::CallError;
use backworks_plugin_host::error_response;
use backworks_plugin_sdk::{Headers, Request, Response, Text};
use bytes::Bytes;

/// Builds the SDK request a plugin sees from the request parts and the route's decoded path
/// parameters.
/// Header names arrive lower case; header values that are not UTF-8 are passed on lossily. Short
/// text is stored inline in [`Text`], without allocating.
pub fn request_from_parts(
    parts: &axum::http::request::Parts,
    params: Vec<(Text, Text)>,
    body: Bytes,
) -> Request {
    let query = parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
        })
        .unwrap_or_default();
    // Room for one more: a hook that adds a header (`x-request-id`) then does not grow the list.
    let mut headers = Headers::with_capacity(parts.headers.len() + 1);
    for (name, value) in &parts.headers {
        headers.append(name.as_str(), header_text(value));
    }
    Request {
        method: parts.method.as_str().into(),
        path: parts.uri.path().into(),
        params,
        query,
        headers,
        // Free when the body buffer is not shared, which is the usual case.
        body: Vec::from(body),
    }
}

/// A request header's value as text: as it is when it is UTF-8, else with each invalid byte
/// replaced. Almost every value is visible ASCII, which `HeaderValue::to_str` checks in an inlined
/// loop: cheaper than `from_utf8` for the short values of most headers.
fn header_text(value: &HeaderValue) -> Text {
    if let Ok(text) = value.to_str() {
        return text.into();
    }
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into(),
    }
}

/// Turns a plugin's response into an HTTP response. A status or header that HTTP does not allow is
/// the plugin's invalid response (502, `invalid_response`, naming it), never a panic or a malformed
/// answer.
pub fn into_http(plugin: &str, response: Response) -> axum::response::Response {
    match try_into_http(response) {
        Ok(http) => http,
        Err(error) => match try_into_http(error_response(plugin, &error, None)) {
            Ok(http) => http,
            Err(_) => {
                let mut bare = axum::response::Response::new(Body::empty());
                *bare.status_mut() = StatusCode::BAD_GATEWAY;
                bare
            }
        },
    }
}

/// The HTTP response, or the plugin's invalid response when its status or a header is not valid
/// HTTP.
fn try_into_http(response: Response) -> Result<axum::response::Response, CallError> {
    let invalid = CallError::InvalidResponse;
    let status = StatusCode::from_u16(response.status).map_err(|_| {
        invalid(format!(
            "plugin returned an invalid HTTP status {}",
            response.status
        ))
    })?;
    let mut http = axum::response::Response::new(Body::from(response.body));
    *http.status_mut() = status;
    let headers = http.headers_mut();
    for (name, value) in response.headers.iter() {
        let name = header_name(name)
            .map_err(|_| invalid(format!("plugin returned an invalid header name {name:?}")))?;
        let value = header_value(value).map_err(|_| {
            invalid(format!(
                "plugin returned an invalid value for header `{name}`"
            ))
        })?;
        headers.append(name, value);
    }
    Ok(http)
}

/// `name` as a header name: a constant for `content-type` (on almost every response) and
/// `x-request-id` (which hooks set on many, and HTTP does not define), else checked (and, for a
/// name HTTP does not define, copied) by `HeaderName::from_bytes`, which costs ~250 instructions
/// even for a name it knows.
fn header_name(name: &str) -> Result<HeaderName, axum::http::header::InvalidHeaderName> {
    // A constant, so checked once at compile time (`from_static` checks at run time otherwise).
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    match name {
        "content-type" => Ok(axum::http::header::CONTENT_TYPE),
        "x-request-id" => Ok(X_REQUEST_ID),
        _ => HeaderName::from_bytes(name.as_bytes()),
    }
}

/// Header values plugins send on most responses: handed to hyper as static text, without the
/// copy `HeaderValue::from_str` makes.
const COMMON_VALUES: [&str; 4] = [
    "application/json",
    "text/plain; charset=utf-8",
    "application/octet-stream",
    "text/html; charset=utf-8",
];

/// `value` as a header value: a static one when it is one of [`COMMON_VALUES`], else a copy,
/// checked as HTTP requires.
fn header_value(value: &str) -> Result<HeaderValue, axum::http::header::InvalidHeaderValue> {
    match COMMON_VALUES.iter().find(|common| **common == value) {
        Some(common) => Ok(HeaderValue::from_static(common)),
        None => HeaderValue::from_str(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON error body of an HTTP response.
    fn error_of(http: axum::response::Response) -> serde_json::Value {
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            http.into_body(),
            usize::MAX,
        ))
        .expect("a ready body")
        .expect("body bytes");
        serde_json::from_slice::<serde_json::Value>(&body).expect("a JSON body")["error"].clone()
    }

    #[test]
    fn invalid_plugin_output_becomes_a_502_naming_the_plugin() {
        let bad = Response::new(200).with_header("x-bad", "line\nbreak");
        let http = into_http("evil", bad);
        assert_eq!(http.status(), 502);
        let error = error_of(http);
        assert_eq!(error["plugin"], "evil");
        assert_eq!(error["kind"], "invalid_response");
        // The details (which header) go to the log; the public body says only what happened.
        assert_eq!(
            error["message"], "the plugin gave an invalid response",
            "{error}"
        );

        let bad_name = Response::new(200).with_header("bad name", "v");
        let error = error_of(into_http("evil", bad_name));
        assert_eq!(error["kind"], "invalid_response");
        assert!(
            !error["message"].as_str().unwrap().contains("bad name"),
            "{error}"
        );

        let bad_status = into_http("evil", Response::new(1000));
        assert_eq!(bad_status.status(), 502);
        assert_eq!(error_of(bad_status)["kind"], "invalid_response");

        let good = Response::text("hi").with_status(201);
        let http = into_http("good", good);
        assert_eq!(http.status(), 201);
        assert_eq!(http.headers()["content-type"], "text/plain; charset=utf-8");
    }

    #[test]
    fn common_header_values_are_the_same_as_copied_ones() {
        for value in COMMON_VALUES {
            let fast = header_value(value).expect("a valid value");
            assert_eq!(fast, HeaderValue::from_str(value).unwrap());
            assert_eq!(fast.to_str().unwrap(), value);
        }
        // Close to a common one but not it: copied, and still checked.
        assert_eq!(
            header_value("application/json; charset=utf-8").unwrap(),
            "application/json; charset=utf-8"
        );
        assert!(header_value("application/json\r\nx-injected: 1").is_err());
        let http = into_http(
            "p",
            Response::new(200)
                .with_header("content-type", "application/json")
                .with_header("x-other", "application/json"),
        );
        assert_eq!(http.headers()["content-type"], "application/json");
        assert_eq!(http.headers()["x-other"], "application/json");
    }

    #[test]
    fn the_static_request_id_name_is_the_same_as_a_checked_one() {
        let fast = header_name("x-request-id").expect("a valid name");
        assert_eq!(fast, HeaderName::from_bytes(b"x-request-id").unwrap());
        assert_eq!(fast.as_str(), "x-request-id");
        // Other names are still checked.
        assert!(header_name("x-request-id ").is_err());
        assert!(header_name("x-request-id\r\nx-injected").is_err());
        let http = into_http(
            "p",
            Response::new(200)
                .with_header("x-request-id", "abc")
                .with_header("x-request-idx", "def"),
        );
        assert_eq!(http.headers()["x-request-id"], "abc");
        assert_eq!(http.headers()["x-request-idx"], "def");
    }

    #[test]
    fn header_values_that_are_not_utf8_are_passed_on_lossily() {
        let (parts, _) = axum::http::Request::builder()
            .uri("/")
            .header("x-latin", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .header("x-utf8", "żółw")
            .header("x-ascii", "plain")
            .header("x-tab", HeaderValue::from_bytes(b"a\tb").unwrap())
            .body(())
            .unwrap()
            .into_parts();
        let req = request_from_parts(&parts, Vec::new(), Bytes::new());
        assert_eq!(req.header("x-latin"), Some("caf\u{fffd}"));
        assert_eq!(req.header("x-utf8"), Some("żółw"));
        assert_eq!(req.header("x-ascii"), Some("plain"));
        assert_eq!(req.header("x-tab"), Some("a\tb"));
    }

    #[test]
    fn query_and_headers_are_decoded() {
        let (parts, _) = axum::http::Request::builder()
            .uri("/a/b?x=1&y=hello%20world&x=2")
            .header("X-Thing", "v")
            .body(())
            .unwrap()
            .into_parts();
        let req = request_from_parts(
            &parts,
            vec![("id".into(), "b".into())],
            Bytes::from_static(b"hi"),
        );
        assert_eq!(req.path, "/a/b");
        assert_eq!(req.query_param("y"), Some("hello world"));
        assert_eq!(req.query.len(), 3);
        assert_eq!(req.header("x-thing"), Some("v"));
        assert_eq!(req.param("id"), Some("b"));
        assert_eq!(req.body, b"hi");
    }
}

//! The error answers the server makes itself, before or without any plugin: in the same JSON shape
//! as a plugin's errors (`backworks_plugin_host::public_error`), with `"plugin": null` since no
//! plugin ran, and a request id (the client's `x-request-id`, or a new one). Messages are fixed
//! text: nothing the client sent is echoed back.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::RawPathParamsRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backworks_plugin_host::request_id;

/// `{"error": {"kind": kind, "message": message, "plugin": null, "request_id": ...}}` with
/// `status`; the request id is the request's `x-request-id` (in `headers`) or a new one.
pub fn server_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    headers: Option<&HeaderMap>,
) -> Response {
    let given = headers
        .and_then(|h| h.get("x-request-id"))
        .and_then(|v| v.to_str().ok());
    let body = serde_json::json!({
        "error": {
            "kind": kind,
            "message": message,
            "plugin": null,
            "request_id": request_id(given),
        }
    });
    (status, Json(body)).into_response()
}

/// 404: no endpoint serves the path (the router's fallback).
pub async fn not_found(headers: HeaderMap) -> Response {
    server_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no endpoint is configured for this path",
        Some(&headers),
    )
}

/// 405: the path is served, with other methods (listed in `Allow`, which the router adds).
pub async fn method_not_allowed(headers: HeaderMap) -> Response {
    server_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path is not served with this method",
        Some(&headers),
    )
}

/// 400: a path parameter could not be decoded (e.g. percent-encoded bytes that are not UTF-8).
/// axum's message names the parameter, as the config spells it.
pub fn bad_path_parameter(rejection: &RawPathParamsRejection, headers: &HeaderMap) -> Response {
    server_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &rejection.body_text(),
        Some(headers),
    )
}

/// 408: the request body stalled for longer than `timeout`. The connection is closed after it,
/// since the rest of the body may still arrive.
pub(super) fn body_stalled(timeout: Duration) -> Response {
    let message = format!(
        "no request body data arrived for {} ms (server.body_read_timeout_ms)",
        timeout.as_millis()
    );
    let mut response = server_error(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        &message,
        None,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(response: Response) -> serde_json::Value {
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .expect("a ready body")
        .expect("body bytes");
        serde_json::from_slice(&body).expect("JSON")
    }

    #[test]
    fn the_shape_of_a_plugin_error_with_no_plugin() {
        let response = body_stalled(Duration::from_millis(300));
        assert_eq!(response.status(), 408);
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = json_of(response);
        assert!(body["error"]["request_id"].is_string(), "{body}");
        let mut error = body["error"].clone();
        error.as_object_mut().unwrap().remove("request_id");
        assert_eq!(
            error,
            serde_json::json!({
                "kind": "request_timeout",
                "message": "no request body data arrived for 300 ms (server.body_read_timeout_ms)",
                "plugin": null,
            })
        );
        let plugin = backworks_plugin_host::error_response(
            "p",
            &backworks_plugin_sdk::PluginError::NotFound("x".into()).into(),
            None,
        );
        let plugin: serde_json::Value = serde_json::from_slice(&plugin.body).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("given-1"));
        let ours = json_of(server_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "x",
            Some(&headers),
        ));
        assert_eq!(ours["error"]["request_id"], "given-1");
        let keys = |v: &serde_json::Value| {
            v["error"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&plugin), keys(&ours));
    }
}

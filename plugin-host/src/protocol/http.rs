//! The HTTP values the calls carry, as the protocol writes them (`REQ`, `RESP`, hook results,
//! health; `docs/protocol.md` §5), and their conversions to and from the SDK's [`Request`],
//! [`Response`], [`HookAction`] and [`Health`]. Pure: no I/O.
//!
//! Encoding borrows: a request is serialized straight from the SDK value, and bodies are written
//! as base64 without an intermediate string. Decoding lower-cases header names, checks statuses,
//! and ignores members it does not know.

use std::borrow::Cow;

use backworks_plugin_sdk::{Headers, Health, HookAction, Request, Response, Text};
use base64::Engine as _;
use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
#[cfg(test)]
use serde_json::Value;

/// Bodies are standard base64 with padding; decoding also accepts them without padding.
const BASE64: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;

/// Writes bytes as a base64 string without an intermediate `String`.
struct Base64Out<'a>(&'a [u8]);

impl Serialize for Base64Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&base64::display::Base64Display::new(self.0, &BASE64))
    }
}

/// Reads a base64 string (or `null`) into bytes.
#[derive(Debug, Default)]
struct Base64In(Vec<u8>);

impl<'de> Deserialize<'de> for Base64In {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Base64In, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Base64In;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Base64In, E> {
                BASE64
                    .decode(v)
                    .map(Base64In)
                    .map_err(|e| E::custom(format_args!("invalid base64 body: {e}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Base64In, E> {
                Ok(Base64In(Vec::new()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

struct HeadersOut<'a>(&'a Headers);

impl Serialize for HeadersOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// A request to send, borrowed from the SDK value.
#[derive(Serialize)]
pub(crate) struct RequestOut<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a [(Text, Text)],
    params: &'a [(Text, Text)],
    headers: HeadersOut<'a>,
    body: Base64Out<'a>,
}

impl<'a> From<&'a Request> for RequestOut<'a> {
    fn from(r: &'a Request) -> RequestOut<'a> {
        RequestOut {
            method: &r.method,
            path: &r.path,
            query: &r.query,
            params: &r.params,
            headers: HeadersOut(&r.headers),
            body: Base64Out(&r.body),
        }
    }
}

/// A received request.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestIn {
    method: Text,
    path: Text,
    #[serde(default)]
    query: Vec<(Text, Text)>,
    #[serde(default)]
    params: Vec<(Text, Text)>,
    #[serde(default)]
    headers: Vec<(Text, Text)>,
    #[serde(default)]
    body: Base64In,
}

impl From<RequestIn> for Request {
    fn from(r: RequestIn) -> Request {
        Request {
            method: r.method,
            path: r.path,
            params: r.params,
            query: r.query,
            headers: r.headers.into_iter().collect(),
            body: r.body.0,
        }
    }
}

/// A response to send, borrowed from the SDK value.
#[derive(Serialize)]
pub(crate) struct ResponseOut<'a> {
    status: u16,
    headers: HeadersOut<'a>,
    body: Base64Out<'a>,
}

impl<'a> From<&'a Response> for ResponseOut<'a> {
    fn from(r: &'a Response) -> ResponseOut<'a> {
        ResponseOut {
            status: r.status,
            headers: HeadersOut(&r.headers),
            body: Base64Out(&r.body),
        }
    }
}

/// Why a request, response, hook result or health report read from the wire is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The JSON does not have the shape of `docs/protocol.md` (serde's message says where).
    #[error("{0}")]
    Shape(String),
    /// A response's status is not an HTTP status.
    #[error("status {0} is not an HTTP status")]
    Status(u16),
    /// `before_request` answered `respond` without a response.
    #[error("action \"respond\" without a \"response\"")]
    RespondWithoutResponse,
    /// `before_request` answered an action the protocol does not have.
    #[error("unknown action {0:?} (expected \"continue\" or \"respond\")")]
    UnknownAction(String),
    /// `health_check` answered a status the protocol does not have.
    #[error("unknown health status {0:?} (expected \"healthy\", \"degraded\" or \"unhealthy\")")]
    UnknownHealth(String),
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> WireError {
        WireError::Shape(e.to_string())
    }
}

/// A received response.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseIn {
    status: u16,
    #[serde(default)]
    headers: Vec<(Text, Text)>,
    #[serde(default)]
    body: Base64In,
}

impl TryFrom<ResponseIn> for Response {
    type Error = WireError;
    /// Refuses a status outside 100–999, as the library loader does.
    fn try_from(r: ResponseIn) -> Result<Response, WireError> {
        if !(100..=999).contains(&r.status) {
            return Err(WireError::Status(r.status));
        }
        Ok(Response {
            status: r.status,
            headers: r.headers.into_iter().collect(),
            body: r.body.0,
        })
    }
}

/// `{"request": REQ}`: the params of `handle` and `before_request`.
#[derive(Serialize)]
pub(crate) struct RequestParams<'a> {
    pub request: RequestOut<'a>,
}

/// `{"request": REQ}`, received.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestParamsIn {
    pub request: RequestIn,
}

/// `{"request": REQ, "response": RESP}`: the params of `after_response`.
#[derive(Serialize)]
pub(crate) struct ExchangeParams<'a> {
    pub request: RequestOut<'a>,
    pub response: ResponseOut<'a>,
}

/// `{"request": REQ, "response": RESP}`, received.
#[derive(Debug, Deserialize)]
pub(crate) struct ExchangeParamsIn {
    pub request: RequestIn,
    pub response: ResponseIn,
}

/// `{"response": RESP}`: the result of `handle` and `after_response`.
#[derive(Serialize)]
pub(crate) struct ResponseResult<'a> {
    pub response: ResponseOut<'a>,
}

/// `{"response": RESP}`, received.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseResultIn {
    pub response: ResponseIn,
}

/// The result of `before_request`, to send.
#[derive(Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub(crate) enum HookResultOut<'a> {
    Continue {
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<RequestOut<'a>>,
    },
    Respond {
        response: ResponseOut<'a>,
    },
}

impl<'a> From<&'a HookAction> for HookResultOut<'a> {
    fn from(a: &'a HookAction) -> HookResultOut<'a> {
        match a {
            HookAction::Continue => HookResultOut::Continue { request: None },
            HookAction::ContinueWith(r) => HookResultOut::Continue {
                request: Some(r.into()),
            },
            HookAction::Respond(r) => HookResultOut::Respond { response: r.into() },
        }
    }
}

/// The result of `before_request`, received.
#[derive(Debug, Deserialize)]
pub(crate) struct HookResultIn {
    action: String,
    #[serde(default)]
    request: Option<RequestIn>,
    #[serde(default)]
    response: Option<ResponseIn>,
}

impl TryFrom<HookResultIn> for HookAction {
    type Error = WireError;
    fn try_from(h: HookResultIn) -> Result<HookAction, WireError> {
        match (h.action.as_str(), h.request, h.response) {
            ("continue", None, _) => Ok(HookAction::Continue),
            ("continue", Some(r), _) => Ok(HookAction::ContinueWith(r.into())),
            ("respond", _, Some(r)) => Ok(HookAction::Respond(r.try_into()?)),
            ("respond", _, None) => Err(WireError::RespondWithoutResponse),
            (other, _, _) => Err(WireError::UnknownAction(other.to_owned())),
        }
    }
}

/// The result of `health_check`, either way.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HealthWire<'a> {
    pub status: Cow<'a, str>,
    #[serde(default)]
    pub message: Cow<'a, str>,
}

impl<'a> From<&'a Health> for HealthWire<'a> {
    fn from(h: &'a Health) -> HealthWire<'a> {
        HealthWire {
            status: Cow::Borrowed(h.as_str()),
            message: Cow::Borrowed(h.message()),
        }
    }
}

impl TryFrom<HealthWire<'_>> for Health {
    type Error = WireError;
    fn try_from(h: HealthWire<'_>) -> Result<Health, WireError> {
        match &*h.status {
            "healthy" => Ok(Health::Healthy),
            "degraded" => Ok(Health::Degraded(h.message.into_owned())),
            "unhealthy" => Ok(Health::Unhealthy(h.message.into_owned())),
            other => Err(WireError::UnknownHealth(other.to_owned())),
        }
    }
}

/// A request as the protocol's JSON (`REQ` in `docs/protocol.md`).
#[cfg(test)]
pub fn request_to_json(request: &Request) -> Value {
    serde_json::to_value(RequestOut::from(request)).unwrap_or(Value::Null)
}

/// A request from the protocol's JSON; the error says what is wrong.
#[cfg(test)]
pub fn request_from_json(value: Value) -> Result<Request, WireError> {
    Ok(RequestIn::deserialize(value).map(Request::from)?)
}

/// A response from the protocol's JSON; a status outside 100–999 is refused.
#[cfg(test)]
pub fn response_from_json(value: Value) -> Result<Response, WireError> {
    Response::try_from(ResponseIn::deserialize(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_request_has_the_documented_shape() {
        let mut r = Request::new("POST", "/notify/ops");
        r.params.push(("channel".into(), "ops".into()));
        r.query.push(("dry".into(), "1".into()));
        r.headers.append("Content-Type", "application/json");
        r.body = b"{\"a\":1}".to_vec();
        assert_eq!(
            request_to_json(&r),
            json!({
                "method": "POST", "path": "/notify/ops",
                "query": [["dry", "1"]], "params": [["channel", "ops"]],
                "headers": [["content-type", "application/json"]],
                "body": "eyJhIjoxfQ==",
            })
        );
    }

    #[test]
    fn optional_members_may_be_left_out_and_unknown_ones_are_ignored() {
        let r = request_from_json(json!({"method": "GET", "path": "/", "extra": 1})).unwrap();
        assert_eq!(r, Request::new("GET", "/"));
        let r = response_from_json(json!({"status": 204, "body": null})).unwrap();
        assert_eq!(r, Response::new(204));
        // Padding is optional when reading.
        let r = response_from_json(json!({"status": 200, "body": "aGk"})).unwrap();
        assert_eq!(r.body, b"hi");
        // Header names are lower-cased on the way in.
        let r = response_from_json(json!({"status": 200, "headers": [["X-A", "1"]]})).unwrap();
        assert_eq!(r.headers.get("x-a"), Some("1"));
    }

    #[test]
    fn malformed_requests_and_responses_say_why() {
        let e = request_from_json(json!({"path": "/"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `method`"), "{e}");
        let e = response_from_json(json!({"status": 200, "body": "%%"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid base64 body"), "{e}");
        let e = response_from_json(json!({"status": 42}))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "status 42 is not an HTTP status");
        let e = response_from_json(json!({"status": 200, "headers": [["a"]]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid length 1"), "{e}");
    }

    #[test]
    fn hook_results() {
        let parse = |v: Value| {
            HookResultIn::deserialize(v)
                .map_err(WireError::from)
                .and_then(HookAction::try_from)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            parse(json!({"action": "continue"})),
            Ok(HookAction::Continue)
        );
        let with = parse(json!({"action": "continue", "request": {"method": "GET", "path": "/x"}}));
        assert_eq!(
            with,
            Ok(HookAction::ContinueWith(Request::new("GET", "/x")))
        );
        let respond = parse(json!({"action": "respond", "response": {"status": 401}}));
        assert_eq!(respond, Ok(HookAction::Respond(Response::new(401))));
        assert!(
            parse(json!({"action": "respond"}))
                .unwrap_err()
                .contains("without")
        );
        assert!(
            parse(json!({"action": "stop"}))
                .unwrap_err()
                .contains("unknown action")
        );
        for action in [
            HookAction::Continue,
            HookAction::ContinueWith(Request::new("PUT", "/y")),
            HookAction::Respond(Response::new(403).with_body(vec![0, 255])),
        ] {
            let v = serde_json::to_value(HookResultOut::from(&action)).unwrap();
            assert_eq!(parse(v), Ok(action));
        }
    }

    fn arb_pairs() -> impl Strategy<Value = Vec<(Text, Text)>> {
        proptest::collection::vec(("[a-z-]{0,8}", ".{0,8}"), 0..4).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v): (String, String)| (k.into(), v.into()))
                .collect()
        })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        (
            "[A-Z]{1,7}",
            "/.{0,16}",
            arb_pairs(),
            arb_pairs(),
            arb_pairs(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(method, path, params, query, headers, body)| Request {
                method: method.into(),
                path: path.into(),
                params,
                query,
                headers: headers.into_iter().collect(),
                body,
            })
    }

    #[test]
    fn health_reports() {
        for h in [
            Health::Healthy,
            Health::Degraded("slow".into()),
            Health::Unhealthy("down".into()),
        ] {
            let v = serde_json::to_value(HealthWire::from(&h)).unwrap();
            let back = Health::try_from(HealthWire::deserialize(&v).unwrap());
            assert_eq!(back, Ok(h));
        }
        let bad = HealthWire::deserialize(&json!({"status": "fine"})).unwrap();
        assert!(
            Health::try_from(bad)
                .unwrap_err()
                .to_string()
                .contains("unknown health status")
        );
    }

    proptest! {
        #[test]
        fn requests_round_trip(request in arb_request()) {
            let text = serde_json::to_string(&RequestOut::from(&request)).unwrap();
            prop_assert!(!text.contains('\n'));
            let back: RequestIn = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Request::from(back), request);
        }

        #[test]
        fn responses_round_trip(
            status in 100u16..1000,
            headers in arb_pairs(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let response = Response { status, headers: headers.into_iter().collect(), body };
            let text = serde_json::to_string(&ResponseOut::from(&response)).unwrap();
            prop_assert!(!text.contains('\n'));
            let back: ResponseIn = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Response::try_from(back), Ok(response));
        }
    }
}

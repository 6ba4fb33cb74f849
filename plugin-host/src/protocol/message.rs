//! The protocol's messages as data: the JSON-RPC envelopes and how a received line is classified,
//! error objects and their mapping to [`PluginError`], and the handshake. Pure: no I/O. The
//! HTTP values the calls carry are in [`http`](super::http).
//!
//! Decoding is strict about types and ignores members it does not know, so a newer minor version
//! can add members.

use std::borrow::Cow;

use backworks_plugin_sdk::{ErrorKind, PluginError};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::PROTOCOL_VERSION;
use crate::CallError;

/// The `jsonrpc` member of every message.
pub const JSONRPC: &str = "2.0";

/// JSON-RPC error code: the message is not valid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC error code: the message is not a valid JSON-RPC request (or the frame is too long).
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error code: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC error code: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// The error code of a plugin error; `data` holds its `kind` and `status`.
pub const PLUGIN_ERROR: i64 = -32000;

// ---------------------------------------------------------------------------------------------
// Envelopes

/// A message to send: a call (with an id) or a notification (without).
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a, P> {
    pub jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub method: &'a str,
    pub params: P,
}

/// A successful answer to send.
#[derive(Debug, Serialize)]
pub(crate) struct Answer<'a, T> {
    pub jsonrpc: &'static str,
    pub id: &'a Value,
    pub result: T,
}

/// An error answer to send.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorAnswer<'a> {
    pub jsonrpc: &'static str,
    pub id: &'a Value,
    pub error: &'a RpcError,
}

/// Whether a member was there, whatever its value (`null` included).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// The members that say what a received message is; the rest is checked but not kept.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Present,
    #[serde(default)]
    error: Present,
}

/// What a received line is.
#[derive(Debug, PartialEq)]
pub(crate) enum Kind<'a> {
    /// A call: answer it with this id.
    Call { id: Value, method: Cow<'a, str> },
    /// A notification: no answer.
    Notification { method: Cow<'a, str> },
    /// An answer (result or error) to the call with this id (`None`: no id or `null`).
    Answer { id: Option<Value>, error: bool },
}

/// A line that is not a JSON-RPC 2.0 message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    /// [`PARSE_ERROR`] or [`INVALID_REQUEST`].
    pub code: i64,
    /// What is wrong, as a sentence.
    pub message: String,
}

/// Reads a line as a JSON-RPC 2.0 message and says what it is.
pub(crate) fn classify(line: &[u8]) -> Result<Kind<'_>, Invalid> {
    let envelope: Envelope<'_> = serde_json::from_slice(line).map_err(|e| json_error(&e, line))?;
    if envelope.jsonrpc.as_deref() != Some(JSONRPC) {
        return Err(not_jsonrpc("\"jsonrpc\" must be \"2.0\""));
    }
    match (envelope.method, envelope.id) {
        (Some(method), Some(id)) => Ok(Kind::Call { id, method }),
        (Some(method), None) => Ok(Kind::Notification { method }),
        (None, id) if envelope.result.0 || envelope.error.0 => Ok(Kind::Answer {
            id,
            error: envelope.error.0,
        }),
        (None, _) => Err(not_jsonrpc(
            "it has neither \"method\" nor \"result\" nor \"error\"",
        )),
    }
}

fn not_jsonrpc(why: &str) -> Invalid {
    Invalid {
        code: INVALID_REQUEST,
        message: format!("not a JSON-RPC 2.0 message: {why}"),
    }
}

/// What is wrong with a line serde could not read: invalid JSON, or JSON of the wrong shape.
pub(crate) fn json_error(e: &serde_json::Error, line: &[u8]) -> Invalid {
    const PREVIEW: usize = 60;
    let preview = String::from_utf8_lossy(&line[..line.len().min(PREVIEW)]);
    let ellipsis = if line.len() > PREVIEW { "..." } else { "" };
    match e.classify() {
        serde_json::error::Category::Data => not_jsonrpc(&e.to_string()),
        _ => Invalid {
            code: PARSE_ERROR,
            message: format!("invalid JSON: {e} in {preview:?}{ellipsis}"),
        },
    }
}

/// The params of a received call or notification.
#[derive(Debug, Deserialize)]
pub(crate) struct ParamsIn<P> {
    pub params: Option<P>,
}

/// A received answer; `result` is read as `T`.
#[derive(Debug, Deserialize)]
pub(crate) struct AnswerIn<T> {
    #[serde(default = "none")]
    pub result: Option<T>,
    #[serde(default)]
    pub error: Option<RpcError>,
}

fn none<T>() -> Option<T> {
    None
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// The code: one of the standard codes, or [`PLUGIN_ERROR`].
    pub code: i64,
    /// What happened, for people.
    pub message: String,
    /// For [`PLUGIN_ERROR`]: `{"kind", "status"}` (and `retry_after_secs` for `circuit_open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a standard code and no data.
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The error object of a failed call: code [`PLUGIN_ERROR`], the message without the kind's
    /// prefix, and `data: {"kind", "status"}` (and `retry_after_secs` for `circuit_open`).
    pub fn from_error(error: &CallError) -> RpcError {
        let mut data = serde_json::json!({ "kind": error.kind(), "status": error.status() });
        if let CallError::CircuitOpen {
            retry_after_secs, ..
        } = error
        {
            data["retry_after_secs"] = (*retry_after_secs).into();
        }
        RpcError {
            code: PLUGIN_ERROR,
            message: error.message().to_owned(),
            data: Some(data),
        }
    }

    /// The error this object stands for, if its code is [`PLUGIN_ERROR`]: a plugin kind (the
    /// SDK's [`ErrorKind`] table) gives the plugin's error, a host kind (a plugin child passing on
    /// what its own host side found, such as an invalid response) the host's; an unknown or
    /// missing kind gives [`PluginError::Status`] when `status` is 400–599 and
    /// [`PluginError::Internal`] otherwise.
    pub fn to_error(&self) -> Option<CallError> {
        if self.code != PLUGIN_ERROR {
            return None;
        }
        let data = self.data.as_ref();
        let kind = data.and_then(|d| d.get("kind")).and_then(Value::as_str);
        let status = data
            .and_then(|d| d.get("status"))
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok());
        let retry_after = data
            .and_then(|d| d.get("retry_after_secs"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let message = self.message.clone();
        let kind = kind.unwrap_or("");
        if let Some(kind) = ErrorKind::from_name(kind) {
            let status = status.unwrap_or(kind.status());
            return Some(PluginError::new(kind, status, message).into());
        }
        if let Some(error) = CallError::from_host_kind(kind, message.clone(), retry_after) {
            return Some(error);
        }
        Some(CallError::Plugin(match status {
            Some(status @ 400..=599) => PluginError::Status { status, message },
            _ => PluginError::Internal(message),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake

/// Which calls a plugin answers, from its manifest's `features`. Names this host does not know
/// are ignored. The default is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// `"handle"`: it serves endpoints.
    pub handle: bool,
    /// `"before_request"`: its `before_request` hook runs.
    pub before_request: bool,
    /// `"after_response"`: its `after_response` hook runs.
    pub after_response: bool,
    /// `"health_check"`: it reports its own health.
    pub health_check: bool,
}

impl Features {
    /// Every feature.
    pub const ALL: Features = Features {
        handle: true,
        before_request: true,
        after_response: true,
        health_check: true,
    };

    /// The hooks among the features.
    pub fn hooks(&self) -> backworks_plugin_sdk::Hooks {
        use backworks_plugin_sdk::Hooks;
        let before = if self.before_request {
            Hooks::BEFORE_REQUEST
        } else {
            Hooks::NONE
        };
        let after = if self.after_response {
            Hooks::AFTER_RESPONSE
        } else {
            Hooks::NONE
        };
        before.and(after)
    }

    /// The names of the features, in the order of the protocol document.
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [
            (self.handle, "handle"),
            (self.before_request, "before_request"),
            (self.after_response, "after_response"),
            (self.health_check, "health_check"),
        ];
        flags.iter().filter(|f| f.0).map(|f| f.1).collect()
    }
}

impl Serialize for Features {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Features, D::Error> {
        let names = Vec::<Cow<'de, str>>::deserialize(d)?;
        let mut f = Features::default();
        for name in names {
            match &*name {
                "handle" => f.handle = true,
                "before_request" => f.before_request = true,
                "after_response" => f.after_response = true,
                "health_check" => f.health_check = true,
                _ => {}
            }
        }
        Ok(f)
    }
}

/// What a plugin says of itself: the result of `getmanifest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The protocol version it speaks, `MAJOR.MINOR`.
    pub protocol: String,
    /// Its name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// One line about it.
    #[serde(default)]
    pub description: String,
    /// The calls it answers.
    #[serde(default)]
    pub features: Features,
    /// The JSON Schema of its config, when it declares one (protocol 1.x, optional): the host
    /// checks the config against it before `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Value>,
}

impl Manifest {
    /// Whether this host can talk to the plugin: see [`check_version`](super::check_version).
    pub fn check(&self) -> Result<(), super::VersionError> {
        super::check_version(&self.protocol)
    }
}

/// The params of `getmanifest`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ManifestParams<'a> {
    pub protocol: Cow<'a, str>,
    pub host: HostInfo<'a>,
}

impl ManifestParams<'static> {
    pub fn ours() -> ManifestParams<'static> {
        ManifestParams {
            protocol: Cow::Borrowed(PROTOCOL_VERSION),
            host: HostInfo {
                name: Cow::Borrowed("backworks"),
                version: Cow::Borrowed(env!("CARGO_PKG_VERSION")),
            },
        }
    }
}

/// Who the host is, in `getmanifest`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HostInfo<'a> {
    pub name: Cow<'a, str>,
    pub version: Cow<'a, str>,
}

/// The params of `init`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitParams<'a> {
    pub name: Cow<'a, str>,
    #[serde(default)]
    pub config: Value,
}

/// An empty object, the params or result of calls that carry nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::{
        ExchangeParamsIn, HealthWire, HookResultIn, ResponseResultIn, request_from_json,
        response_from_json,
    };
    use backworks_plugin_sdk::{Health, HookAction};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn lines_are_classified() {
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"handle","params":{}}"#;
        assert_eq!(
            classify(call),
            Ok(Kind::Call {
                id: json!(7),
                method: "handle".into()
            })
        );
        let note = br#"{"jsonrpc":"2.0","method":"log","params":{"level":"info","message":"x"}}"#;
        assert_eq!(
            classify(note),
            Ok(Kind::Notification {
                method: "log".into()
            })
        );
        let answer = br#"{"jsonrpc":"2.0","id":3,"result":null}"#;
        assert_eq!(
            classify(answer),
            Ok(Kind::Answer {
                id: Some(json!(3)),
                error: false
            })
        );
        let error = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#;
        assert_eq!(
            classify(error),
            Ok(Kind::Answer {
                id: None,
                error: true
            })
        );
    }

    #[test]
    fn garbage_lines_are_explained() {
        let e = classify(b"hello world").unwrap_err();
        assert_eq!(e.code, PARSE_ERROR);
        let e = e.message;
        assert!(
            e.starts_with("invalid JSON: expected value at line 1 column 1"),
            "{e}"
        );
        assert!(e.ends_with("in \"hello world\""), "{e}");
        let e = classify(b"[1,2]").unwrap_err().message;
        assert!(
            e.starts_with("not a JSON-RPC 2.0 message: invalid type"),
            "{e}"
        );
        let e = classify(br#"{"id":1,"result":{}}"#).unwrap_err().message;
        assert_eq!(e, "not a JSON-RPC 2.0 message: \"jsonrpc\" must be \"2.0\"");
        let e = classify(br#"{"jsonrpc":"2.0","id":1}"#)
            .unwrap_err()
            .message;
        assert!(e.contains("neither"), "{e}");
        let e = classify(b"{\"jsonrpc\":\"2.0\",\"method\":\"log\"")
            .unwrap_err()
            .message;
        assert!(e.starts_with("invalid JSON: EOF while parsing"), "{e}");
        let long = vec![b'x'; 200];
        let e = classify(&long).unwrap_err().message;
        assert!(e.ends_with("...") && e.len() < 200, "{e}");
    }

    #[test]
    fn plugin_errors_round_trip_through_error_objects() {
        let errors = [
            PluginError::BadRequest("b".into()).into(),
            PluginError::Unauthorized("u".into()).into(),
            PluginError::Forbidden("f".into()).into(),
            PluginError::NotFound("n".into()).into(),
            PluginError::Config("c".into()).into(),
            PluginError::Unavailable("v".into()).into(),
            PluginError::Internal("i".into()).into(),
            PluginError::Status {
                status: 418,
                message: "teapot".into(),
            }
            .into(),
            PluginError::Panic("p".into()).into(),
            PluginError::Cancelled.into(),
            CallError::Timeout("t".into()),
            CallError::Overloaded("o".into()),
            CallError::CircuitOpen {
                message: "open".into(),
                retry_after_secs: 7,
            },
            CallError::Crashed("x".into()),
            CallError::InvalidResponse("r".into()),
        ];
        for e in errors {
            let object = RpcError::from_error(&e);
            assert_eq!(object.code, PLUGIN_ERROR);
            assert_eq!(object.data.as_ref().unwrap()["status"], e.status());
            let text = serde_json::to_string(&object).unwrap();
            let back: RpcError = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_error(), Some(e));
        }
    }

    #[test]
    fn unknown_kinds_fall_back_on_the_status() {
        let e = |data: Value| RpcError {
            code: PLUGIN_ERROR,
            message: "m".into(),
            data: Some(data),
        };
        let gone = e(json!({"kind": "gone", "status": 410})).to_error();
        assert_eq!(
            gone,
            Some(CallError::Plugin(PluginError::Status {
                status: 410,
                message: "m".into()
            }))
        );
        let odd = e(json!({"kind": "odd", "status": 302})).to_error();
        assert_eq!(odd, Some(PluginError::Internal("m".into()).into()));
        let bare = RpcError::new(PLUGIN_ERROR, "m").to_error();
        assert_eq!(bare, Some(PluginError::Internal("m".into()).into()));
        assert_eq!(RpcError::new(METHOD_NOT_FOUND, "m").to_error(), None);
    }

    #[test]
    fn manifests() {
        let m: Manifest = serde_json::from_value(json!({
            "protocol": "1.2", "name": "report",
            "features": ["handle", "after_response", "subscriptions"]
        }))
        .unwrap();
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.features.names(), vec!["handle", "after_response"]);
        assert_eq!(
            serde_json::to_value(m.features).unwrap(),
            json!(["handle", "after_response"])
        );
        assert_eq!(m.config_schema, None);
        assert!(
            serde_json::to_value(&m)
                .unwrap()
                .get("config_schema")
                .is_none()
        );
        let m2 = Manifest {
            protocol: "2.0".into(),
            ..m
        };
        assert!(m2.check().is_err());
        let with_schema: Manifest = serde_json::from_value(json!({
            "protocol": "1.0", "name": "report",
            "config_schema": {"type": "object", "required": ["title"]}
        }))
        .unwrap();
        assert_eq!(
            with_schema.config_schema,
            Some(json!({"type": "object", "required": ["title"]}))
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("2.0"),
                Just("jsonrpc"),
                Just("id"),
                Just("method"),
                Just("result"),
                Just("error"),
                Just("params"),
                Just("request"),
                Just("response"),
                Just("body"),
                Just("status"),
                Just("action"),
                Just("continue"),
                Just("respond"),
                Just("code"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("jsonrpc".to_owned()),
                            Just("id".to_owned()),
                            Just("method".to_owned()),
                            Just("result".to_owned()),
                            Just("error".to_owned()),
                            Just("params".to_owned()),
                            Just("status".to_owned()),
                            Just("body".to_owned()),
                            Just("headers".to_owned()),
                            Just("action".to_owned()),
                            ".{0,6}",
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(value in arb_json()) {
            let text = serde_json::to_vec(&value).unwrap();
            let _ = classify(&text);
            let _ = request_from_json(value.clone());
            let _ = response_from_json(value.clone());
            let _ = serde_json::from_value::<Manifest>(value.clone());
            let _ = serde_json::from_value::<RpcError>(value.clone()).map(|e| e.to_error());
            let _ = HookResultIn::deserialize(&value).map(HookAction::try_from);
            let _ = HealthWire::deserialize(&value).map(Health::try_from);
            let _ = serde_json::from_slice::<AnswerIn<ResponseResultIn>>(&text);
            let _ = serde_json::from_slice::<ParamsIn<ExchangeParamsIn>>(&text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes);
        }
    }
}

//! A hooks plugin: runs around other plugins' endpoints rather than serving its own. Its hooks
//! never wait, so they are synchronous ([`BackworksPlugin::HOOKS_SYNC`]): plain functions that read
//! the host's request and response in place and send back only the header they set.
//!
//! - `before_request` gives a request without an `x-request-id` header a new, unique one and goes
//!   on with that header set ([`RequestEdit::SetHeader`]); a request that has one goes on
//!   unchanged ([`RequestEdit::Continue`]).
//! - With `require_api_key` configured, a request whose `x-api-key` header is missing or differs is
//!   answered at once ([`RequestEdit::Respond`]) with 401 `{"error":"missing or invalid API key"}`;
//!   the endpoint never runs.
//! - `after_response` sets the request's `x-request-id` on the response, so clients see it.
//!
//! Config (optional): `{"require_api_key": "<key>"}`; use `${ENV_VAR}` interpolation in
//! `backworks.yaml` to keep the key out of the file. The key is never logged.

use std::hash::{BuildHasher, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use backworks_plugin_sdk::prelude::*;
use backworks_plugin_sdk::tracing;

/// The header carrying the request id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The header carrying the API key when `require_api_key` is set.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The plugin's configuration, from `backworks.yaml`; its JSON Schema is the plugin's
/// [`config_schema`](BackworksPlugin::config_schema), which the host checks the config against.
#[derive(Clone, Default, Deserialize, JsonSchema)]
#[serde(crate = "backworks_plugin_sdk::serde", deny_unknown_fields)]
#[schemars(crate = "backworks_plugin_sdk::schemars")]
pub struct RequestIdConfig {
    /// When set, requests must carry this value in `x-api-key`.
    pub require_api_key: Option<String>,
}

impl std::fmt::Debug for RequestIdConfig {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdConfig")
            .field(
                "require_api_key",
                &self.require_api_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Adds and propagates request ids; optionally checks an API key. See the crate docs.
#[derive(Debug)]
pub struct RequestId {
    /// Random per instance, so ids from two hosts (or two reloads) do not collide.
    prefix: u64,
    /// Makes ids unique within this instance.
    counter: AtomicU64,
    config: RwLock<RequestIdConfig>,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            prefix: random_u64(),
            counter: AtomicU64::new(0),
            config: RwLock::new(RequestIdConfig::default()),
        }
    }
}

/// A random-enough 64-bit value without a dependency: std seeds each `RandomState` with fresh
/// random keys; the time and process id are mixed in for good measure.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Compares in time independent of where the first difference is, so the key cannot be guessed
/// byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RequestId {
    /// A new id: `<11 digits of this instance's prefix>-<11 digits of a counter>`, each number
    /// written in full in the URL-safe base64 alphabet (`A`–`Z`, `a`–`z`, `0`–`9`, `-`, `_`),
    /// most significant digit first. 23 bytes: short enough for [`Text`] to hold inline, so
    /// neither the plugin nor the host allocates for it.
    pub fn next_id(&self) -> Text {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Written digit by digit: `format!` costs more than the rest of the hook.
        let mut id = [b'-'; ID_LEN];
        write_digits(&mut id[..DIGITS], self.prefix);
        write_digits(&mut id[DIGITS + 1..], n);
        Text::from(std::str::from_utf8(&id).expect("the id is ASCII"))
    }

    fn api_key_ok(&self, request: LentRequest<'_>) -> bool {
        let config = self
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &config.require_api_key {
            None => true,
            Some(expected) => request
                .header(API_KEY_HEADER)
                .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes())),
        }
    }
}

/// Digits of each half of an id: 11 of six bits hold 64.
const DIGITS: usize = 11;

/// The length of an id: two halves and a `-`.
pub const ID_LEN: usize = 2 * DIGITS + 1;

/// Writes `n` into `out` (its [`DIGITS`] bytes) in the URL-safe base64 alphabet, most
/// significant digit first.
fn write_digits(out: &mut [u8], n: u64) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (place, digit) in out.iter_mut().rev().enumerate() {
        *digit = ALPHABET[(n >> (place * 6)) as usize & 0x3f];
    }
}

/// The id a request already carries, if any (an empty header counts as none).
fn existing_id<'a>(request: LentRequest<'a>) -> Option<&'a str> {
    request
        .header(REQUEST_ID_HEADER)
        .filter(|id| !id.trim().is_empty())
}

#[async_trait]
impl BackworksPlugin for RequestId {
    fn config_schema() -> Option<Value> {
        Some(schema_for::<RequestIdConfig>())
    }

    const HOOKS: Hooks = Hooks::ALL;

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let config: RequestIdConfig = parse_config(config)?;
        if config.require_api_key.as_deref() == Some("") {
            return Err(PluginError::Config(
                "request-id: require_api_key must not be empty".to_owned(),
            ));
        }
        tracing::info!(
            "request-id initialized (API key required: {})",
            config.require_api_key.is_some()
        );
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    // The hooks never wait: they run as plain functions on the host's request and response, read
    // in place, and send back only the header they set; the async `before_request`/`after_response`
    // (and their `_lent` forms) go through these too.
    const HOOKS_SYNC: bool = true;

    fn before_request_sync(&self, request: LentRequest<'_>) -> PluginResult<RequestEdit> {
        let id = existing_id(request);
        if !self.api_key_ok(request) {
            let id = id.map_or_else(|| self.next_id(), Text::from);
            let response = Response::json(&json!({ "error": "missing or invalid API key" }))
                .with_status(401)
                .with_header(REQUEST_ID_HEADER, id);
            return Ok(RequestEdit::Respond(response));
        }
        if id.is_some() {
            return Ok(RequestEdit::Continue);
        }
        Ok(RequestEdit::SetHeader(
            REQUEST_ID_HEADER.into(),
            self.next_id(),
        ))
    }

    fn after_response_sync(
        &self,
        request: LentRequest<'_>,
        _response: LentResponse<'_>,
    ) -> PluginResult<ResponseEdit> {
        Ok(match existing_id(request) {
            Some(id) => ResponseEdit::SetHeader(REQUEST_ID_HEADER.into(), id.into()),
            None => ResponseEdit::Keep,
        })
    }
}

backworks_plugin_sdk::export_plugin!(
    RequestId,
    name = "request-id",
    version = env!("CARGO_PKG_VERSION"),
    description = "adds x-request-id to requests and responses; optional API key check"
);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    /// Runs the hook and returns the request the chain goes on with (panics on `Respond`).
    async fn forwarded(plugin: &RequestId, request: &Request) -> Option<Request> {
        match plugin.before_request(request).await.unwrap() {
            HookAction::Continue => None,
            HookAction::ContinueWith(changed) => Some(changed),
            HookAction::Respond(response) => panic!("unexpected early response {response:?}"),
        }
    }

    #[tokio::test]
    async fn adds_an_id_when_missing_and_keeps_the_rest() {
        let plugin = RequestId::default();
        plugin.initialize(Value::Null).await.unwrap();
        let mut request = Request::new("POST", "/orders");
        request.headers.insert("content-type", "application/json");
        request.body = b"{}".to_vec();
        let changed = forwarded(&plugin, &request)
            .await
            .expect("a changed request");
        let id = changed.header(REQUEST_ID_HEADER).expect("an id");
        assert_eq!(id.len(), ID_LEN, "{id}");
        assert_eq!(changed.method, "POST");
        assert_eq!(changed.path, "/orders");
        assert_eq!(changed.header("content-type"), Some("application/json"));
        assert_eq!(changed.body, b"{}");
    }

    #[tokio::test]
    async fn keeps_an_existing_id() {
        let plugin = RequestId::default();
        let mut request = Request::new("GET", "/x");
        request.headers.insert("X-Request-Id", "abc");
        assert_eq!(forwarded(&plugin, &request).await, None);
    }

    #[tokio::test]
    async fn an_empty_id_is_replaced() {
        let plugin = RequestId::default();
        let mut request = Request::new("GET", "/x");
        request.headers.insert(REQUEST_ID_HEADER, " ");
        let changed = forwarded(&plugin, &request)
            .await
            .expect("a changed request");
        assert_ne!(changed.header(REQUEST_ID_HEADER), Some(" "));
        assert_eq!(changed.headers.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ids_are_unique_across_concurrent_requests_and_instances() {
        let plugin = Arc::new(RequestId::default());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let plugin = plugin.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..250 {
                    let request = Request::new("GET", "/x");
                    let changed = forwarded(&plugin, &request).await.unwrap();
                    ids.push(changed.header(REQUEST_ID_HEADER).unwrap().to_owned());
                }
                ids
            }));
        }
        let mut all = HashSet::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        assert_eq!(all.len(), 2000);
        // Another instance starts its own counter at 0 but has another prefix.
        let other = RequestId::default();
        assert_ne!(other.next_id(), RequestId::default().next_id());
    }

    #[test]
    fn ids_write_every_bit_of_both_numbers() {
        let mut digits = [0u8; DIGITS];
        write_digits(&mut digits, 0);
        assert_eq!(&digits, b"AAAAAAAAAAA");
        write_digits(&mut digits, u64::MAX);
        assert_eq!(&digits, b"P__________");
        write_digits(&mut digits, 64 + 2);
        assert_eq!(&digits, b"AAAAAAAAABC");
        let plugin = RequestId {
            prefix: 1 << 63,
            counter: AtomicU64::new(63),
            config: RwLock::default(),
        };
        let id = plugin.next_id();
        assert_eq!(id, "IAAAAAAAAAA-AAAAAAAAAA_");
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(plugin.next_id(), "IAAAAAAAAAA-AAAAAAAAABA");
    }

    #[tokio::test]
    async fn after_response_copies_the_id() {
        let plugin = RequestId::default();
        let mut request = Request::new("GET", "/x");
        request.headers.insert(REQUEST_ID_HEADER, "abc");
        let response = Response::text("hi").with_status(201);
        let response = plugin.after_response(&request, response).await.unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, b"hi");
        assert_eq!(response.headers.get(REQUEST_ID_HEADER), Some("abc"));

        // No id on the request: the response is left alone.
        let response = Response::new(204);
        let out = plugin
            .after_response(&Request::new("GET", "/x"), response.clone())
            .await
            .unwrap();
        assert_eq!(out, response);
    }

    #[tokio::test]
    async fn the_id_added_before_is_the_one_sent_back() {
        let plugin = RequestId::default();
        let changed = forwarded(&plugin, &Request::new("GET", "/x"))
            .await
            .unwrap();
        let response = plugin
            .after_response(&changed, Response::new(200))
            .await
            .unwrap();
        assert_eq!(
            response.headers.get(REQUEST_ID_HEADER),
            changed.header(REQUEST_ID_HEADER)
        );
    }

    #[tokio::test]
    async fn api_key_is_required_when_configured() {
        let plugin = RequestId::default();
        plugin
            .initialize(json!({ "require_api_key": "s3cret" }))
            .await
            .unwrap();

        for given in [None, Some("wrong"), Some("s3cre"), Some("s3cret!")] {
            let mut request = Request::new("GET", "/x");
            request.headers.insert(REQUEST_ID_HEADER, "r1");
            if let Some(key) = given {
                request.headers.insert(API_KEY_HEADER, key);
            }
            let HookAction::Respond(response) = plugin.before_request(&request).await.unwrap()
            else {
                panic!("key {given:?} was let through");
            };
            assert_eq!(response.status, 401);
            assert_eq!(response.body, br#"{"error":"missing or invalid API key"}"#);
            assert_eq!(
                response.headers.get("content-type"),
                Some("application/json")
            );
            assert_eq!(response.headers.get(REQUEST_ID_HEADER), Some("r1"));
        }

        let mut request = Request::new("GET", "/x");
        request.headers.insert("X-Api-Key", "s3cret");
        let changed = forwarded(&plugin, &request).await.expect("an id was added");
        assert!(changed.header(REQUEST_ID_HEADER).is_some());
        assert_eq!(changed.header(API_KEY_HEADER), Some("s3cret"));
    }

    #[tokio::test]
    async fn bad_config_is_rejected() {
        let plugin = RequestId::default();
        for config in [
            json!({ "require_api_key": 1234 }),
            json!({ "require_api_key": "" }),
            json!({ "api_key": "x" }),
            json!(["x"]),
        ] {
            let err = plugin.initialize(config.clone()).await.unwrap_err();
            assert_eq!(err.kind(), "config", "{config}: {err}");
        }
        // Still open: the failed configs changed nothing.
        assert!(plugin.api_key_ok(Request::new("GET", "/x").lend()));
    }

    #[test]
    fn config_debug_hides_the_key() {
        let config = RequestIdConfig {
            require_api_key: Some("s3cret".into()),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[tokio::test]
    async fn handle_is_not_served() {
        let plugin = RequestId::default();
        let err = plugin.handle(Request::new("GET", "/x")).await.unwrap_err();
        assert_eq!(err.status(), 404);
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}

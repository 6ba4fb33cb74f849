//! An endpoint plugin: the smallest useful example of serving routes from a plugin.
//!
//! | Route               | Answer                                                                 |
//! |---------------------|------------------------------------------------------------------------|
//! | `GET /hello/{name}` | 200 `{"message":"Hello, <name>!"}`                                     |
//! | `POST /echo`        | 200 with the request body unchanged and its `content-type`             |
//! | anything else       | 404 ([`PluginError::NotFound`]); a known path with another method: 405 |
//!
//! Config (optional): `{"greeting": "Hi"}` replaces `Hello` in the message. The plugin declares the
//! config's JSON Schema (derived from [`HelloConfig`]), so the host refuses a greeting that is not
//! a string, or an unknown field, before `initialize`, naming the line of `backworks.yaml`;
//! `initialize` checks again ([`PluginError::Config`]) for a host that does not.
//!
//! The host routes the endpoints of `backworks.yaml` to the plugin; the plugin sees the concrete
//! path (`/hello/ana`) and the endpoint's path parameters (`name = ana`) and dispatches on them.
//!
//! Its endpoints never wait, so they are a plain function ([`BackworksPlugin::HANDLE_SYNC`] and
//! [`handle_sync`](BackworksPlugin::handle_sync)) that reads each request where the host keeps it:
//! no request is copied into the plugin and no future is made for a call, the fast path for an
//! endpoint. Only `echo` copies what it answers with, the body. An endpoint that awaits something
//! implements the async [`handle_lent`](BackworksPlugin::handle_lent) instead.

use std::sync::RwLock;

use backworks_plugin_sdk::prelude::*;
use backworks_plugin_sdk::tracing;

/// The greeting used when the config sets none.
pub const DEFAULT_GREETING: &str = "Hello";

/// What `echo` answers with when the request has no `content-type`.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The plugin's configuration, from `backworks.yaml`. Its JSON Schema is the plugin's
/// [`config_schema`](BackworksPlugin::config_schema).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(crate = "backworks_plugin_sdk::serde", deny_unknown_fields)]
#[schemars(crate = "backworks_plugin_sdk::schemars")]
pub struct HelloConfig {
    /// The word before the name; [`DEFAULT_GREETING`] when absent.
    pub greeting: Option<String>,
}

/// Greets by name and echoes bodies. See the crate docs for the routes.
#[derive(Debug)]
pub struct Hello {
    greeting: RwLock<String>,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            greeting: RwLock::new(DEFAULT_GREETING.to_owned()),
        }
    }
}

impl Hello {
    fn greet(&self, request: LentRequest<'_>, segment: &str) -> PluginResult<Response> {
        // The host passes the endpoint's `{name}` decoded; fall back to the raw path segment when
        // the plugin is routed without parameters.
        let name = request.param("name").unwrap_or(segment);
        if name.is_empty() {
            return Err(PluginError::NotFound(format!(
                "no name in path {}",
                request.path()
            )));
        }
        let greeting = self
            .greeting
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Response::json(&json!({
            "message": format!("{greeting}, {name}!")
        })))
    }
}

/// Answers 200 with the request's body and `content-type`.
fn echo(request: LentRequest<'_>) -> Response {
    let content_type = request
        .header("content-type")
        .unwrap_or(DEFAULT_CONTENT_TYPE);
    Response::new(200)
        .with_header("content-type", content_type)
        .with_body(request.body())
}

/// The error for a known path asked with a method it does not serve.
fn method_not_allowed(request: LentRequest<'_>, allowed: &str) -> PluginError {
    PluginError::Status {
        status: 405,
        message: format!(
            "{} {} is not served; use {allowed}",
            request.method(),
            request.path()
        ),
    }
}

#[async_trait]
impl BackworksPlugin for Hello {
    fn config_schema() -> Option<Value> {
        Some(schema_for::<HelloConfig>())
    }

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let config: HelloConfig = parse_config(config)?;
        let greeting = config
            .greeting
            .unwrap_or_else(|| DEFAULT_GREETING.to_owned());
        tracing::info!("hello initialized with greeting {greeting:?}");
        *self
            .greeting
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = greeting;
        Ok(())
    }

    const HANDLE_SYNC: bool = true;

    fn handle_sync(&self, request: LentRequest<'_>) -> PluginResult<Response> {
        let path = request.path();
        // `/hello/{name}` (one segment after `hello`) or `/echo`; anything else is not ours.
        let name = path
            .strip_prefix("/hello/")
            .filter(|name| !name.contains('/'));
        match (request.method(), name, path) {
            ("GET", Some(name), _) => self.greet(request, name),
            (_, Some(_), _) => Err(method_not_allowed(request, "GET")),
            ("POST", None, "/echo") => Ok(echo(request)),
            (_, None, "/echo") => Err(method_not_allowed(request, "POST")),
            _ => Err(PluginError::NotFound(format!(
                "hello serves no {} {}",
                request.method(),
                request.path()
            ))),
        }
    }
}

backworks_plugin_sdk::export_plugin!(
    Hello,
    name = "hello",
    version = env!("CARGO_PKG_VERSION"),
    description = "GET /hello/{name} greets; POST /echo returns the body"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn get_hello(name: &str) -> Request {
        let mut request = Request::new("GET", format!("/hello/{name}"));
        request.params.push(("name".into(), name.into()));
        request
    }

    fn body_json(response: &Response) -> Value {
        backworks_plugin_sdk::serde_json::from_slice(&response.body).expect("JSON body")
    }

    #[tokio::test]
    async fn greets_by_path_param() {
        let plugin = Hello::default();
        plugin.initialize(Value::Null).await.unwrap();
        let response = plugin.handle(get_hello("ana")).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers.get("content-type"),
            Some("application/json")
        );
        assert_eq!(response.body, br#"{"message":"Hello, ana!"}"#);
    }

    #[tokio::test]
    async fn param_wins_over_raw_segment_and_segment_is_the_fallback() {
        let plugin = Hello::default();
        // The host decoded `%20` into the parameter; the raw path keeps it encoded.
        let mut request = Request::new("GET", "/hello/ana%20b");
        request.params.push(("name".into(), "ana b".into()));
        let response = plugin.handle(request).await.unwrap();
        assert_eq!(body_json(&response)["message"], "Hello, ana b!");

        let response = plugin
            .handle(Request::new("GET", "/hello/bo"))
            .await
            .unwrap();
        assert_eq!(body_json(&response)["message"], "Hello, bo!");
    }

    #[tokio::test]
    async fn names_are_json_escaped() {
        let plugin = Hello::default();
        let response = plugin.handle(get_hello(r#"a"b"#)).await.unwrap();
        assert_eq!(body_json(&response)["message"], r#"Hello, a"b!"#);
    }

    #[tokio::test]
    async fn config_changes_the_greeting() {
        let plugin = Hello::default();
        plugin
            .initialize(json!({ "greeting": "Bonjour" }))
            .await
            .unwrap();
        let response = plugin.handle(get_hello("ana")).await.unwrap();
        assert_eq!(response.body, br#"{"message":"Bonjour, ana!"}"#);
    }

    #[tokio::test]
    async fn empty_config_object_keeps_the_default() {
        let plugin = Hello::default();
        plugin.initialize(json!({})).await.unwrap();
        let response = plugin.handle(get_hello("ana")).await.unwrap();
        assert_eq!(body_json(&response)["message"], "Hello, ana!");
    }

    #[tokio::test]
    async fn non_string_greeting_is_a_config_error() {
        let plugin = Hello::default();
        let err = plugin
            .initialize(json!({ "greeting": 42 }))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(err.message().contains("invalid type"), "{err}");
        // The failed config left the greeting alone.
        let response = plugin.handle(get_hello("ana")).await.unwrap();
        assert_eq!(body_json(&response)["message"], "Hello, ana!");
    }

    #[tokio::test]
    async fn unknown_config_field_is_a_config_error() {
        let plugin = Hello::default();
        let err = plugin
            .initialize(json!({ "greting": "Hi" }))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(err.message().contains("unknown field `greting`"), "{err}");
        for config in [json!("Hi"), json!(["Hi"])] {
            let err = plugin.initialize(config).await.unwrap_err();
            assert_eq!(err.kind(), "config");
            assert!(err.message().contains("config must be a map"), "{err}");
        }
    }

    #[test]
    fn the_schema_says_greeting_is_an_optional_string_and_nothing_else() {
        let schema = Hello::config_schema().expect("hello declares a schema");
        assert_eq!(schema["type"], "object");
        assert_eq!(
            schema["properties"]["greeting"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(schema["additionalProperties"], false);
        assert!(schema.get("required").is_none());
    }

    #[tokio::test]
    async fn echo_returns_body_and_content_type() {
        let plugin = Hello::default();
        let mut request = Request::new("POST", "/echo");
        request.headers.insert("Content-Type", "text/csv");
        request.body = b"a,b\n1,2\n\xff".to_vec();
        let response = plugin.handle(request).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.headers.get("content-type"), Some("text/csv"));
        assert_eq!(response.body, b"a,b\n1,2\n\xff");
    }

    #[tokio::test]
    async fn echo_defaults_to_octet_stream() {
        let plugin = Hello::default();
        let mut request = Request::new("POST", "/echo");
        request.body = vec![0, 1, 2];
        let response = plugin.handle(request).await.unwrap();
        assert_eq!(
            response.headers.get("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(response.body, [0, 1, 2]);
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let plugin = Hello::default();
        for path in ["/", "/nope", "/hello", "/hello/", "/hello/a/b", "/echo/x"] {
            let method = if path.starts_with("/echo") {
                "POST"
            } else {
                "GET"
            };
            let err = plugin.handle(Request::new(method, path)).await.unwrap_err();
            assert_eq!(err.status(), 404, "{method} {path}: {err}");
        }
    }

    #[tokio::test]
    async fn wrong_method_is_405() {
        let plugin = Hello::default();
        let err = plugin
            .handle(Request::new("GET", "/echo"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 405);
        assert_eq!(err.message(), "GET /echo is not served; use POST");
        let err = plugin
            .handle(Request::new("DELETE", "/hello/ana"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 405);
    }
}

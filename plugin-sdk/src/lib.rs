//! # Backworks plugin SDK
//!
//! Everything needed to write a [Backworks](https://example.invalid/backworks) plugin in Rust: the
//! [`BackworksPlugin`] trait, the [`Request`]/[`Response`] types, [`PluginError`], and
//! [`export_plugin!`], which turns an implementation into a `cdylib` the host loads. A plugin author
//! writes no `unsafe`.
//!
//! ```
//! use backworks_plugin_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! #[async_trait]
//! impl BackworksPlugin for Echo {
//!     async fn handle(&self, request: Request) -> PluginResult<Response> {
//!         Ok(Response::new(200).with_body(request.body))
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! Build it with `crate-type = ["cdylib"]` and name the library in `backworks.yaml`. Logging with
//! [`tracing`] (re-exported here) reaches the host's log, tagged with the plugin's name.
//!
//! ## A typed config with a schema
//!
//! A plugin that takes a `config:` declares its type and derives its JSON Schema from it; the host
//! checks the operator's config against the schema before `initialize` (and `backworks validate`
//! without starting the plugin), so a wrong field is reported as `backworks.yaml:14:18: plugin
//! "hello": config field /greeting: 42 is not of type "string"`, and a number or boolean that comes
//! from `${VAR}` arrives typed. The SDK re-exports [`serde`], [`serde_json`] and [`schemars`], so the
//! plugin's `Cargo.toml` lists this crate only; the two `crate` attributes point the derives at the
//! re-exports:
//!
//! ```
//! use backworks_plugin_sdk::prelude::*;
//!
//! #[derive(Debug, Default, Deserialize, JsonSchema)]
//! #[serde(crate = "backworks_plugin_sdk::serde", deny_unknown_fields)]
//! #[schemars(crate = "backworks_plugin_sdk::schemars")]
//! struct Config {
//!     /// The word before the name.
//!     greeting: Option<String>,
//!     /// Served from `${PORT}`: the host turns the variable's text into a number.
//!     port: Option<u16>,
//! }
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! #[async_trait]
//! impl BackworksPlugin for Hello {
//!     fn config_schema() -> Option<Value> {
//!         Some(schema_for::<Config>())
//!     }
//!
//!     async fn initialize(&self, config: Value) -> PluginResult<()> {
//!         let config: Config = parse_config(config)?;
//!         let _ = (config.greeting, config.port);
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Hello);
//! # let schema = Hello::config_schema().unwrap();
//! # assert_eq!(schema["properties"]["port"]["type"], json!(["integer", "null"]));
//! ```
//!
//! (A crate that lists `serde` and `schemars` itself may leave the two attributes out.)
//!
//! The pieces, for the curious: [`abi`] is the C ABI (and `include/backworks_plugin.h` its C twin),
//! and [`metadata`] the self-description the host reads without loading the library.
#![deny(missing_docs)]

pub mod abi;
mod error;
#[doc(hidden)]
pub mod export;
mod host_link;
mod http;
mod logging;
pub mod metadata;
mod plugin;
mod runtime;
mod text;

pub use async_trait::async_trait;
pub use error::{ErrorKind, PluginError, PluginResult, parse_config};
pub use export::{LentRequest, LentResponse, Pairs};
pub use http::{Headers, Health, HookAction, Request, RequestEdit, Response, ResponseEdit};
pub use metadata::{Hooks, PluginMetadata};
pub use plugin::BackworksPlugin;
pub use schemars;
pub use serde;
pub use serde_json;
pub use text::Text;
pub use tracing;

/// The version of this SDK, as written into every plugin's metadata.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The JSON Schema of config type `T`, for [`BackworksPlugin::config_schema`] (see the crate docs
/// for the derive attributes a plugin crate needs).
///
/// ```
/// use backworks_plugin_sdk::prelude::*;
///
/// #[derive(Deserialize, JsonSchema)]
/// #[serde(crate = "backworks_plugin_sdk::serde")]
/// #[schemars(crate = "backworks_plugin_sdk::schemars")]
/// struct Config {
///     limit: u32,
/// }
///
/// let schema = schema_for::<Config>();
/// assert_eq!(schema["required"], json!(["limit"]));
/// assert_eq!(schema["properties"]["limit"]["type"], "integer");
/// ```
pub fn schema_for<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

/// What most plugins need, in one `use`: the trait and its types, `Value` and `json!`, and the
/// derives of a config type (`Deserialize`, `Serialize`, `JsonSchema`) with [`schema_for`].
pub mod prelude {
    pub use crate::{
        BackworksPlugin, Headers, Health, HookAction, Hooks, LentRequest, LentResponse,
        PluginError, PluginResult, Request, RequestEdit, Response, ResponseEdit, Text, async_trait,
        export_plugin, parse_config, schema_for,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
    pub use serde_json::{Value, json};
}

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
pub use http::{Headers, Health, HookAction, Request, Response};
pub use metadata::{Hooks, PluginMetadata};
pub use plugin::BackworksPlugin;
pub use serde_json;
pub use text::Text;
pub use tracing;

/// The version of this SDK, as written into every plugin's metadata.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What most plugins need, in one `use`.
pub mod prelude {
    pub use crate::{
        BackworksPlugin, Headers, Health, HookAction, Hooks, PluginError, PluginResult, Request,
        Response, Text, async_trait, export_plugin, parse_config,
    };
    pub use serde_json::{Value, json};
}

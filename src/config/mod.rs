//! `backworks.yaml`: what the server serves and with which plugins.
//!
//! [`load`] reads a file and returns a checked [`Config`], or a [`ConfigError`] that names
//! the file, line and column of the problem. The work is split data / effects:
//!
//! - `model`: the document as written (serde types, every value with its location);
//! - `interpolate`: `${VAR}`, `${VAR:-default}` and `$$` in string values, after parsing;
//! - `validate` (and `validate/endpoints`): defaults and rules, turning the model into a
//!   [`Config`];
//! - `load`: reading the file and running the steps above;
//! - `checked`: the [`Config`] types and the hook chain of an endpoint;
//! - `search`: finding a plugin's library file;
//! - `schema`: where each value of a plugin's `config:` was written ([`ConfigMap`]), to point
//!   violations of the plugin's config schema at `file:line:column`.
//! - `marketplace`: `type: marketplace` plugins, resolved through `backworks.lock`.
//!
//! ```
//! use std::path::Path;
//!
//! let yaml = "plugins:\n  hello:\n    path: libhello.so\nendpoints:\n  hi:\n    path: /hi/{name}\n";
//! let config = backworks::config::parse_str(yaml, Path::new("backworks.yaml")).unwrap();
//! assert_eq!(config.endpoints[0].plugin, "hello");
//! assert_eq!(config.server.port, 3000);
//!
//! let err = backworks::config::parse_str("endpoints:\n  hi:\n    path: hi\n", Path::new("b.yaml"))
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "b.yaml:3:11: endpoint `hi` has path `hi` that does not start with `/`");
//! ```

mod checked;
mod error;
mod interpolate;
mod load;
mod marketplace;
mod model;
mod schema;
mod search;
mod validate;

pub use checked::{
    AdminConfig, Config, EdgeConfig, EndpointConfig, HealthConfig, PluginConfig, PluginDir,
    PluginKind, ReloadConfig, Secrets, ServerConfig, TrustConfig,
};
pub use error::{ConfigError, ConfigErrorKind};
pub use load::{load, load_unresolved, parse_str, parse_str_with_env};
pub use marketplace::MarketplaceConfig;
pub use schema::ConfigMap;

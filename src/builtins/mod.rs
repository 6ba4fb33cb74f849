//! Plugins compiled into the `backworks` binary, usable with `type: builtin`.

mod static_response;

use std::sync::Arc;

use backworks_plugin_host::{BuiltinPlugin, PluginHost};

pub use static_response::StaticResponse;

/// Registers every built-in plugin on `host`.
pub fn register(host: &PluginHost) {
    host.register_builtin("static", |name| {
        Arc::new(BuiltinPlugin::new(
            name,
            env!("CARGO_PKG_VERSION"),
            "answers with a fixed response from its config",
            StaticResponse::default(),
        ))
    });
}

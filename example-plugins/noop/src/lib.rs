//! A plugin that does nothing: every request gets an empty 200. The benchmarks call it to measure
//! what the host path itself costs.

use backworks_plugin_sdk::prelude::*;

/// Answers every request with an empty 200.
#[derive(Debug, Default)]
pub struct Noop;

#[async_trait]
impl BackworksPlugin for Noop {
    async fn handle(&self, _request: Request) -> PluginResult<Response> {
        Ok(Response::new(200))
    }
}

export_plugin!(
    Noop,
    name = "noop",
    version = "0.1.0",
    description = "answers 200"
);

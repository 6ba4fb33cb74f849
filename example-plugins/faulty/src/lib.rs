//! **Test fixture, not an example to copy**: a plugin that misbehaves on request.

use backworks_plugin_sdk::prelude::*;

/// Misbehaves as configured.
#[derive(Debug, Default)]
pub struct Faulty;

#[async_trait]
impl BackworksPlugin for Faulty {
    async fn handle(&self, _request: Request) -> PluginResult<Response> {
        Ok(Response::new(200))
    }
}

export_plugin!(
    Faulty,
    name = "faulty",
    version = "0.1.0",
    description = "Test fixture: misbehaves on request"
);

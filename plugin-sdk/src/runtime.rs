//! The plugin library's own tokio runtime.
//!
//! Every cdylib links its own copy of tokio, whose thread-locals know nothing of the host's runtime,
//! so a host `Handle` could never be used here. Each plugin library starts one multi-threaded runtime
//! the first time the host calls into it; plugin code polled by the SDK runs inside its context.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

use crate::PluginError;

/// Worker threads of a plugin library's runtime. Calls start on the host's threads; these only run
/// the parts of calls that had to wait, and whatever the plugin spawns.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The library's runtime, started on first use.
pub(crate) fn get() -> Result<&'static Runtime, PluginError> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("backworks-plugin")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin's tokio runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| PluginError::Internal(e.clone()))
}

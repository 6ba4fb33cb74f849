//! # Backworks plugin host
//!
//! Load, check and run Backworks plugins from your own Rust service — the same library the
//! `backworks` server uses.
//!
//! - [`discovery`] lists plugin files in folders without opening them.
//! - [`inspect`] reads a file's metadata and judges its compatibility without running its code.
//! - [`loader`] opens a checked library and creates plugin instances ([`DynamicPlugin`]).
//! - [`Plugin`] is one async trait over built-in and library plugins; [`BuiltinPlugin`] wraps a
//!   [`BackworksPlugin`](backworks_plugin_sdk::BackworksPlugin) compiled into your binary.
//! - [`PluginHost`] keeps every plugin's lifecycle state; [`HookChain`] runs hooks around a call,
//!   with a failure policy per hook ([`OnFailure`]) and observe-only subscriptions ([`Observer`]).
//! - [`public_error`] turns a failed call into the public JSON error body (no internals), and
//!   [`redact`] keeps secrets out of everything the host prints or serves.
//!
//! ```no_run
//! use backworks_plugin_host::{PluginHost, PluginSource, PluginSpec};
//! use backworks_plugin_sdk::Request;
//!
//! # async fn run() -> Result<(), backworks_plugin_host::HostError> {
//! let host = PluginHost::new();
//! let hello = host
//!     .start(&PluginSpec::new(
//!         "hello",
//!         PluginSource::Library("plugins/libhello.so".into()),
//!         serde_json::json!({ "greeting": "Hi" }),
//!     ))
//!     .await?;
//! let mut request = Request::new("GET", "/hello/ana");
//! request.params.push(("name".into(), "ana".into()));
//! let response = hello.handle(request).await;
//! host.shutdown().await;
//! # Ok(()) }
//! ```

pub mod breaker;
mod call_error;
mod call_window;
pub mod discovery;
mod error;
pub mod guard;
pub mod hooks;
pub mod inspect;
mod latency;
pub mod lifecycle;
pub mod loader;
pub mod observe;
mod plugin;
pub mod policy;
pub mod process;
pub mod protocol;
pub mod public_error;
pub mod redact;
mod registry;
pub mod stats;

pub use breaker::{BreakerState, CircuitBreaker};
pub use call_error::CallError;
pub use error::HostError;
pub use guard::Guarded;
pub use hooks::{Hook, HookChain, HookCounts, OnFailure};
pub use latency::{HistogramSnapshot, LATENCY_BOUNDS_SECONDS, LATENCY_BUCKETS, LatencyHistogram};
pub use lifecycle::{EventKind, Lifecycle, LifecycleEvent, PluginState};
pub use loader::{DynamicPlugin, LoadedLibrary};
pub use observe::Observer;
pub use plugin::{BuiltinFactory, BuiltinPlugin, Plugin, PluginInfo, PluginKind, PluginSource};
pub use policy::{CallPolicy, Isolation};
pub use process::{ProcessPlugin, SupervisionSnapshot};
pub use registry::{PluginHost, PluginSpec, PluginStatus};
pub use stats::{PluginStats, StatsSnapshot};

//! # Backworks plugin host
//!
//! Load, check and run Backworks plugins from your own Rust service — the same library the
//! `backworks` server is built on. Everything is reached from the crate root; the modules are
//! private, except [`protocol`] (the wire protocol's host side) and [`sdk`] (the plugin SDK, so
//! this crate is the only dependency an embedder needs).
//!
//! ## Finding and checking plugins
//! [`discover`] lists the library files in folders ([`ScanDir`]) without opening them.
//! [`inspect`] reads a file's metadata section and judges whether this host can load it
//! ([`Inspection`]), **without running any of its code**: no constructor runs, so listing an
//! untrusted folder is safe.
//!
//! ## Signatures
//! A plugin file can carry a minisign signature beside it (`libhello.so.minisig`) whose trusted
//! comment binds the plugin's name, version and SHA-256. [`verify_signature`] checks one against
//! [`TrustedKeys`] and a [`Binding`] over bytes already read; [`check_signature`] gives the
//! [`Verdict`] on a library file and [`check_library`] applies a [`TrustPolicy`] before loading.
//!
//! ## Loading and running
//! [`PluginHost`] is the entry point: [`PluginHost::start`] takes a [`PluginSpec`] (a name, a
//! [`PluginSource`] — a library file, a built-in, or a command — its config, a [`CallPolicy`] and
//! an [`Isolation`]) and loads, checks, creates and initializes the plugin, moving its
//! [`Lifecycle`] through the [`PluginState`]s. What you get back is an `Arc<dyn` [`Plugin`]`>`:
//! one async trait over every kind of plugin ([`DynamicPlugin`] for a library in this process,
//! [`ProcessPlugin`] for one in a child, [`BuiltinPlugin`] for a
//! [`BackworksPlugin`](sdk::BackworksPlugin) compiled into your binary). Its calls take and give
//! the SDK's plain values: [`Request`], [`Response`], [`HookAction`], [`Health`].
//! [`PluginHost::get`] finds a started plugin again; [`PluginHost::statuses`] and
//! [`PluginHost::lifecycle`] report on every plugin, failed ones included.
//! [`load_library`] and [`load_checked`] are the level below, for a library without the host's
//! bookkeeping; [`load_checked_all`] loads many at once, on every core.
//!
//! ## Files you can trust and replace
//! Before a library is loaded its file is checked ([`check_file`], [`FileChecks`]: owner, mode,
//! directory, as ssh's `StrictModes`), read once, passed to the [`LoadPolicy`]'s [`Verifier`] (a
//! signature check), and loaded from a private, immutable copy of exactly those bytes (a sealed
//! `memfd`, or a private directory where that cannot run: [`copy_store`]), or in place when the
//! kernel holds the file unchanged: an immutable file, or one under a read lease, which the host
//! makes its own memory before a writer may change it ([`CopyStore`]). Set the policy with
//! [`PluginHost::set_load_policy`]; process-isolated plugins load the same checked bytes.
//!
//! ## Config schemas
//! A plugin may declare the JSON Schema of its config (a Rust plugin derives it, a C plugin writes
//! it in its metadata, a process plugin sends it in its manifest): [`Plugin::config_schema`].
//! [`PluginHost::start`] checks the config against it before `initialize` ([`check_config`]);
//! a config that fails is [`HostError::ConfigInvalid`], each [`ConfigViolation`] with the JSON
//! pointer of the value and the schema's reason, and the plugin does not start. Values
//! the embedder's config interpolated from the environment ([`PluginSpec::interpolated`]) are
//! typed by the schema first, and never shown in a reason.
//! [`PluginHost::describe_config_schema`] reads a plugin's schema without starting it (a Rust
//! library's in a throwaway child), to check a config ahead of time.
//!
//! ## The call guard
//! Every plugin the host starts sits behind its [`Guarded`] call guard, which applies its
//! [`CallPolicy`] to every call: a deadline (a call past it answers 504 while the plugin's work is
//! dropped), a concurrency limit (excess calls are shed with 503), a response size limit, and a
//! circuit breaker ([`BreakerSettings`], [`BreakerState`]) that stops calling a failing plugin and
//! lets a probe through after a pause. [`PluginHost::guarded`] gives the guard itself, to read its
//! breaker and its [`PluginStats`] (counters and a [`LatencyHistogram`] for your metrics).
//! A plugin whose endpoint never waits (a library with ABI 1.4's `handle_now`, a built-in with
//! `HANDLE_SYNC`) can be called without a future: [`Plugin::handle_now`] (through the guard,
//! [`Guarded::handle_now`]) answers at once, or returns `None` for any other plugin, whose call
//! you then await with [`Plugin::handle`], as the `backworks` server does.
//!
//! ## Hooks and observers
//! A [`HookChain`] runs `before_request` hooks in order and `after_response` hooks in reverse
//! around an endpoint call, each [`Hook`] with its failure policy ([`OnFailure`]: fail closed or
//! open), counted in [`HookCounts`]. An [`Observer`] hands each finished exchange to a plugin off
//! the response path, through a bounded queue that drops rather than waits.
//!
//! ## Process isolation
//! With [`Isolation::Process`] a plugin runs in a supervised child process ([`ProcessPlugin`],
//! settings in [`ProcessSettings`]): a crash, an abort or a hang there costs only its own calls;
//! the child is restarted with backoff, runs with a clean environment and resource limits, and
//! never outlives the host. The child is your own executable started again with [`CHILD_ARG`], so
//! call [`child_main_if_requested`] first thing in `main`. Host and child speak the JSON-RPC
//! [`protocol`] over stdio, which plugins in other languages (Python) speak too.
//!
//! ## Errors and what a client sees
//! [`HostError`] says why a plugin could not be found, inspected, loaded or started; each variant
//! names the file or plugin. [`CallError`] says why a call failed: the plugin's own
//! [`PluginError`] ([`CallError::Plugin`]), or what the host did (timeout, shed, breaker open,
//! crashed, invalid response). [`error_response`] turns a `CallError` into the public JSON error
//! body, which carries no internals, with a [`request_id`]. [`redact`] removes the secrets you
//! registered with [`add_secrets`] (the values `${VAR}` put into configs) from anything you print.
//!
//! ## Example
//! Load every plugin found in a folder and serve one request through `hello`. The
//! `axum_embed` example of this crate (`examples/axum_embed/`) does the same behind an HTTP
//! route.
//!
//! ```no_run
//! use backworks_plugin_host::{
//!     PluginHost, PluginSource, PluginSpec, Request, ScanDir, discover, error_response, inspect,
//! };
//!
//! # async fn run() -> Result<(), backworks_plugin_host::HostError> {
//! let host = PluginHost::new();
//! let found = discover(&[ScanDir { path: "plugins".into(), recursive: false }]);
//! for path in found.files {
//!     // Reads the file's metadata without running its code.
//!     let inspection = inspect(&path)?;
//!     if let Err(why) = &inspection.compatibility {
//!         eprintln!("skipping {}: {why}", path.display());
//!         continue;
//!     }
//!     let name = inspection.metadata.name.clone();
//!     let config = serde_json::json!({ "greeting": "Hi" });
//!     host.start(&PluginSpec::new(&name, PluginSource::Library(path), config)).await?;
//! }
//!
//! let hello = host.get("hello").expect("hello is active");
//! let mut request = Request::new("GET", "/hello/ana");
//! request.params.push(("name".into(), "ana".into()));
//! let response = match hello.handle(request).await {
//!     Ok(response) => response,
//!     Err(error) => error_response("hello", &error, None),
//! };
//! println!("{} {}", response.status, String::from_utf8_lossy(&response.body));
//! host.shutdown().await;
//! # Ok(()) }
//! ```

mod breaker;
mod call_clock;
mod call_error;
mod call_window;
mod config_schema;
mod describe;
mod discovery;
mod error;
mod guard;
mod hooks;
mod inspect;
mod latency;
mod lifecycle;
mod loader;
mod observe;
mod plugin;
mod policy;
mod process;
pub mod protocol;
mod public_error;
mod redact;
mod registry;
mod signature;
mod stats;
mod trust;

// The SDK's types that appear in this crate's API, so an embedder needs one dependency.
pub use backworks_plugin_sdk as sdk;
pub use backworks_plugin_sdk::{
    Health, HookAction, PluginError, Request, RequestEdit, Response, ResponseEdit,
};

// Finding and checking plugin files.
pub use discovery::{Discovered, LIBRARY_EXTENSION, ScanDir, discover};
pub use inspect::{Inspection, inspect, metadata_from_bytes, supported_sdk};

// Signatures: trusted keys and verifying a file's signature before any of its code runs.
pub use signature::{
    SignatureError, TrustedIds, Verdict, Verified, check as check_signature, check_library,
    signature_path, verify as verify_signature,
};
pub use trust::{Binding, KeyError, KeyId, TrustPolicy, TrustedKey, TrustedKeys, sha256_hex};

// Loading and running plugins.
pub use lifecycle::{EventKind, Lifecycle, LifecycleEvent, PluginState};
pub use loader::{
    CopyStore, DynamicPlugin, FileChecks, FileStamp, LoadPolicy, LoadedLibrary, PRIVATE_COPY_ENV,
    Verifier, check_file, copy_store, load as load_library, load_checked, load_checked_all,
};
pub use plugin::{BuiltinFactory, BuiltinPlugin, Plugin, PluginInfo, PluginKind, PluginSource};
pub use registry::{PluginHost, PluginSpec, PluginStatus, Prepared, Retiring};

// Config schemas: a plugin's config checked against the schema it declares, before `initialize`.
pub use config_schema::{ConfigViolation, Interpolated, check_config};

// The call guard and its policy.
pub use breaker::{BreakerSnapshot, BreakerState};
pub use guard::Guarded;
pub use policy::{
    BreakerSettings, CallPolicy, ChildEnv, Isolation, ProcessSettings, ResourceLimits,
    RestartPolicy,
};

// Hooks and observers.
pub use hooks::{Hook, HookChain, HookCounts, OnFailure};
pub use observe::{Observer, ObserverCounts};

// Process isolation.
pub use process::{
    CHILD_ARG, ChildState, Containment, ProcessPlugin, SupervisionSnapshot, child_main_if_requested,
};

// Metrics.
pub use latency::{HistogramSnapshot, LATENCY_BOUNDS_SECONDS, LatencyHistogram};
pub use stats::{ErrorCounts, PluginStats, StatsSnapshot, error_kinds};

// Errors and what the host shows of them.
pub use call_clock::CallClock;
pub use call_error::CallError;
pub use error::HostError;
pub use public_error::{error_response, request_id};
pub use redact::{add_secrets, redact};

//! # Backworks plugin testkit
//!
//! Test a Backworks plugin the way the host runs it. Add this crate as a dev-dependency of your
//! plugin; `cargo test` then loads the library it just built **through the real host loader**
//! (file checks, metadata read without running it, ABI and SDK checks, the call guard) — in
//! this process, or in a child process as `isolation: process` does — and lets you:
//!
//! - **call it** with [`TestHost`]: configure, send a [`Request`](sdk::Request), read the
//!   [`Response`](sdk::Response), call its hooks, its health check and its shutdown;
//! - **run the conformance battery** with [`Conformance`]: every property a host relies on,
//!   each reported as a [`Check`] passed, failed (with what to do about it) or skipped, in a
//!   [`Report`].
//!
//! The calls are synchronous: the testkit owns its tokio runtime, so plain `#[test]` functions
//! work. Every call has a deadline (10 s by default), so a plugin that hangs fails a check
//! instead of hanging `cargo test`.
//!
//! ## The battery
//!
//! | check | passes when |
//! |---|---|
//! | `metadata` | the file's metadata (read without loading it) is one this host loads: ABI major, SDK family, `panic = "unwind"` in process, a name, a semver version |
//! | `initialize` | the plugin starts and accepts the good config |
//! | `bad config` | a fresh instance refuses each bad config with an error (never a panic, a crash or a hang) |
//! | `endpoint M /p` | each declared endpoint answers with a valid status below 500 |
//! | `hook …` | each hook the metadata declares answers on a sample request |
//! | `health` | `health_check` reports healthy or degraded, in time |
//! | `concurrency` | N calls at once all answer |
//! | `cancellation` | calls dropped mid-flight leave a plugin that still answers |
//! | `hostile input` | a huge header, a non-UTF-8 body, an empty path, a 1 MiB body… come back as answers or errors, never a panic, a hang or a crash; then the plugin still serves |
//! | `memory` | the resident memory of a process running the plugin alone does not grow round after round of calls |
//! | `shutdown` | `shutdown` succeeds in time |
//!
//! `backworks plugin check LIB | -- COMMAND…` runs the same battery from the command line, for a
//! plugin in any language.
//!
//! ## Example
//!
//! In `tests/plugin.rs` of a plugin crate whose `Cargo.toml` has
//! `crate-type = ["cdylib", "rlib"]`:
//!
//! ```no_run
//! use backworks_plugin_testkit::{Conformance, TestHost, built_library};
//! use backworks_plugin_testkit::sdk::{Request, serde_json::json};
//!
//! #[test]
//! fn greets_by_name() -> Result<(), Box<dyn std::error::Error>> {
//!     let host = TestHost::library(built_library!())
//!         .config(json!({"greeting": "Hi"}))
//!         .start()?;
//!     let response = host.call(Request::new("GET", "/hello/ana"))?;
//!     assert_eq!(response.status, 200);
//!     assert_eq!(response.body, br#"{"message":"Hi, ana!"}"#);
//!     host.shutdown()?;
//!     Ok(())
//! }
//!
//! #[test]
//! fn conforms() {
//!     Conformance::library(built_library!())
//!         .config(json!({"greeting": "Hi"}))
//!         .bad_config(json!({"greeting": 42}))
//!         .endpoint("GET", "/hello/ana")
//!         .run()
//!         .assert_passed();
//! }
//! # fn main() {}
//! ```
//!
//! ## Process isolation
//!
//! [`TestHostBuilder::isolated`] and [`Conformance::isolated`] run a library in a child process,
//! which is the `backworks` executable's plugin runner (the `memory` check of a library in
//! process uses it too, to measure the library alone): set `BACKWORKS_BIN` or put `backworks`
//! on `PATH` (or name it with `.runner(path)`). A command plugin
//! ([`TestHost::command`], [`Conformance::command`]) uses the same runner when there is one and
//! is started directly otherwise.

#![deny(missing_docs)]

mod battery;
mod host;
mod locate;
mod report;
mod subject;

/// The plugin SDK, as the host re-exports it: [`Request`](sdk::Request),
/// [`Response`](sdk::Response), `serde_json`, …
pub use backworks_plugin_host::sdk;
/// The host's errors and plugin trait, as [`TestHost`] returns them.
pub use backworks_plugin_host::{CallError, HostError, Plugin};

pub use battery::Conformance;
pub use host::{TestHost, TestHostBuilder};
pub use locate::{LocateError, find_built_library, library_file_name};
pub use report::{Check, Outcome, Report};
pub use subject::{DEFAULT_DEADLINE, RUNNER_ENV};

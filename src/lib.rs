//! The Backworks server: configuration, HTTP serving, built-in plugins and the command line.
//!
//! - [`config`] reads and checks `backworks.yaml`.
//! - [`server`] starts the configured plugins and serves their endpoints.
//! - [`builtins`] are the plugins compiled into the binary.
//! - [`distribution`] packs, publishes, checks and installs plugin packages (`backworks.lock`).
//! - [`cli`] implements the `backworks` commands.
//! - [`logging`] is the log's writer, which keeps secrets out of the log.

pub mod builtins;
pub mod cli;
pub mod config;
pub mod distribution;
pub mod logging;
pub mod server;

//! The Backworks server: configuration, HTTP serving and plugin management commands.

pub mod config;

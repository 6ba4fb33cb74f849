//! Integration tests: the real `backworks` binary and the real plugin libraries, over HTTP.

mod cli;
mod loader;
mod server;
mod support;

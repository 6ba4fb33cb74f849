//! Integration tests: the real `backworks` binary and the real plugin libraries, over HTTP.

mod authoring;
mod child;
mod cli;
mod distribution;
mod edge;
mod embed;
mod faults;
mod files;
mod idle;
mod isolation;
mod lending;
mod loader;
mod observe;
mod process_children;
mod process_crashes;
mod process_python;
mod process_unavailable;
mod python;
mod reload;
mod schema;
mod seams;
mod server;
mod startup;
mod support;
mod testkit;
mod trust;

//! Integration tests: the real `backworks` binary and the real plugin libraries, over HTTP.

mod cli;
mod edge;
mod embed;
mod faults;
mod isolation;
mod loader;
mod observe;
mod process;
mod python;
mod seams;
mod server;
mod support;

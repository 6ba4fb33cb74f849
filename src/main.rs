//! `backworks`: serve `backworks.yaml` through plugins, and manage plugins.

use std::io::IsTerminal as _;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use backworks::cli::{Cli, LogFormat, run};

fn main() {
    // `backworks __plugin-child ...` is the runner of a process-isolated plugin: it never returns.
    backworks_plugin_host::child_main_if_requested();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(backworks::logging::RedactingStderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(error) => {
            let message = format!("{error:#}");
            eprintln!("error: {}", backworks_plugin_host::redact(&message));
            1
        }
    };
    std::process::exit(code);
}

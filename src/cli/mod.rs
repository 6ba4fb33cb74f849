//! The `backworks` command line.

mod plugin;
mod reload;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use backworks_plugin_host::PluginHost;
use clap::{Parser, Subcommand, ValueEnum};

/// An HTTP API host whose behaviour comes from plugins.
#[derive(Debug, Parser)]
#[command(name = "backworks", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the endpoints of a config file through its plugins.
    Serve {
        /// The config file.
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// Listen on this port instead of the config's.
        #[arg(long)]
        port: Option<u16>,
        /// Listen on this address instead of the config's.
        #[arg(long)]
        host: Option<IpAddr>,
        /// Serve the admin API on this port instead of the config's (`server.admin.port`).
        #[arg(long)]
        admin_port: Option<u16>,
    },
    /// Check a config file and the plugin files it names, without running any plugin.
    Validate {
        /// The config file.
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
    },
    /// Asks a running server to reload its config and plugins (its admin API's
    /// `POST /_backworks/reload`); exit code 1 when the reload is refused, 2 when no server answers.
    Reload {
        /// The config file (for the admin API's address and token).
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// The admin API, e.g. `http://127.0.0.1:9090` (default: `server.admin` of the config).
        #[arg(long)]
        admin_url: Option<String>,
        /// The admin API's bearer token (default: `server.admin.token` of the config).
        #[arg(long, env = "BACKWORKS_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the reload report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage plugins.
    Plugin {
        /// What to do with plugins.
        #[command(subcommand)]
        command: PluginCommand,
    },
}

/// The `plugin` commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugins: their live state from a running server's admin API, or, when no server
    /// answers, the configured plugins and the plugin files in `plugin_dirs` (none loaded).
    List {
        /// The config file.
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The admin API to ask, e.g. `http://127.0.0.1:9090` (default: `server.admin` of the
        /// config).
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Show a plugin file's metadata and whether this host can load it, without loading it.
    Inspect {
        /// The plugin library.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve {
            config,
            port,
            host,
            admin_port,
        } => {
            let mut config = crate::config::load(&config)?;
            backworks_plugin_host::add_secrets(config.secrets.0.iter().cloned());
            if let Some(port) = port {
                config.server.port = port;
            }
            if let (Some(port), Some(admin)) = (admin_port, config.server.admin.as_mut()) {
                admin.port = port;
            }
            let ip: IpAddr = match host {
                Some(ip) => ip,
                None => config.server.host.parse().with_context(|| {
                    format!(
                        "{}: server.host `{}` is not an IP address",
                        config.source.display(),
                        config.server.host
                    )
                })?,
            };
            let addr = SocketAddr::new(ip, config.server.port);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async {
                let host = Arc::new(PluginHost::new());
                host.set_load_policy(crate::server::load_policy(&config));
                crate::builtins::register(&host);
                crate::server::serve(config, addr, host).await
            })?;
            Ok(0)
        }
        Command::Validate { config } => plugin::validate(&config),
        Command::Reload {
            config,
            admin_url,
            token,
            json,
        } => reload::reload(&config, admin_url.as_deref(), token.as_deref(), json),
        Command::Plugin { command } => match command {
            PluginCommand::List {
                config,
                json,
                admin_url,
            } => plugin::list(&config, json, admin_url.as_deref()),
            PluginCommand::Inspect { file, json } => plugin::inspect(&file, json),
        },
    }
}

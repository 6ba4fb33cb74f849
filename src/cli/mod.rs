//! The `backworks` command line.

mod check;
mod new;
mod package;
mod plugin;
mod reload;
mod sign;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// Create a plugin project that builds and passes its tests as generated: a Rust crate (with
    /// the testkit), a Python script, or a C library, each with an endpoint, a hook, a config
    /// schema, tests and a README.
    New {
        /// The plugin's name: lower-case letters, digits and `-` (also the crate's name).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value_t = new::Lang::Rust)]
        lang: new::Lang,
        /// The folder to create (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
        /// A one-line description.
        #[arg(long)]
        description: Option<String>,
        /// A Backworks source checkout whose plugin-sdk and plugin-testkit the crate depends on
        /// by path (default: the checkout this binary was built from, when it is still there).
        #[arg(long, conflicts_with = "sdk_registry")]
        sdk_path: Option<PathBuf>,
        /// Depend on the SDK and testkit by version, from the registry.
        #[arg(long)]
        sdk_registry: bool,
    },
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
    /// Show a plugin file's metadata, whether this host can load it and its signature verdict,
    /// without loading it.
    Inspect {
        /// The plugin library.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The config whose `trust:` keys judge the signature (when the file exists).
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
    },
    /// Create a minisign key pair for signing plugins (the same files as `minisign -G`).
    Keygen {
        /// The public key file to write.
        #[arg(short = 'p', long = "public-key", default_value = sign::DEFAULT_PUBLIC_KEY)]
        public_key: PathBuf,
        /// The secret key file to write (default: ~/.minisign/minisign.key).
        #[arg(short = 's', long = "secret-key")]
        secret_key: Option<PathBuf>,
        /// Do not protect the secret key with a password (for automation and tests).
        #[arg(short = 'W')]
        unencrypted: bool,
        /// Overwrite existing key files.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Sign a plugin library: writes `LIB.minisig`, whose trusted comment binds the plugin's name,
    /// version and SHA-256 (`minisign -V` verifies it).
    Sign {
        /// The plugin library.
        file: PathBuf,
        /// The secret key (default: ~/.minisign/minisign.key).
        #[arg(short = 's', long = "secret-key")]
        secret_key: Option<PathBuf>,
        /// Write the signature here instead of `LIB.minisig`.
        #[arg(short = 'x', long)]
        output: Option<PathBuf>,
    },
    /// Verify a plugin library's signature (`LIB.minisig`) and its binding to the plugin, with
    /// one public key or the `trust:` keys of a config. Exit 1 when it is not valid.
    Verify {
        /// The plugin library.
        file: PathBuf,
        /// A public key file (`minisign.pub`).
        #[arg(short = 'p', long = "public-key", conflicts_with_all = ["public_key_string", "config"])]
        public_key: Option<PathBuf>,
        /// A public key, base64 (`RWQ…`).
        #[arg(short = 'P', long = "public-key-string", conflicts_with = "config")]
        public_key_string: Option<String>,
        /// The config whose `trust.keys` are trusted; the plugin entry of this file gives the
        /// name expected (default when no key is given: backworks.yaml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the conformance battery against a plugin, loaded as `serve` loads it: metadata,
    /// initialize with a good and a bad config, endpoints, hooks, health, concurrency,
    /// cancellation, hostile input, memory, shutdown. Exit 1 when a check fails.
    Check(check::CheckArgs),
    /// Pack a plugin library (or script) into a signed package, `NAME-VERSION-TARGET.bwpkg`.
    Pack(PackArgs),
    /// Copy a package into an index folder and add its line to the index.
    Publish {
        /// The package.
        package: PathBuf,
        /// The index folder.
        #[arg(long)]
        index: PathBuf,
        /// Where the index folder is served, to write absolute URLs (default: relative ones).
        #[arg(long)]
        url_base: Option<String>,
    },
    /// Install a package from a file, an http(s) URL or the index (`NAME[@VERSION_REQ]`), checked
    /// against the config's trusted keys, into the first of `plugin_dirs`; recorded in
    /// `backworks.lock`. Without SOURCE: every `type: marketplace` plugin not installed yet.
    Install {
        /// A `.bwpkg` file, an http(s) URL, or `NAME[@VERSION_REQ]`.
        source: Option<String>,
        /// The config file (trusted keys, plugin folder, index, lock file beside it).
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// The index, a folder or an http(s) URL (default: `marketplace.index` of the config).
        #[arg(long)]
        index: Option<String>,
        /// The package file's SHA-256, checked before anything else (a file or URL source).
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Install the newest version in the index that this host loads and the config's `version:`
    /// allows, of NAME or of every installed plugin.
    Update {
        /// The plugin (default: every plugin in `backworks.lock`).
        name: Option<String>,
        /// The config file.
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// The index (default: `marketplace.index` of the config).
        #[arg(long)]
        index: Option<String>,
    },
    /// Delete an installed plugin and its `backworks.lock` entry.
    Remove {
        /// The plugin.
        name: String,
        /// The config file.
        #[arg(short, long, default_value = "backworks.yaml")]
        config: PathBuf,
        /// Remove it even though the config still names it.
        #[arg(long)]
        force: bool,
    },
}

/// `plugin pack`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The plugin library, or a script (then `--name` and `--version` are needed).
    file: PathBuf,
    /// The secret key (default: ~/.minisign/minisign.key).
    #[arg(short = 's', long = "secret-key", alias = "key")]
    secret_key: Option<PathBuf>,
    /// The README to include (default: one made from the plugin's metadata).
    #[arg(long)]
    readme: Option<PathBuf>,
    /// The plugin's config schema (JSON Schema), included as `schema.json`.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// The target triple (default: this host's; `any` for a script).
    #[arg(long)]
    target: Option<String>,
    /// Write the package into this folder.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// A script's plugin name.
    #[arg(long)]
    name: Option<String>,
    /// A script's version.
    #[arg(long)]
    version: Option<String>,
    /// A script's command line, e.g. `python3 report.py` (default: that for `.py`, else the
    /// script itself).
    #[arg(long)]
    command: Option<String>,
    /// Another file to ship beside the plugin, e.g. a script's module (repeatable).
    #[arg(long)]
    include: Vec<PathBuf>,
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
            crate::server::reserve_descriptor_table(config.plugins.len());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async {
                let host = Arc::new(PluginHost::new());
                host.set_load_policy(crate::server::load_policy(&config));
                host.set_trust_policy(config.trust.signatures.clone());
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
            PluginCommand::New {
                name,
                lang,
                path,
                description,
                sdk_path,
                sdk_registry,
            } => new::run(&new::NewPlugin {
                name,
                lang,
                path,
                description,
                sdk: match (sdk_path, sdk_registry) {
                    (Some(root), _) => Some(new::SdkSource::Checkout(root)),
                    (None, true) => Some(new::SdkSource::Registry),
                    (None, false) => None,
                },
            }),
            PluginCommand::List {
                config,
                json,
                admin_url,
            } => plugin::list(&config, json, admin_url.as_deref()),
            PluginCommand::Inspect { file, json, config } => plugin::inspect(&file, json, &config),
            PluginCommand::Keygen {
                public_key,
                secret_key,
                unencrypted,
                force,
            } => sign::keygen(
                &public_key,
                &secret_key.unwrap_or_else(sign::default_secret_key),
                unencrypted,
                force,
            ),
            PluginCommand::Sign {
                file,
                secret_key,
                output,
            } => sign::sign(
                &file,
                &secret_key.unwrap_or_else(sign::default_secret_key),
                output.as_deref(),
            ),
            PluginCommand::Verify {
                file,
                public_key,
                public_key_string,
                config,
            } => {
                let keys = match (&public_key, &public_key_string, &config) {
                    (Some(path), _, _) => sign::KeySource::File(path),
                    (_, Some(key), _) => sign::KeySource::Base64(key),
                    (_, _, Some(config)) => sign::KeySource::Config(config),
                    _ => sign::KeySource::Config(Path::new("backworks.yaml")),
                };
                sign::verify(&file, keys)
            }
            PluginCommand::Check(args) => check::run(args),
            PluginCommand::Pack(args) => {
                let options = crate::distribution::PackOptions {
                    readme: args.readme,
                    schema: args.schema,
                    target: args.target,
                    name: args.name,
                    version: args.version,
                    command: args
                        .command
                        .map(|c| c.split_whitespace().map(str::to_owned).collect()),
                    include: args.include,
                };
                let secret = args.secret_key.unwrap_or_else(sign::default_secret_key);
                package::pack(&args.file, &options, &secret, &args.out)
            }
            PluginCommand::Publish {
                package,
                index,
                url_base,
            } => package::publish(&package, &index, url_base.as_deref()),
            PluginCommand::Install {
                source,
                config,
                index,
                sha256,
            } => package::install(
                source.as_deref(),
                &config,
                index.as_deref(),
                sha256.as_deref(),
            ),
            PluginCommand::Update {
                name,
                config,
                index,
            } => package::update(name.as_deref(), &config, index.as_deref()),
            PluginCommand::Remove {
                name,
                config,
                force,
            } => package::remove(&name, &config, force),
        },
    }
}

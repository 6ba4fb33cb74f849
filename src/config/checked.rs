//! The checked configuration: what the server and the plugin commands consume.
//!
//! A [`Config`] only comes out of [`super::load`] or [`super::parse_str`], after every
//! string has been interpolated and every rule checked, so code using it needs no further
//! validation: every endpoint names a configured plugin, every hook name is valid, no two
//! endpoints claim the same route.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use backworks_plugin_host::{CallPolicy, Isolation};
use backworks_plugin_host::{FileChecks, OnFailure};
use backworks_plugin_sdk::Hooks;

/// A checked `backworks.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from (as given to [`super::load`]).
    pub source: PathBuf,
    /// The directory relative paths are resolved against: the file's directory.
    pub base_dir: PathBuf,
    /// `server:`.
    pub server: ServerConfig,
    /// `plugin_dirs:`, in file order, resolved against [`Config::base_dir`].
    pub plugin_dirs: Vec<PluginDir>,
    /// `plugins:`, in file order (the default hook order for equal `order` values).
    pub plugins: Vec<PluginConfig>,
    /// `endpoints:`, in file order.
    pub endpoints: Vec<EndpointConfig>,
    /// `health:`: how the health monitor polls the plugins.
    pub health: HealthConfig,
    /// `trust:`: what a plugin file must pass before it is loaded.
    pub trust: TrustConfig,
    /// Values the environment put into plugin configs; never printed.
    pub secrets: Secrets,
    /// `reload:`: how a running server takes a changed config or plugin file.
    pub reload: ReloadConfig,
    /// `marketplace:`: the index `plugin install NAME` and `plugin update` read.
    pub marketplace: super::marketplace::MarketplaceConfig,
}

/// How a running server reloads (`backworks reload`, `SIGHUP`, or watching the files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Reload by itself when the config file or a plugin file changes content. Default `false`.
    pub watch: bool,
    /// How often the watched files are read for a change of content. Default 1 s.
    pub watch_interval: Duration,
    /// How long a replaced generation may take to finish its calls before it is shut down
    /// anyway. Default 30 s.
    pub drain_timeout: Duration,
    /// How many generations of one plugin may be retired before a further reload of it is
    /// refused (libraries are never unloaded, so each costs its mapping). Default 32.
    pub max_generations: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            watch_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            max_generations: 32,
        }
    }
}

/// Values from the environment (`${VAR}` in a plugin's `config:`) that the host must never print
/// or serve: register them with [`backworks_plugin_host::add_secrets`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

/// `trust:`: what a plugin file must pass before it is loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustConfig {
    /// `trust.file_checks`: owner, mode and directory of each library (see
    /// `docs/operations.md`, "Plugin files"). Strict by default.
    pub file_checks: FileChecks,
    /// `trust.keys` and `trust.require_signatures`: the keys plugin signatures are checked
    /// against, and whether a library without a valid signature is refused.
    pub signatures: backworks_plugin_host::TrustPolicy,
}

/// Where the HTTP server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to bind; default `127.0.0.1`.
    pub host: String,
    /// Port to bind; default `3000`. `0` asks the system for a free port.
    pub port: u16,
    /// Requests with a larger body are answered 413 before any plugin runs. Default 2 MiB.
    pub max_request_body: usize,
    /// The admin listener (`/_backworks/*`, `/metrics`); `None` when turned off.
    pub admin: Option<AdminConfig>,
    /// Timeouts, the connection cap and the listen backlog of both listeners.
    pub edge: EdgeConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 3000,
            max_request_body: 2 * 1024 * 1024,
            admin: Some(AdminConfig::default()),
            edge: EdgeConfig::default(),
        }
    }
}

/// How the HTTP edge treats connections (`server.*_timeout_ms`, `max_connections`, `backlog`).
/// The defaults are nginx's (`client_header_timeout`, `keepalive_timeout`, `client_body_timeout`);
/// see `docs/operations.md`, "The HTTP edge".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// From accept (or from the first byte of a later request) to the end of the request head;
    /// past it the connection is closed. Default 60 s.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit between requests. Default 75 s.
    pub idle_timeout: Duration,
    /// The longest pause between two reads of a request body; past it the request is answered
    /// 408. Default 60 s.
    pub body_read_timeout: Duration,
    /// Open connections on the public listener, at most; the server lowers it to fit the
    /// descriptor limit. Default 10,000.
    pub max_connections: usize,
    /// The listen backlog of both listeners (the kernel caps it at `net.core.somaxconn`).
    /// Default 4096.
    pub backlog: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            backlog: 4096,
        }
    }
}

/// The admin API's own listener, off the public port.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to bind; default `127.0.0.1`.
    pub host: String,
    /// Port to bind; default `9090`. `0` asks the system for a free port.
    pub port: u16,
    /// When set, every admin request must carry `Authorization: Bearer <token>`. Required when
    /// `host` is not a loopback address.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 9090,
            token: None,
        }
    }
}

impl fmt::Debug for AdminConfig {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the health monitor polls each plugin's `health_check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between two polls of a plugin. Default 10 s.
    pub interval: Duration,
    /// A check that takes longer counts as Unhealthy. Default 2 s.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A directory searched for plugin libraries named by bare file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDir {
    /// The directory, resolved against [`Config::base_dir`].
    pub path: PathBuf,
    /// Whether subdirectories are searched too.
    pub recursive: bool,
}

/// Where a plugin's code comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// Compiled into the host, found by name.
    Builtin,
    /// A dynamic library.
    External {
        /// The path as written (after interpolation); see [`Config::resolve_plugin_path`].
        path: PathBuf,
    },
    /// A program speaking the wire protocol in a child process (`command:`); always
    /// process-isolated. Relative program paths resolve against [`Config::base_dir`] when such a
    /// file exists there, otherwise through `PATH`.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// `type: marketplace`: the version installed for it (`backworks.lock`) that meets a semver
    /// requirement. [`super::load`] resolves it into `External` or `Command`, so only a config
    /// from [`super::parse_str`] or [`super::load_unresolved`] holds one.
    Marketplace {
        /// `version:`, e.g. `^1.2`.
        version: semver::VersionReq,
        /// Where `version:` is written, for errors.
        line: u64,
        /// Its column.
        column: u64,
    },
}

/// One entry of `plugins:`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// The plugin's name: its key in `plugins:`, matching `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Built in, or loaded from a file.
    pub kind: PluginKind,
    /// `false` keeps the plugin unloaded; its endpoints answer 503. Default `true`.
    pub enabled: bool,
    /// The plugin's own configuration, interpolated; `Null` when absent.
    pub config: serde_json::Value,
    /// Where each value of `config` was written, and which came from `${VAR}`: to type them by
    /// the plugin's config schema and to point its violations at `file:line:column`.
    pub config_map: super::ConfigMap,
    /// Whether the plugin takes part in the `before_request` hook point, and what its failure
    /// does (default [`OnFailure::Reject`]).
    pub before_request: Option<OnFailure>,
    /// Whether the plugin takes part in the `after_response` hook point, and what its failure
    /// does (default [`OnFailure::Skip`]).
    pub after_response: Option<OnFailure>,
    /// Whether the plugin observes responses (`hooks: [observe]`): its `after_response` is called
    /// after the response has left, off the response path, and its answer is thrown away.
    pub observe: bool,
    /// The length of its observe queue; a full queue drops exchanges (counted). Default 1024.
    pub observe_queue: usize,
    /// Position in the default hook chain: lower runs first, ties keep file order.
    pub order: i32,
    /// An important plugin that fails to start stops the server's start-up; `/ready` needs it
    /// Active and Healthy. Default `false`.
    pub important: bool,
    /// Timeout, concurrency limit, response limit and circuit breaker for its calls.
    pub policy: CallPolicy,
    /// In the host process (default) or in a supervised child (`isolation: process`).
    pub isolation: Isolation,
    /// `workers:`, for a library run in process: the threads its own async runtime runs waiting
    /// calls on, started when it first waits. `None`: the plugin's default (one).
    pub workers: Option<std::num::NonZeroU32>,
}

impl PluginConfig {
    /// Whether the plugin takes part in any hook point.
    pub fn has_hooks(&self) -> bool {
        self.before_request.is_some() || self.after_response.is_some() || self.observe
    }

    /// The hook points its entry subscribes it to, as written in `hooks:`.
    pub fn hook_points(&self) -> Vec<&'static str> {
        let points = [
            (self.before_request.is_some(), "before_request"),
            (self.after_response.is_some(), "after_response"),
            (self.observe, "observe"),
        ];
        points.into_iter().filter(|p| p.0).map(|p| p.1).collect()
    }

    /// The hooks the host calls on this plugin (an observer's calls are `after_response` calls).
    pub fn called_hooks(&self) -> Hooks {
        let before = match self.before_request {
            Some(_) => Hooks::BEFORE_REQUEST,
            None => Hooks::NONE,
        };
        let after = match self.after_response.is_some() || self.observe {
            true => Hooks::AFTER_RESPONSE,
            false => Hooks::NONE,
        };
        before.and(after)
    }
}

/// One entry of `endpoints:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint's name: its key in `endpoints:`.
    pub name: String,
    /// The route, e.g. `/hello/{name}`: starts with `/`, parameters are whole `{ident}`
    /// segments.
    pub path: String,
    /// Upper-case HTTP methods, without duplicates; at least one. Default `[GET]`.
    pub methods: Vec<String>,
    /// The plugin serving it (resolved when the file leaves it out).
    pub plugin: String,
    /// When set, exactly these hook plugins run for this endpoint, in this order; when
    /// `None`, every plugin with hooks runs (see [`Config::hook_chain`]).
    pub hooks: Option<Vec<String>>,
}

impl Config {
    /// The plugin named `name`, if configured.
    pub fn plugin(&self, name: &str) -> Option<&PluginConfig> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// The plugins whose hooks run around `endpoint`, in `before_request` order
    /// (`after_response` hooks conventionally run in reverse). Disabled plugins are left out.
    ///
    /// When the endpoint lists `hooks`, exactly those plugins, in that order. Otherwise
    /// every plugin with a non-empty `hooks` list, sorted by `order` and then file order.
    pub fn hook_chain(&self, endpoint: &EndpointConfig) -> Vec<&PluginConfig> {
        match &endpoint.hooks {
            Some(names) => names
                .iter()
                .filter_map(|name| self.plugin(name))
                .filter(|p| p.enabled)
                .collect(),
            None => {
                let mut chain: Vec<&PluginConfig> = self
                    .plugins
                    .iter()
                    .filter(|p| p.enabled && p.has_hooks())
                    .collect();
                // A stable sort: equal orders keep file order.
                chain.sort_by_key(|p| p.order);
                chain
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, order: i32, hooks: bool, enabled: bool) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            kind: PluginKind::Builtin,
            enabled,
            config: serde_json::Value::Null,
            config_map: Default::default(),
            before_request: hooks.then_some(OnFailure::Reject),
            after_response: None,
            observe: false,
            observe_queue: 1024,
            order,
            important: false,
            policy: CallPolicy::default(),
            isolation: Isolation::InProcess,
            workers: None,
        }
    }

    fn endpoint(hooks: Option<&[&str]>) -> EndpointConfig {
        EndpointConfig {
            name: "e".into(),
            path: "/".into(),
            methods: vec!["GET".into()],
            plugin: "h".into(),
            hooks: hooks.map(|h| h.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn config(plugins: Vec<PluginConfig>) -> Config {
        Config {
            source: "b.yaml".into(),
            base_dir: ".".into(),
            server: ServerConfig::default(),
            plugin_dirs: vec![],
            plugins,
            endpoints: vec![],
            health: HealthConfig::default(),
            trust: TrustConfig::default(),
            secrets: Secrets::default(),
            reload: ReloadConfig::default(),
            marketplace: Default::default(),
        }
    }

    fn names(chain: Vec<&PluginConfig>) -> Vec<&str> {
        chain.into_iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn default_chain_sorts_by_order_then_file_order() {
        let c = config(vec![
            plugin("h", 0, false, true),
            plugin("late", 10, true, true),
            plugin("a", 0, true, true),
            plugin("off", -5, true, false),
            plugin("b", 0, true, true),
            plugin("first", -1, true, true),
        ]);
        assert_eq!(
            names(c.hook_chain(&endpoint(None))),
            ["first", "a", "b", "late"]
        );
    }

    #[test]
    fn explicit_chain_keeps_listed_order_and_drops_disabled() {
        let c = config(vec![
            plugin("a", 0, true, true),
            plugin("b", -1, true, true),
            plugin("off", 0, true, false),
        ]);
        let e = endpoint(Some(&["a", "off", "b"]));
        assert_eq!(names(c.hook_chain(&e)), ["a", "b"]);
        assert!(c.hook_chain(&endpoint(Some(&[]))).is_empty());
    }

    #[test]
    fn server_defaults() {
        let s = ServerConfig::default();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 3000));
    }
}

//! Hot reload: re-read `backworks.yaml`, start a new generation of what changed beside what
//! serves, swap the routers atomically, and drain the old generation.
//!
//! A reload is triggered by `POST /_backworks/reload` (what `backworks reload` sends), by `SIGHUP`,
//! or, with `reload.watch`, by a change of content of the config file or a plugin file. One runs at
//! a time. It:
//!
//! 1. loads and checks the whole config; `server:` and `health:` changes are reported, and wait
//!    for a restart;
//! 2. compares each plugin with the one serving: its entry (config, policy, hooks, isolation,
//!    path) and whether its library file now holds other bytes than the copy that generation
//!    runs (a `stat` for a file as it was loaded; one touched or rewritten is compared byte for
//!    byte with the copy). Unchanged plugins keep their instance and
//!    state; added and changed ones get a new generation ([`PluginHost::start_next`]) beside the
//!    serving one; removed and disabled ones are retired;
//! 3. refuses the whole reload — nothing changes, the old generation goes on serving — when the
//!    config is invalid, a new generation fails to start, an important one is not healthy, or a
//!    plugin has reached `reload.max_generations`;
//! 4. commits the new generations, builds the new routers and swaps them in: a request runs start
//!    to end on the routers (and so the plugins) it started on, because it holds them;
//! 5. drains: once no request holds the old routers and the retired generations have no call in
//!    flight (or `reload.drain_timeout` passed), they get `shutdown`. Their libraries stay mapped
//!    (libraries are never unloaded), which is why generations are bounded.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use backworks_plugin_host::{FileStamp, Health, Plugin, PluginHost, PluginState, Retiring};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::edge::Routes;
use super::{Carry, Served, health, plugin_source, plugin_spec, routers};
use crate::config::{Config, PluginConfig, PluginKind};

/// The outcome of one reload, as the admin API and `backworks reload` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Whether the new config serves now.
    pub ok: bool,
    /// The serving generation after the reload (1 at start; one more per successful reload).
    pub generation: u64,
    /// Plugins started for the first time.
    pub added: Vec<String>,
    /// Plugins that got a new generation (entry or file content changed).
    pub changed: Vec<String>,
    /// Plugins retired (removed or disabled).
    pub removed: Vec<String>,
    /// Plugins that kept their instance and state.
    pub unchanged: Vec<String>,
    /// Why the reload was refused; empty when it succeeded.
    pub errors: Vec<String>,
    /// What the reload did not apply.
    pub warnings: Vec<String>,
    /// When it ended, RFC 3339.
    pub at: String,
}

/// What serves now, and what a reload compares against.
#[derive(Debug)]
struct Serving {
    config: Config,
    carry: Carry,
    generation: u64,
}

/// The library plugins of `config` to load again because their file changed: it now holds
/// other bytes than the generation serving runs a copy of, or the config resolves the plugin to
/// another file, or to none (see [`PluginHost::library_changed`]). Read on the blocking pool;
/// a file as it stood when loaded costs a `stat`.
async fn libraries_changed(host: &Arc<PluginHost>, config: &Config) -> HashSet<String> {
    let (host, config) = (host.clone(), config.clone());
    tokio::task::spawn_blocking(move || {
        config
            .plugins
            .iter()
            .filter(|plugin| match config.resolve_plugin_path(plugin) {
                Ok(path) => host.library_changed(&plugin.name, &path) == Some(true),
                Err(_) => matches!(plugin.kind, PluginKind::External { .. }),
            })
            .map(|plugin| plugin.name.clone())
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Holds the serving routers and reloads them.
#[derive(Debug)]
pub struct Reloader {
    host: Arc<PluginHost>,
    public: Routes,
    admin: Routes,
    serving: tokio::sync::Mutex<Serving>,
    last: Mutex<Option<ReloadReport>>,
    this: Weak<Reloader>,
}

impl Reloader {
    /// The reloader of `config`, whose plugins `host` has started.
    pub fn new(config: Config, host: Arc<PluginHost>) -> Arc<Reloader> {
        Arc::new_cyclic(|this: &Weak<Reloader>| {
            let (public, admin, carry) =
                routers(&config, host.clone(), &Carry::default(), Some(this.clone()));
            Reloader {
                host,
                public: Arc::new(ArcSwap::from_pointee(public)),
                admin: Arc::new(ArcSwap::from_pointee(Served::new(admin))),
                serving: tokio::sync::Mutex::new(Serving {
                    config,
                    carry,
                    generation: 1,
                }),
                last: Mutex::new(None),
                this: this.clone(),
            }
        })
    }

    /// The public router as it is now and after every reload, for the edge: each request is
    /// served by the router current when it arrives, and holds it until it is answered.
    pub fn public_routes(&self) -> Routes {
        self.public.clone()
    }

    /// The admin router, swapped the same way.
    pub fn admin_routes(&self) -> Routes {
        self.admin.clone()
    }

    /// The last reload's report, if there was one.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The serving generation.
    pub async fn generation(&self) -> u64 {
        self.serving.lock().await.generation
    }

    /// The file the config is read from.
    pub async fn source(&self) -> std::path::PathBuf {
        self.serving.lock().await.config.source.clone()
    }

    /// Reloads (see the module docs); logs and returns the outcome.
    pub async fn reload(&self) -> ReloadReport {
        let mut serving = self.serving.lock().await;
        let report = self.reload_locked(&mut serving).await;
        if report.ok {
            tracing::info!(
                generation = report.generation,
                added = ?report.added,
                changed = ?report.changed,
                removed = ?report.removed,
                "reload applied"
            );
        } else {
            tracing::warn!(errors = ?report.errors, "reload refused; the running generation goes on serving");
        }
        for warning in &report.warnings {
            tracing::warn!("reload: {warning}");
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        report
    }

    async fn reload_locked(&self, serving: &mut Serving) -> ReloadReport {
        let mut report = ReloadReport {
            ok: false,
            generation: serving.generation,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            unchanged: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            at: String::new(),
        };
        let finish = |mut report: ReloadReport| {
            report.at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            report
        };
        let mut config = match crate::config::load(&serving.config.source) {
            Ok(config) => config,
            Err(error) => {
                report.errors.push(error.to_string());
                return finish(report);
            }
        };
        backworks_plugin_host::add_secrets(config.secrets.0.iter().cloned());
        // The listeners are not re-bound: `server:` keeps what the server started with (and the
        // command line's overrides).
        if config.server != serving.config.server {
            report
                .warnings
                .push("changes under `server:` take effect at the next restart".to_owned());
        }
        config.server = serving.config.server.clone();
        // The health monitor keeps its interval and timeout too.
        if config.health != serving.config.health {
            report
                .warnings
                .push("changes under `health:` take effect at the next restart".to_owned());
        }
        config.health = serving.config.health.clone();

        // A change of `trust:` re-checks every library plugin: each gets a new generation, loaded
        // under the new policy (restored if the reload is refused).
        let trust_changed = config.trust != serving.config.trust;
        let old_policy = self.host.load_policy();
        if trust_changed {
            self.host.set_load_policy(super::load_policy(&config));
            self.host.set_trust_policy(config.trust.signatures.clone());
        }
        let changed = libraries_changed(&self.host, &config).await;
        // Whether a plugin's library must load again: its file changed, or the trust policy did.
        let recheck = |plugin: &PluginConfig| {
            changed.contains(&plugin.name)
                || (trust_changed && matches!(plugin.kind, PluginKind::External { .. }))
        };
        let mut start = Vec::new();
        let mut retire = Vec::new();
        for plugin in &config.plugins {
            let name = &plugin.name;
            match serving.config.plugin(name) {
                None => {
                    report.added.push(name.clone());
                    start.push(plugin);
                }
                // A plugin that failed (to start, or past its restart limit) is tried again.
                Some(old)
                    if old == plugin
                        && !recheck(plugin)
                        && !matches!(self.host.state(name), Some(PluginState::Error(_))) =>
                {
                    report.unchanged.push(name.clone());
                }
                Some(_) => {
                    report.changed.push(name.clone());
                    start.push(plugin);
                    retire.push(name.clone());
                }
            }
        }
        for old in &serving.config.plugins {
            if config.plugin(&old.name).is_none() {
                report.removed.push(old.name.clone());
                retire.push(old.name.clone());
            }
        }
        let loading = report
            .changed
            .iter()
            .chain(&report.added)
            .filter(|name| config.plugin(name).is_some_and(|p| p.enabled));
        for name in loading {
            let retired = self.host.retired_generations(name);
            if retired >= config.reload.max_generations {
                report.errors.push(format!(
                    "plugin `{name}` has {retired} retired generations, the limit \
                     (reload.max_generations: {}); restart the server to reload it again",
                    config.reload.max_generations
                ));
            }
        }
        if !report.errors.is_empty() {
            self.restore_trust(&serving.config, old_policy);
            return finish(report);
        }

        // New generations beside the serving ones: recorded in config order, started all at
        // once, their errors reported in config order.
        let mut started: Vec<(String, u64, Arc<dyn Plugin>)> = Vec::new();
        let mut disabled = Vec::new();
        let mut starting = Vec::new();
        for plugin in start {
            if !plugin.enabled {
                disabled.push(plugin);
                continue;
            }
            starting.push(match plugin_source(&config, plugin) {
                Ok(source) => Ok((
                    plugin,
                    self.host
                        .prepare_next(&plugin_spec(&config, plugin, source)),
                )),
                Err(reason) => Err(format!("plugin `{}`: {reason}", plugin.name)),
            });
        }
        let host = &self.host;
        let outcomes = futures_util::future::join_all(starting.into_iter().map(|s| async move {
            let (plugin, prepared) = s?;
            let prepared = prepared.map_err(|error| super::start_error(plugin, &error))?;
            let generation = prepared.generation();
            match host.start_prepared(prepared).await {
                Ok(new) => Ok((plugin.name.clone(), generation, new)),
                Err(error) => Err(super::start_error(plugin, &error)),
            }
        }))
        .await;
        for outcome in outcomes {
            match outcome {
                Ok(new) => started.push(new),
                Err(error) => report.errors.push(error),
            }
        }
        let mut health = Vec::new();
        if report.errors.is_empty() {
            health = self.check_health(&config, &started, &mut report).await;
        }
        if !report.errors.is_empty() {
            for (name, generation, _) in started {
                self.host.discard(&name, generation).await;
            }
            self.restore_trust(&serving.config, old_policy);
            return finish(report);
        }

        // Commit, swap, drain.
        let mut retiring: Vec<Retiring> = Vec::new();
        for (name, generation, _) in &started {
            retiring.extend(self.host.commit(name, *generation));
        }
        // `/ready` and `/health` answer for the new generations at once, not after the monitor's
        // next round.
        for (name, report) in health {
            if let Some(lifecycle) = self.host.lifecycle(&name) {
                lifecycle.set_health(report);
            }
        }
        for name in retire
            .iter()
            .filter(|n| !started.iter().any(|(s, _, _)| s == *n))
        {
            retiring.extend(self.host.retire(name));
        }
        for plugin in disabled {
            let source = plugin_source(&config, plugin).ok();
            let _ = self
                .host
                .record(&plugin.name, source, PluginState::Disabled, None);
        }
        let (public, admin, carry) = routers(
            &config,
            self.host.clone(),
            &serving.carry,
            Some(self.this.clone()),
        );
        let old_public = self.public.swap(Arc::new(public));
        let old_admin = self.admin.swap(Arc::new(Served::new(admin)));
        tokio::spawn(drain(
            self.host.clone(),
            retiring,
            vec![old_public, old_admin],
            config.reload.drain_timeout,
        ));
        serving.generation += 1;
        serving.config = config;
        serving.carry = carry;
        report.generation = serving.generation;
        report.ok = true;
        finish(report)
    }

    /// Puts the running configuration's load and trust policies back after a refused reload.
    fn restore_trust(&self, running: &Config, policy: backworks_plugin_host::LoadPolicy) {
        self.host.set_load_policy(policy);
        self.host.set_trust_policy(running.trust.signatures.clone());
    }

    /// Asks every new generation for its health (all at once); refuses the reload when an
    /// important one is not healthy. Returns the answers, to store once they are committed.
    async fn check_health(
        &self,
        config: &Config,
        started: &[(String, u64, Arc<dyn Plugin>)],
        report: &mut ReloadReport,
    ) -> Vec<(String, Health)> {
        let checks = started.iter().map(|(name, _, plugin)| async move {
            let health = health::check_one(plugin.as_ref(), config.health.timeout).await;
            (name.clone(), health)
        });
        let answers = futures_util::future::join_all(checks).await;
        for (name, health) in &answers {
            if config.plugin(name).is_some_and(|p| p.important) && *health != Health::Healthy {
                report.errors.push(format!(
                    "important plugin `{name}`'s new generation is {}: {}",
                    health.as_str(),
                    health.message()
                ));
            }
        }
        answers
    }
}

/// Serves `request` on `router`, which the request holds until it is answered.
/// Waits until nothing holds the old routers and the retired generations have no call in flight
/// (or `timeout` passed), then shuts the retired generations down.
async fn drain(
    host: Arc<PluginHost>,
    retiring: Vec<Retiring>,
    old: Vec<Arc<Served>>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let held = old.iter().any(|router| Arc::strong_count(router) > 1);
        let busy = retiring.iter().any(|r| {
            r.plugin
                .as_ref()
                .is_some_and(|p| p.stats().snapshot().in_flight > 0)
        });
        if !held && !busy {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "retired generations still busy at the drain deadline; shutting them down"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(old);
    // An observer of a retired generation still hands its queued exchanges to it: wait until
    // its task ends and lets go of the plugin (the registry's entry and `Retiring` are the other
    // two holders).
    while retiring
        .iter()
        .any(|r| r.plugin.as_ref().is_some_and(|p| Arc::strong_count(p) > 2))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each shutdown gets its own bound, and none waits for another.
    let shutdowns = retiring.iter().map(|retired| {
        let host = host.clone();
        async move {
            let finished = tokio::time::timeout(SHUTDOWN_BOUND, host.finish(retired)).await;
            match finished {
                Ok(()) => tracing::info!(
                    plugin = retired.name,
                    generation = retired.generation,
                    "retired generation drained and shut down"
                ),
                Err(_) => tracing::warn!(
                    plugin = retired.name,
                    generation = retired.generation,
                    "retired generation's shutdown did not end within {} s",
                    SHUTDOWN_BOUND.as_secs()
                ),
            }
        }
    });
    futures_util::future::join_all(shutdowns).await;
}

/// How long a retired generation's `shutdown` may take.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// Takes `SIGHUP` over from its default (which ends the process): call it first thing, so that a
/// `SIGHUP` during start-up waits for [`on_sighup`] instead of killing the server.
#[cfg(unix)]
pub fn listen_for_sighup() -> Option<tokio::signal::unix::Signal> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    if hangups.is_err() {
        tracing::warn!("cannot listen for SIGHUP; reload through the admin API");
    }
    hangups.ok()
}

/// Reloads whenever `SIGHUP` arrives on `hangups`, until the task is dropped.
#[cfg(unix)]
pub async fn on_sighup(reloader: Arc<Reloader>, hangups: Option<tokio::signal::unix::Signal>) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        reloader.reload().await;
    }
}

/// With `reload.watch`: looks at the config file and the plugin files every `interval` and
/// reloads when the content of one changed and the next look finds it the same (a write that
/// leaves the content as it was, a file touched, or a file caught halfway through being written
/// does nothing), until the task is dropped. A file as it was at the last look costs a
/// `stat` (see [`FileStamp`]); only a file written, touched or replaced is read and hashed. The
/// looking runs on the blocking pool.
pub async fn watch(reloader: Arc<Reloader>, interval: Duration) {
    let contents =
        |files: &Files| -> Vec<_> { files.iter().map(|(p, f)| (p.clone(), f.hash)).collect() };
    let mut seen = watched(&reloader, Files::new()).await;
    let mut settling = Settling::new(contents(&seen));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = watched(&reloader, seen.clone()).await;
        if settling.changed(contents(&now)) {
            tracing::info!("a watched file changed: reloading");
            reloader.reload().await;
        }
        seen = now;
    }
}

/// Which looks of the watcher call for a reload: a content other than the one last acted on,
/// found by two looks in a row. So a file caught halfway through a write (truncated, then
/// written, as `cat >` or a plain `write` does) is not reloaded from, and a change, applied or
/// refused, is acted on once (a refused one is not retried until the files change again).
#[derive(Debug)]
struct Settling<T> {
    acted_on: T,
    /// A content other than `acted_on` seen by the last look.
    pending: Option<T>,
}

impl<T: PartialEq> Settling<T> {
    fn new(content: T) -> Settling<T> {
        Settling {
            acted_on: content,
            pending: None,
        }
    }

    /// Whether this look, which found `content`, calls for a reload.
    fn changed(&mut self, content: T) -> bool {
        if content == self.acted_on {
            self.pending = None;
            false
        } else if self.pending.as_ref() == Some(&content) {
            self.acted_on = content;
            self.pending = None;
            true
        } else {
            self.pending = Some(content);
            false
        }
    }
}

/// What the watcher saw of each file, by path.
type Files = BTreeMap<PathBuf, Seen>;

/// What the watcher saw of a file at its last look.
#[derive(Debug, Clone)]
struct Seen {
    /// Its stamp, when it could be `stat`ed and had settled by then.
    stamp: Option<FileStamp>,
    /// The SHA-256 of its content; `None` when it could not be read.
    hash: Option<[u8; 32]>,
}

/// The config file and every library file it names, looked at again: each file whose settled
/// stamp is as `before` saw it keeps what `before` knew; any other is read and hashed.
async fn watched(reloader: &Reloader, before: Files) -> Files {
    let source = reloader.source().await;
    tokio::task::spawn_blocking(move || {
        let mut paths = vec![source.clone()];
        if let Ok(config) = crate::config::load(&source) {
            paths.extend(
                config
                    .plugins
                    .iter()
                    .filter_map(|plugin| config.resolve_plugin_path(plugin).ok()),
            );
        }
        paths
            .into_iter()
            .map(|path| {
                let seen = look(&path, before.get(&path));
                (path, seen)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// A look at the file at `path`, given the last one.
fn look(path: &Path, last: Option<&Seen>) -> Seen {
    let now = std::time::SystemTime::now();
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|metadata| FileStamp::of(&metadata));
    if let Some(last) = last.filter(|last| last.stamp.is_some() && last.stamp == stamp) {
        return last.clone();
    }
    Seen {
        stamp: stamp.filter(|stamp| stamp.settled_at(now)),
        hash: std::fs::read(path)
            .ok()
            .map(|bytes| Sha256::digest(&bytes).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Settling;

    #[test]
    fn a_change_is_acted_on_once_two_looks_agree() {
        let mut settling = Settling::new("v1");
        assert!(!settling.changed("v1"));
        // Caught halfway through a rewrite of the same bytes: nothing to do.
        assert!(!settling.changed("v1 half"));
        assert!(!settling.changed("v1"));
        // A real change, seen twice: one reload, then none while it stays.
        assert!(!settling.changed("v2"));
        assert!(settling.changed("v2"));
        assert!(!settling.changed("v2"));
        // A file still being written (every look differs) waits until it is done.
        assert!(!settling.changed("v3 a"));
        assert!(!settling.changed("v3 ab"));
        assert!(!settling.changed("v3 abc"));
        assert!(settling.changed("v3 abc"));
    }
}

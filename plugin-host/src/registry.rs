//! The plugin registry: every plugin's lifecycle state, and starting and stopping plugins.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use backworks_plugin_sdk::{Health, Hooks, PluginMetadata};

use crate::guard::Guarded;
use crate::lifecycle::{EventKind, Lifecycle, PluginState};
use crate::loader::Origin;
use crate::plugin::{BuiltinFactory, Plugin, PluginSource};
use crate::policy::{CallPolicy, Isolation};
use crate::process::{ProcessPlugin, SupervisionSnapshot};
use crate::{DynamicPlugin, HostError, LoadPolicy, TrustPolicy};

/// A plugin to start.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The instance name: unique in the host, used in logs and errors.
    pub name: String,
    /// Where its code comes from.
    pub source: PluginSource,
    /// Its config, handed to `initialize`.
    pub config: serde_json::Value,
    /// Limits and breaker applied to every call.
    pub policy: CallPolicy,
    /// In the host process or in a child.
    pub isolation: Isolation,
    /// The hooks the host will call (an observe subscription calls `after_response`). A plugin
    /// whose metadata declares its hooks must declare these, or it does not start.
    pub hooks: Hooks,
    /// The strings of `config` that came from the environment (`${VAR}`): typed by the plugin's
    /// config schema before it is checked (text that the schema says is a number or a boolean
    /// becomes one), and named by how they were written, never shown, in its errors.
    pub interpolated: Vec<crate::Interpolated>,
    /// How many threads a library plugin run in process asks its runtime for
    /// (`BwHostServices::workers`): started when the plugin first has something to wait on, and
    /// shared by the instances of one library, which get the largest number asked. `None`: the
    /// plugin's default (one, for a Rust plugin).
    pub workers: Option<NonZeroU32>,
}

impl PluginSpec {
    /// A spec with the default policy, run in process.
    pub fn new(name: &str, source: PluginSource, config: serde_json::Value) -> PluginSpec {
        PluginSpec {
            name: name.to_owned(),
            source,
            config,
            policy: CallPolicy::default(),
            isolation: Isolation::InProcess,
            hooks: Hooks::NONE,
            interpolated: Vec::new(),
            workers: None,
        }
    }
}

/// A snapshot of a plugin's state and identity, for `/health`, `plugin list` and the admin API.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// The instance name.
    pub name: String,
    /// Where its code comes from.
    pub source: Option<PluginSource>,
    /// Its lifecycle state.
    pub state: PluginState,
    /// Its metadata, once known.
    pub metadata: Option<PluginMetadata>,
    /// Its last health report, once the health monitor (or `/health`) has asked.
    pub health: Option<Health>,
    /// Its child process's supervision (pid, restarts, crashes), when it is process-isolated.
    pub supervision: Option<SupervisionSnapshot>,
    /// Which generation of the plugin this is: 1 when first started, one more with each
    /// [`PluginHost::start_next`] that was committed.
    pub generation: u64,
}

/// Where an entry stands among the generations of its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The generation lookups give.
    Current,
    /// Started by [`PluginHost::start_next`], not committed yet: invisible to lookups.
    Pending,
    /// Replaced or removed, draining its calls before it is shut down.
    Retired,
}

/// A generation taken out of service by [`PluginHost::commit`] or [`PluginHost::retire`]: the
/// caller drains it (waits until nothing uses it), then hands it to [`PluginHost::finish`].
#[derive(Debug, Clone)]
pub struct Retiring {
    /// The plugin's name.
    pub name: String,
    /// The generation retired.
    pub generation: u64,
    /// Its call guard, when it was loaded: in-flight calls are in its stats.
    pub plugin: Option<Arc<Guarded>>,
}

/// A plugin recorded as `Loading` and not started yet: [`PluginHost::prepare`] or
/// [`PluginHost::prepare_next`], then [`PluginHost::start_prepared`].
#[derive(Debug)]
pub struct Prepared {
    spec: PluginSpec,
    lifecycle: Arc<Lifecycle>,
    generation: u64,
    /// A reload's pending generation, forgotten if it fails.
    next: bool,
}

impl Prepared {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The generation it will be.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    generation: u64,
    phase: Phase,
    source: Option<PluginSource>,
    metadata: Option<PluginMetadata>,
    lifecycle: Arc<Lifecycle>,
    /// The plugin behind its guard, once loaded.
    plugin: Option<Arc<Guarded>>,
    /// The same plugin's supervisor, when it runs in a child process.
    process: Option<Arc<ProcessPlugin>>,
    /// The library file it runs a copy of, when it runs one (in process or in a child).
    origin: Option<Origin>,
}

impl Entry {
    fn retiring(&self) -> Retiring {
        Retiring {
            name: self.name.clone(),
            generation: self.generation,
            plugin: self.plugin.clone(),
        }
    }

    fn status(&self) -> PluginStatus {
        PluginStatus {
            name: self.name.clone(),
            source: self.source.clone(),
            state: self.lifecycle.state(),
            metadata: self.metadata.clone(),
            health: self.lifecycle.health(),
            supervision: self.process.as_ref().map(|p| p.supervision()),
            generation: self.generation,
        }
    }
}

/// Starts plugins, keeps their lifecycle state, and stops them.
///
/// A plugin that fails to load or initialize is recorded in [`PluginState::Error`] with the reason;
/// the others are unaffected.
///
/// [`get`](PluginHost::get) gives the plugin to call while it is active;
/// [`guarded`](PluginHost::guarded) gives its call guard, to read, in any state:
///
/// ```
/// use std::sync::Arc;
/// use backworks_plugin_host::sdk::{BackworksPlugin, PluginResult, async_trait};
/// use backworks_plugin_host::{
///     BuiltinPlugin, PluginHost, PluginSource, PluginSpec, Request, Response,
/// };
///
/// #[derive(Debug)]
/// struct Ok200;
///
/// #[async_trait]
/// impl BackworksPlugin for Ok200 {
///     async fn handle(&self, _request: Request) -> PluginResult<Response> {
///         Ok(Response::new(200))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let host = PluginHost::new();
/// host.register_builtin("ok", |name| {
///     Arc::new(BuiltinPlugin::new(name, "1.0.0", "answers 200", Ok200))
/// });
/// let spec = PluginSpec::new("ok", PluginSource::Builtin("ok".into()), serde_json::json!({}));
/// host.start(&spec).await.expect("a built-in starts");
///
/// let plugin = host.get("ok").expect("active");
/// assert_eq!(plugin.handle(Request::new("GET", "/")).await.unwrap().status, 200);
/// assert_eq!(host.guarded("ok").unwrap().stats().snapshot().calls, 1);
///
/// host.shutdown().await;
/// assert!(host.get("ok").is_none());
/// assert!(host.guarded("ok").is_some());
/// # }
/// ```
#[derive(Default)]
pub struct PluginHost {
    builtins: RwLock<HashMap<String, BuiltinFactory>>,
    /// What a plugin file must pass before it is loaded.
    load_policy: RwLock<LoadPolicy>,
    /// The signatures every library must carry, when set.
    trust: RwLock<Option<Arc<TrustPolicy>>>,
    /// In registration order: shutdown goes in reverse. A plugin's generations are entries of
    /// the same name, newest last.
    entries: RwLock<Vec<Entry>>,
    /// Generations retired and finished, per plugin name.
    finished: RwLock<HashMap<String, u64>>,
    /// Library loads running on the blocking pool: one per core and one more (see [`load_slots`]).
    loads: std::sync::OnceLock<tokio::sync::Semaphore>,
}

/// How many library loads run at once: one per core, and one more. A load is mostly CPU work (the
/// kernel's copy of the file, checks, relocations), but part of it waits: `dlopen` holds the
/// dynamic loader's lock, which one load at a time can have. One load more than cores keeps every
/// core busy meanwhile (1,000 plugins on 2 cores: 3 loads at once start 5–15 % sooner than 2;
/// BENCHMARKS.md, start-up); many more only make each slower, and keep a blocking pool thread
/// (up to 512 by default) per plugin waiting.
fn load_slots() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) + 1
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.statuses())
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// An empty host.
    pub fn new() -> PluginHost {
        PluginHost::default()
    }

    /// Sets what a plugin file must pass before it is loaded, for every later
    /// [`start`](Self::start): the file checks and a verifier of its bytes. Strict file checks
    /// and no verifier by default.
    pub fn set_load_policy(&self, policy: LoadPolicy) {
        *self.load_policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Sets the keys plugin signatures are checked against, and whether a library without a
    /// valid signature is refused: every library loaded from now on (in process or in a child)
    /// is checked with [`check_library`](crate::check_library) on the bytes that will run, after
    /// the load policy's own verifier.
    pub fn set_trust_policy(&self, trust: TrustPolicy) {
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(trust));
    }

    /// The load policy for plugin `name`: the host's, with the signature check for `name` (the
    /// trusted comment must name the plugin it is configured as) when a trust policy is set.
    pub(crate) fn policy_for(&self, name: &str) -> LoadPolicy {
        let mut policy = self.load_policy();
        let trust = self.trust.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(trust) = trust {
            let (name, before) = (name.to_owned(), policy.verify.take());
            policy.verify = Some(Arc::new(
                move |path: &std::path::Path, bytes: &[u8], sha256: &[u8; 32]| {
                    if let Some(before) = &before {
                        before(path, bytes, sha256)?;
                    }
                    crate::check_library(path, bytes, sha256, &trust, &name).map(|_| ())
                },
            ));
        }
        policy
    }

    /// [`policy_for`](Self::policy_for) plugin `name`, loaded in process from `library`: where
    /// signatures are not required and `library` has no signature file beside it, the signature
    /// check could only say so (and the load would hash the library for nothing), so it is left
    /// out. A signature file that appears after this look is not checked: not being required, an
    /// invalid one would only have been logged.
    fn policy_for_library(&self, name: &str, library: &std::path::Path) -> LoadPolicy {
        let optional = self
            .trust
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|trust| !trust.require_signatures);
        if optional && !crate::signature_path(library).exists() {
            return self.load_policy();
        }
        self.policy_for(name)
    }

    /// The load policy in force.
    pub fn load_policy(&self) -> LoadPolicy {
        self.load_policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the built-in plugin `name` available to [`PluginSource::Builtin`]. The factory gets the
    /// instance name.
    pub fn register_builtin(
        &self,
        name: &str,
        factory: impl Fn(&str) -> Arc<dyn Plugin> + Send + Sync + 'static,
    ) {
        if let Ok(mut builtins) = self.builtins.write() {
            builtins.insert(name.to_owned(), Arc::new(factory));
        }
    }

    /// The names of the registered built-in plugins, sorted.
    pub fn builtin_names(&self) -> Vec<String> {
        let builtins = self.builtins.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = builtins.keys().cloned().collect();
        names.sort();
        names
    }

    /// The factory of built-in plugin `builtin`.
    pub(crate) fn builtin_plugin(&self, builtin: &str) -> Result<BuiltinFactory, HostError> {
        let builtins = self.builtins.read().unwrap_or_else(|e| e.into_inner());
        builtins.get(builtin).cloned().ok_or_else(|| {
            let mut names: Vec<_> = builtins.keys().cloned().collect();
            names.sort();
            HostError::UnknownBuiltin {
                name: builtin.to_owned(),
                available: if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
            }
        })
    }

    /// Records a plugin in a state without starting it (`Disabled`, `Discovered`, or an `Error`
    /// found before loading), with an event saying why. Fails if the name is taken.
    pub fn record(
        &self,
        name: &str,
        source: Option<PluginSource>,
        state: PluginState,
        metadata: Option<PluginMetadata>,
    ) -> Result<Arc<Lifecycle>, HostError> {
        self.push_entry(name, source, state, metadata, Phase::Current)
    }

    /// Records a new entry of `name` in `phase`; a current or pending one of that name already
    /// there is a duplicate for a current one.
    fn push_entry(
        &self,
        name: &str,
        source: Option<PluginSource>,
        state: PluginState,
        metadata: Option<PluginMetadata>,
        phase: Phase,
    ) -> Result<Arc<Lifecycle>, HostError> {
        let lifecycle = Arc::new(Lifecycle::new(name, state.clone()));
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let live = |e: &&Entry| e.name == name && e.phase != Phase::Retired;
            let taken = match phase {
                Phase::Current => entries.iter().any(|e| live(&e)),
                _ => entries
                    .iter()
                    .any(|e| e.name == name && e.phase == Phase::Pending),
            };
            if taken {
                return Err(HostError::DuplicateName {
                    name: name.to_owned(),
                });
            }
            let finished = self.finished_generation(name);
            let generation = entries
                .iter()
                .filter(|e| e.name == name)
                .map(|e| e.generation)
                .max()
                .unwrap_or(finished)
                .max(finished)
                + 1;
            entries.push(Entry {
                name: name.to_owned(),
                generation,
                phase,
                source,
                metadata,
                lifecycle: lifecycle.clone(),
                plugin: None,
                process: None,
                origin: None,
            });
        }
        match state {
            PluginState::Disabled => lifecycle.record(EventKind::Disabled, "disabled in config"),
            PluginState::Error(reason) => lifecycle.record(EventKind::Failed, reason),
            _ => {}
        }
        Ok(lifecycle)
    }

    /// Changes the newest entry of `name` (the one being started).
    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.iter_mut().rev().find(|e| e.name == name) {
            f(entry);
        }
    }

    /// Loads, creates and initializes a plugin, moving it through `Loading`, `Loaded` and `Active`;
    /// on failure records `Error` with the reason and returns it.
    ///
    /// The plugin returned (and later [`get`](PluginHost::get)) is behind its [`Guarded`] call
    /// guard: `spec.policy`'s timeout, concurrency limit, response limit and circuit breaker apply
    /// to every call.
    pub async fn start(&self, spec: &PluginSpec) -> Result<Arc<dyn Plugin>, HostError> {
        let prepared = self.prepare(spec)?;
        self.start_prepared(prepared).await
    }

    /// Records plugin `spec.name` as `Loading`, to be started by
    /// [`start_prepared`](Self::start_prepared): recording every plugin first, in order, and
    /// then starting them all at once keeps the records in that order whichever start finishes
    /// first. Fails if the name is taken.
    pub fn prepare(&self, spec: &PluginSpec) -> Result<Prepared, HostError> {
        let lifecycle = self.record(
            &spec.name,
            Some(spec.source.clone()),
            PluginState::Loading,
            None,
        )?;
        Ok(self.prepared(spec, lifecycle, false))
    }

    /// As [`prepare`](Self::prepare), for a new generation of `spec.name` beside the one serving
    /// (see [`start_next`](Self::start_next)).
    pub fn prepare_next(&self, spec: &PluginSpec) -> Result<Prepared, HostError> {
        let lifecycle = self.push_entry(
            &spec.name,
            Some(spec.source.clone()),
            PluginState::Loading,
            None,
            Phase::Pending,
        )?;
        Ok(self.prepared(spec, lifecycle, true))
    }

    fn prepared(&self, spec: &PluginSpec, lifecycle: Arc<Lifecycle>, next: bool) -> Prepared {
        Prepared {
            generation: self.generation_of(&lifecycle),
            spec: spec.clone(),
            lifecycle,
            next,
        }
    }

    /// Loads and initializes a plugin recorded by [`prepare`](Self::prepare) or
    /// [`prepare_next`](Self::prepare_next), as [`start`](Self::start) or
    /// [`start_next`](Self::start_next) would. Any number may run at once: library loads (file
    /// checks, copy, `dlopen`, instance) go to the blocking pool, at most one per core and one
    /// more at a time, and everything else waits without holding a thread.
    pub async fn start_prepared(&self, prepared: Prepared) -> Result<Arc<dyn Plugin>, HostError> {
        let result = self.bring_up(&prepared.spec, &prepared.lifecycle).await;
        if result.is_err() && prepared.next {
            self.remove(&prepared.spec.name, prepared.generation);
        }
        result
    }

    /// Starts every plugin of `specs` at once, recorded in their order first (see
    /// [`prepare`](Self::prepare)); the results are in the same order, one plugin's failure
    /// stopping no other.
    pub async fn start_all(&self, specs: &[PluginSpec]) -> Vec<Result<Arc<dyn Plugin>, HostError>> {
        let prepared: Vec<_> = specs.iter().map(|spec| self.prepare(spec)).collect();
        futures_util::future::join_all(
            prepared
                .into_iter()
                .map(|prepared| async move { self.start_prepared(prepared?).await }),
        )
        .await
    }

    /// Starts a new generation of plugin `spec.name` beside the one serving, for a reload: it is
    /// loaded and initialized like [`start`](Self::start), but lookups keep giving the current
    /// generation until [`commit`](Self::commit). A failure leaves nothing behind: the current
    /// generation goes on as it was. Returns the new plugin and its generation.
    pub async fn start_next(&self, spec: &PluginSpec) -> Result<(Arc<dyn Plugin>, u64), HostError> {
        let prepared = self.prepare_next(spec)?;
        let generation = prepared.generation;
        Ok((self.start_prepared(prepared).await?, generation))
    }

    /// Makes the pending `generation` of `name` the current one; the generations it replaces are
    /// retired and returned, to drain and [`finish`](Self::finish).
    pub fn commit(&self, name: &str, generation: u64) -> Vec<Retiring> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut retiring = Vec::new();
        for entry in entries.iter_mut().filter(|e| e.name == name) {
            match entry.phase {
                Phase::Pending if entry.generation == generation => entry.phase = Phase::Current,
                Phase::Current => {
                    entry.phase = Phase::Retired;
                    retiring.push(entry.retiring());
                }
                _ => {}
            }
        }
        retiring
    }

    /// Shuts a pending generation down and forgets it: a reload that failed elsewhere.
    pub async fn discard(&self, name: &str, generation: u64) {
        let plugin = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .find(|e| e.name == name && e.generation == generation && e.phase == Phase::Pending)
                .and_then(|e| e.plugin.clone())
        };
        if let Some(plugin) = plugin {
            let _ = plugin.shutdown().await;
        }
        self.remove(name, generation);
    }

    /// Takes plugin `name` out of service (a reload removed or disabled it): its current
    /// generation is retired and returned, to drain and [`finish`](Self::finish).
    pub fn retire(&self, name: &str) -> Vec<Retiring> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut retiring = Vec::new();
        for entry in entries.iter_mut().filter(|e| e.name == name) {
            if entry.phase == Phase::Current {
                entry.phase = Phase::Retired;
                retiring.push(entry.retiring());
            }
        }
        retiring
    }

    /// Shuts a drained generation down (`shutdown`, then `Stopped`) and forgets it. Its library
    /// stays mapped: libraries are never unloaded.
    pub async fn finish(&self, retired: &Retiring) {
        if let Some(plugin) = &retired.plugin
            && plugin.lifecycle().state() == PluginState::Active
        {
            match plugin.shutdown().await {
                Ok(()) => plugin
                    .lifecycle()
                    .record(EventKind::ShutDown, "retired generation shut down"),
                Err(error) => plugin.lifecycle().record(
                    EventKind::ShutDown,
                    format!("retired generation's shutdown failed: {error}"),
                ),
            }
            plugin.lifecycle().set_state(PluginState::Stopped);
        }
        self.remove(&retired.name, retired.generation);
        let mut finished = self.finished.write().unwrap_or_else(|e| e.into_inner());
        let newest = finished.entry(retired.name.clone()).or_default();
        *newest = (*newest).max(retired.generation);
    }

    /// How many generations of `name` were retired (finished, or still draining): every one
    /// before the current generation, or every one when the plugin was removed.
    pub fn retired_generations(&self, name: &str) -> u64 {
        let newest = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter(|e| e.name == name && e.phase != Phase::Pending)
                .map(|e| e.generation)
                .max()
        };
        let finished = self.finished_generation(name);
        match self.current_generation(name) {
            Some(current) => current - 1,
            None => newest.unwrap_or(0).max(finished),
        }
    }

    /// The newest generation of `name` retired and finished (0 when none was).
    fn finished_generation(&self, name: &str) -> u64 {
        let finished = self.finished.read().unwrap_or_else(|e| e.into_inner());
        finished.get(name).copied().unwrap_or(0)
    }

    /// The generation of `name` that serves.
    pub fn current_generation(&self, name: &str) -> Option<u64> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.name == name && e.phase == Phase::Current)
            .map(|e| e.generation)
    }

    fn generation_of(&self, lifecycle: &Arc<Lifecycle>) -> u64 {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| Arc::ptr_eq(&e.lifecycle, lifecycle))
            .map_or(0, |e| e.generation)
    }

    fn remove(&self, name: &str, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !(e.name == name && e.generation == generation));
    }

    /// Loads and initializes the plugin of a recorded entry, and records the outcome.
    async fn bring_up(
        &self,
        spec: &PluginSpec,
        lifecycle: &Arc<Lifecycle>,
    ) -> Result<Arc<dyn Plugin>, HostError> {
        let result = self.start_recorded(spec, lifecycle).await;
        match &result {
            Ok(plugin) => {
                let info = plugin.info();
                lifecycle.set_state(PluginState::Active);
                lifecycle.record(
                    EventKind::Initialized,
                    format!(
                        "{} {} ({}) active",
                        info.metadata.name,
                        info.metadata.version,
                        info.kind.as_str()
                    ),
                );
            }
            Err(error) => {
                let reason = error.to_string();
                lifecycle.set_state(PluginState::Error(reason.clone()));
                lifecycle.record(EventKind::Failed, reason);
                self.update(&spec.name, |e| e.plugin = None);
            }
        }
        result
    }

    async fn start_recorded(
        &self,
        spec: &PluginSpec,
        lifecycle: &Arc<Lifecycle>,
    ) -> Result<Arc<dyn Plugin>, HostError> {
        let plugin: Arc<dyn Plugin> = match (&spec.source, &spec.isolation) {
            (PluginSource::Builtin(builtin), Isolation::InProcess) => {
                self.builtin_plugin(builtin)?(&spec.name)
            }
            (PluginSource::Library(path), Isolation::InProcess) => {
                // Opening a library reads files and runs its initialisers: keep it off async workers.
                let (path, name, workers) = (path.clone(), spec.name.clone(), spec.workers);
                let policy = self.policy_for_library(&spec.name, &path);
                let slots = self
                    .loads
                    .get_or_init(|| tokio::sync::Semaphore::new(load_slots()));
                // Never closed; were it, the load would simply not wait.
                let _slot = slots.acquire().await.ok();
                let (plugin, origin) = tokio::task::spawn_blocking(move || {
                    let library = crate::loader::load_checked(&path, &policy)?;
                    let origin = library.origin().clone();
                    DynamicPlugin::with_workers(library, &name, workers).map(|p| (p, origin))
                })
                .await
                .map_err(|e| HostError::Thread {
                    plugin: spec.name.clone(),
                    what: "loading",
                    reason: e.to_string(),
                })??;
                self.update(&spec.name, move |e| e.origin = Some(origin));
                Arc::new(plugin)
            }
            (PluginSource::Command(_), Isolation::InProcess) => {
                return Err(HostError::IsolationRequired {
                    plugin: spec.name.clone(),
                });
            }
            (source, Isolation::Process(settings)) => {
                let process = Arc::new(
                    ProcessPlugin::start_checked(
                        &spec.name,
                        source,
                        settings,
                        lifecycle.clone(),
                        &self.policy_for(&spec.name),
                    )
                    .await?,
                );
                // Before the entry holds it: dropping it here stops the child.
                check_hooks(&spec.name, spec.hooks, process.info().metadata.hooks)?;
                let (supervised, origin) = (process.clone(), process.origin().cloned());
                self.update(&spec.name, move |e| {
                    e.process = Some(supervised);
                    e.origin = origin;
                });
                process
            }
        };
        let metadata = plugin.info().metadata.clone();
        if !matches!(spec.isolation, Isolation::Process(_)) {
            check_hooks(&spec.name, spec.hooks, metadata.hooks)?;
        }
        // The config the plugin declares it takes, checked before anything of it runs with it.
        let config = match plugin.config_schema() {
            Some(schema) => {
                crate::check_config(&spec.name, schema, &spec.config, &spec.interpolated)?
            }
            None => spec.config.clone(),
        };
        lifecycle.set_state(PluginState::Loaded);
        lifecycle.record(
            EventKind::Loaded,
            format!("{} {} loaded", metadata.name, metadata.version),
        );
        let guarded = Arc::new(Guarded::new(plugin, spec.policy.clone(), lifecycle.clone()));
        let loaded = guarded.clone();
        self.update(&spec.name, move |e| {
            e.metadata = Some(metadata);
            e.plugin = Some(loaded);
        });
        guarded
            .initialize(&config)
            .await
            .map_err(|source| HostError::Start {
                plugin: spec.name.clone(),
                source,
            })?;
        Ok(guarded)
    }

    /// The plugin named `name` behind its call guard, if it is active: the handle to call it
    /// through. `None` once it has stopped or failed.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Plugin>> {
        self.guarded(name)
            .filter(|g| g.lifecycle().state() == PluginState::Active)
            .map(|g| g as Arc<dyn Plugin>)
    }

    /// Whether the library file that the current generation of plugin `name` runs a copy of
    /// now holds other bytes, or is not the file at `path` (a config that now resolves the
    /// plugin elsewhere): what a reload asks to know whether to load the plugin again. `None`
    /// when that generation runs no library file (a built-in, a command, one that failed to
    /// load). A file as it was (`stat`) costs nothing more; one touched or rewritten is read and
    /// compared with the copy, so a file written with the same bytes has not changed. Blocking:
    /// call it off async workers.
    pub fn library_changed(&self, name: &str, path: &std::path::Path) -> Option<bool> {
        let origin = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .find(|e| e.name == name && e.phase == Phase::Current)?
                .origin
                .clone()?
        };
        Some(origin.path() != path || origin.changed())
    }

    /// The call guard of plugin `name`, once loaded, in any state: for reading its breaker
    /// ([`Guarded::breaker_state`]) and counters ([`Guarded::stats`]). To call a plugin, use
    /// [`get`](Self::get), which answers only while the plugin is active.
    pub fn guarded(&self, name: &str) -> Option<Arc<Guarded>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.name == name && e.phase == Phase::Current)
            .and_then(|e| e.plugin.clone())
    }

    /// The state of plugin `name`.
    pub fn state(&self, name: &str) -> Option<PluginState> {
        self.lifecycle(name).map(|l| l.state())
    }

    /// The lifecycle (state, health, history) of plugin `name`.
    pub fn lifecycle(&self, name: &str) -> Option<Arc<Lifecycle>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.name == name && e.phase == Phase::Current)
            .map(|e| e.lifecycle.clone())
    }

    /// Every plugin's status (its current generation), in registration order.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| e.phase == Phase::Current)
            .map(Entry::status)
            .collect()
    }

    /// Every active plugin, in registration order.
    pub fn active(&self) -> Vec<Arc<dyn Plugin>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| e.phase == Phase::Current)
            .filter(|e| e.lifecycle.state() == PluginState::Active)
            .filter_map(|e| e.plugin.clone())
            .map(|g| g as Arc<dyn Plugin>)
            .collect()
    }

    /// Shuts every active plugin down, last started first, and marks it `Stopped`. A plugin whose
    /// `shutdown` fails is logged and still marked stopped.
    pub async fn shutdown(&self) {
        // Current generations and retired ones still draining; not a reload's pending one.
        let running: Vec<(Arc<Guarded>, Arc<Lifecycle>)> = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter(|e| e.phase != Phase::Pending)
                .filter(|e| e.lifecycle.state() == PluginState::Active)
                .filter_map(|e| Some((e.plugin.clone()?, e.lifecycle.clone())))
                .collect()
        };
        for (plugin, lifecycle) in running.into_iter().rev() {
            match plugin.shutdown().await {
                Ok(()) => lifecycle.record(EventKind::ShutDown, "plugin shut down"),
                Err(error) => lifecycle.record(
                    EventKind::ShutDown,
                    format!("plugin shutdown failed: {error}"),
                ),
            }
            lifecycle.set_state(PluginState::Stopped);
        }
    }
}

/// Checks the hooks the host will call against those the plugin declares: a missing one is an
/// error; a declared `before_request` that the host will not call is a warning (an auth check that
/// never runs lets every request through). A plugin that declares nothing is not checked.
fn check_hooks(name: &str, wanted: Hooks, declared: Option<Hooks>) -> Result<(), HostError> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let missing: Vec<&str> = wanted
        .names()
        .filter(|hook| !declared.names().any(|d| d == *hook))
        .collect();
    if !missing.is_empty() {
        return Err(HostError::HooksNotImplemented {
            plugin: name.to_owned(),
            listed: missing.join(", "),
            declared: declared.names().collect::<Vec<_>>().join(", "),
        });
    }
    if declared.before_request() && !wanted.before_request() {
        tracing::warn!(
            plugin = name,
            "plugin implements before_request but is not subscribed to it: add `hooks: \
             [before_request]` to its entry, or its check never runs"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BuiltinPlugin;
    use backworks_plugin_sdk::prelude::*;

    #[derive(Default)]
    struct Flaky;

    #[async_trait]
    impl BackworksPlugin for Flaky {
        async fn initialize(&self, config: Value) -> PluginResult<()> {
            if config["fail"] == true {
                Err(PluginError::Config("asked to fail".into()))
            } else {
                Ok(())
            }
        }

        async fn handle(&self, _: Request) -> PluginResult<Response> {
            panic!("flaky handle");
        }
    }

    fn host() -> PluginHost {
        let host = PluginHost::new();
        host.register_builtin("flaky", |name| {
            Arc::new(BuiltinPlugin::new(name, "1.0.0", "", Flaky))
        });
        host
    }

    fn spec(name: &str, config: Value) -> PluginSpec {
        PluginSpec::new(name, PluginSource::Builtin("flaky".into()), config)
    }

    #[tokio::test]
    async fn a_new_generation_serves_only_once_committed_and_the_old_one_drains() {
        let host = host();
        let first = host.start(&spec("a", json!({}))).await.unwrap();
        let (second, generation) = host.start_next(&spec("a", json!({}))).await.unwrap();
        assert_eq!(generation, 2);
        // Not committed: lookups give the first generation.
        assert!(Arc::ptr_eq(&host.get("a").unwrap(), &first));
        assert_eq!(host.current_generation("a"), Some(1));
        assert_eq!(host.statuses().len(), 1);
        let retiring = host.commit("a", generation);
        assert!(Arc::ptr_eq(&host.get("a").unwrap(), &second));
        assert_eq!(host.statuses()[0].generation, 2);
        assert_eq!(retiring.len(), 1);
        assert_eq!(retiring[0].generation, 1);
        assert_eq!(host.retired_generations("a"), 1);
        // The retired one still answers (a request that started on it finishes on it) until it
        // is finished.
        assert_eq!(first.info().name, "a");
        host.finish(&retiring[0]).await;
        assert_eq!(
            retiring[0].plugin.as_ref().unwrap().lifecycle().state(),
            PluginState::Stopped
        );
        assert_eq!(host.state("a"), Some(PluginState::Active));
        assert_eq!(host.retired_generations("a"), 1);
    }

    #[tokio::test]
    async fn a_failed_or_discarded_generation_leaves_the_current_one_alone() {
        let host = host();
        let first = host.start(&spec("a", json!({}))).await.unwrap();
        let err = host
            .start_next(&spec("a", json!({"fail": true})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("asked to fail"), "{err}");
        assert!(Arc::ptr_eq(&host.get("a").unwrap(), &first));
        let (_, generation) = host.start_next(&spec("a", json!({}))).await.unwrap();
        host.discard("a", generation).await;
        assert!(Arc::ptr_eq(&host.get("a").unwrap(), &first));
        assert_eq!(host.current_generation("a"), Some(1));
        assert_eq!(host.retired_generations("a"), 0);
        // Retiring takes it out of service; the name can then be used again.
        let retiring = host.retire("a");
        assert!(host.get("a").is_none());
        host.finish(&retiring[0]).await;
        assert_eq!(host.retired_generations("a"), 1);
        host.start(&spec("a", json!({}))).await.unwrap();
        assert_eq!(host.current_generation("a"), Some(2));
    }

    /// Declares a schema (a required integer `port`) and answers with the config it was given.
    #[derive(Default)]
    struct Typed(std::sync::Mutex<Value>);

    #[async_trait]
    impl BackworksPlugin for Typed {
        fn config_schema() -> Option<Value> {
            Some(json!({
                "type": "object",
                "properties": {"port": {"type": "integer"}},
                "required": ["port"],
            }))
        }

        async fn initialize(&self, config: Value) -> PluginResult<()> {
            *self.0.lock().unwrap() = config;
            Ok(())
        }

        async fn handle(&self, _: Request) -> PluginResult<Response> {
            Ok(Response::json(&*self.0.lock().unwrap()))
        }
    }

    #[tokio::test]
    async fn the_config_is_checked_and_typed_by_the_schema_before_initialize() {
        let host = host();
        host.register_builtin("typed", |name| {
            Arc::new(BuiltinPlugin::new(name, "1.0.0", "", Typed::default()))
        });
        let typed = |name: &str, config: Value| {
            let mut spec = PluginSpec::new(name, PluginSource::Builtin("typed".into()), config);
            spec.interpolated = vec![crate::Interpolated {
                pointer: "/port".into(),
                written: "${PORT}".into(),
            }];
            spec
        };
        let plugin = host
            .start(&typed("a", json!({"port": "8080"})))
            .await
            .unwrap();
        assert!(plugin.config_schema().is_some());
        let answer = plugin.handle(Request::new("GET", "/")).await.unwrap();
        assert_eq!(answer.body, br#"{"port":8080}"#);

        let err = host.start(&typed("b", json!({}))).await.unwrap_err();
        let HostError::ConfigInvalid { plugin, violations } = &err else {
            panic!("not a schema error: {err}");
        };
        assert_eq!(plugin, "b");
        assert_eq!(violations[0].pointer, "");
        assert_eq!(violations[0].reason, r#""port" is a required property"#);
        assert!(matches!(host.state("b"), Some(PluginState::Error(_))));
        assert!(host.get("b").is_none());

        // A plugin without a schema gets its config as it is, whatever it holds.
        let plain = host.start(&spec("c", json!({"port": "x"}))).await.unwrap();
        assert!(plain.config_schema().is_none());
    }

    #[tokio::test]
    async fn lifecycle_states_and_errors() {
        let host = host();
        let ok = host.start(&spec("a", json!({}))).await.unwrap();
        assert_eq!(host.state("a"), Some(PluginState::Active));
        let err = host
            .start(&spec("b", json!({"fail": true})))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin `b` failed to start: invalid configuration: asked to fail"
        );
        assert!(
            matches!(host.state("b"), Some(PluginState::Error(r)) if r.contains("asked to fail"))
        );
        assert!(host.get("b").is_none());
        assert!(matches!(
            host.start(&spec("a", json!({}))).await,
            Err(HostError::DuplicateName { .. })
        ));
        let missing = PluginSpec::new("c", PluginSource::Builtin("nope".into()), Value::Null);
        let err = host.start(&missing).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no built-in plugin named `nope` (built-ins: flaky)"
        );

        // A panic in a built-in is an error, not an unwind.
        let result = ok.handle(Request::new("GET", "/")).await;
        assert_eq!(
            result,
            Err(PluginError::Panic("flaky handle".into()).into())
        );

        host.shutdown().await;
        assert_eq!(host.state("a"), Some(PluginState::Stopped));
        assert!(matches!(host.state("b"), Some(PluginState::Error(_))));
    }
}

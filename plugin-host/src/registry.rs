//! The plugin registry: every plugin's lifecycle state, and starting and stopping plugins.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use backworks_plugin_sdk::PluginMetadata;

use crate::plugin::{BuiltinFactory, Plugin};
use crate::{DynamicPlugin, HostError};

/// Where a plugin's lifecycle stands.
///
/// ```text
/// Discovered ─▶ Loading ─▶ Loaded ─▶ Active ─▶ Stopped
///                  │          │
///                  └──────────┴──▶ Error(reason)        Disabled (by config)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Known (configured or found on disk), not loaded.
    Discovered,
    /// Being loaded and checked.
    Loading,
    /// Loaded; its instance exists but `initialize` has not finished.
    Loaded,
    /// Initialized and serving.
    Active,
    /// Failed to load or initialize; the reason.
    Error(String),
    /// Turned off in the config.
    Disabled,
    /// Shut down.
    Stopped,
}

impl PluginState {
    /// `"active"`, `"error"`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginState::Discovered => "discovered",
            PluginState::Loading => "loading",
            PluginState::Loaded => "loaded",
            PluginState::Active => "active",
            PluginState::Error(_) => "error",
            PluginState::Disabled => "disabled",
            PluginState::Stopped => "stopped",
        }
    }
}

/// Where a plugin's code comes from, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A built-in plugin registered under this name with [`PluginHost::register_builtin`].
    Builtin(String),
    /// A plugin library file.
    Library(PathBuf),
}

/// A plugin to start.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The instance name: unique in the host, used in logs and errors.
    pub name: String,
    /// Where its code comes from.
    pub source: PluginSource,
    /// Its config, handed to `initialize`.
    pub config: serde_json::Value,
}

/// A plugin's state and identity, for `/health`, `plugin list` and the admin API.
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
}

#[derive(Debug)]
struct Entry {
    status: PluginStatus,
    plugin: Option<Arc<dyn Plugin>>,
}

/// Starts plugins, keeps their lifecycle state, and stops them.
///
/// A plugin that fails to load or initialize is recorded in [`PluginState::Error`] with the reason;
/// the others are unaffected.
#[derive(Default)]
pub struct PluginHost {
    builtins: RwLock<HashMap<String, BuiltinFactory>>,
    /// In registration order: shutdown goes in reverse.
    entries: RwLock<Vec<Entry>>,
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

    /// Records a plugin in a state without starting it (`Disabled`, `Discovered`, or an `Error`
    /// found before loading). Fails if the name is taken.
    pub fn record(
        &self,
        name: &str,
        source: Option<PluginSource>,
        state: PluginState,
        metadata: Option<PluginMetadata>,
    ) -> Result<(), HostError> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.iter().any(|e| e.status.name == name) {
            return Err(HostError::DuplicateName {
                name: name.to_owned(),
            });
        }
        entries.push(Entry {
            status: PluginStatus {
                name: name.to_owned(),
                source,
                state,
                metadata,
            },
            plugin: None,
        });
        Ok(())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.iter_mut().find(|e| e.status.name == name) {
            f(entry);
        }
    }

    /// Loads, creates and initializes a plugin, moving it through `Loading`, `Loaded` and `Active`;
    /// on failure records `Error` with the reason and returns it.
    pub async fn start(&self, spec: &PluginSpec) -> Result<Arc<dyn Plugin>, HostError> {
        self.record(
            &spec.name,
            Some(spec.source.clone()),
            PluginState::Loading,
            None,
        )?;
        let result = self.start_recorded(spec).await;
        match &result {
            Ok(plugin) => {
                tracing::info!(
                    plugin = spec.name,
                    version = plugin.info().metadata.version,
                    kind = plugin.info().kind.as_str(),
                    "plugin active"
                );
                self.update(&spec.name, |e| e.status.state = PluginState::Active);
            }
            Err(error) => {
                tracing::error!(plugin = spec.name, "plugin failed to start: {error}");
                let reason = error.to_string();
                self.update(&spec.name, |e| {
                    e.status.state = PluginState::Error(reason);
                    e.plugin = None;
                });
            }
        }
        result
    }

    async fn start_recorded(&self, spec: &PluginSpec) -> Result<Arc<dyn Plugin>, HostError> {
        let plugin: Arc<dyn Plugin> = match &spec.source {
            PluginSource::Builtin(builtin) => {
                let builtins = self.builtins.read().unwrap_or_else(|e| e.into_inner());
                let factory = builtins.get(builtin).ok_or_else(|| {
                    let mut names: Vec<_> = builtins.keys().cloned().collect();
                    names.sort();
                    HostError::UnknownBuiltin {
                        name: builtin.clone(),
                        available: if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        },
                    }
                })?;
                factory(&spec.name)
            }
            PluginSource::Library(path) => {
                // Opening a library reads files and runs its initialisers: keep it off async workers.
                let (path, name) = (path.clone(), spec.name.clone());
                let plugin = tokio::task::spawn_blocking(move || {
                    let library = crate::loader::load(&path)?;
                    DynamicPlugin::new(library, &name)
                })
                .await
                .map_err(|e| HostError::Start {
                    plugin: spec.name.clone(),
                    source: backworks_plugin_sdk::PluginError::Internal(format!(
                        "loading thread failed: {e}"
                    )),
                })??;
                Arc::new(plugin)
            }
        };
        let metadata = plugin.info().metadata.clone();
        let loaded = plugin.clone();
        self.update(&spec.name, move |e| {
            e.status.state = PluginState::Loaded;
            e.status.metadata = Some(metadata);
            e.plugin = Some(loaded);
        });
        plugin
            .initialize(&spec.config)
            .await
            .map_err(|source| HostError::Start {
                plugin: spec.name.clone(),
                source,
            })?;
        Ok(plugin)
    }

    /// The plugin named `name`, if it is active.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Plugin>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.status.name == name && e.status.state == PluginState::Active)
            .and_then(|e| e.plugin.clone())
    }

    /// The state of plugin `name`.
    pub fn state(&self, name: &str) -> Option<PluginState> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.status.name == name)
            .map(|e| e.status.state.clone())
    }

    /// Every plugin's status, in registration order.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|e| e.status.clone()).collect()
    }

    /// Every active plugin, in registration order.
    pub fn active(&self) -> Vec<Arc<dyn Plugin>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| e.status.state == PluginState::Active)
            .filter_map(|e| e.plugin.clone())
            .collect()
    }

    /// Shuts every active plugin down, last started first, and marks it `Stopped`. A plugin whose
    /// `shutdown` fails is logged and still marked stopped.
    pub async fn shutdown(&self) {
        for plugin in self.active().into_iter().rev() {
            let name = plugin.info().name.clone();
            match plugin.shutdown().await {
                Ok(()) => tracing::info!(plugin = name, "plugin shut down"),
                Err(error) => tracing::warn!(plugin = name, "plugin shutdown failed: {error}"),
            }
            self.update(&name, |e| e.status.state = PluginState::Stopped);
        }
    }
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
        PluginSpec {
            name: name.into(),
            source: PluginSource::Builtin("flaky".into()),
            config,
        }
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
        let missing = PluginSpec {
            name: "c".into(),
            source: PluginSource::Builtin("nope".into()),
            config: Value::Null,
        };
        let err = host.start(&missing).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no built-in plugin named `nope` (built-ins: flaky)"
        );

        // A panic in a built-in is an error, not an unwind.
        let result = ok.handle(Request::new("GET", "/")).await;
        assert_eq!(result, Err(PluginError::Panic("flaky handle".into())));

        host.shutdown().await;
        assert_eq!(host.state("a"), Some(PluginState::Stopped));
        assert!(matches!(host.state("b"), Some(PluginState::Error(_))));
    }
}

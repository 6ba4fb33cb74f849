//! A plugin's config schema without starting the plugin: what `backworks validate` checks a config
//! against.
//!
//! - A built-in's comes from its [`BackworksPlugin::config_schema`](crate::sdk::BackworksPlugin::config_schema)
//!   (through its factory; nothing is initialized).
//! - A library's: the `config_schema` key of its metadata (a C plugin's), read from the checked
//!   bytes without running anything; else (ABI 1.1 and later) its vtable's `config_schema` entry,
//!   called in a throwaway child process (`<runner> __plugin-child --config-schema LIBRARY`), so
//!   no plugin code runs in this process and no instance is created. The child loads the host's
//!   checked private copy, as a process-isolated plugin does.
//! - A command's comes from its manifest: the child is started, answers `getmanifest`, and is shut
//!   down without `init`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lifecycle::{Lifecycle, PluginState};
use crate::loader::{ChildCopy, LoadPolicy, Runs};
use crate::policy::ProcessSettings;
use crate::{CHILD_ARG, HostError, PluginHost, PluginSource, ProcessPlugin};

/// The runner's argument that asks for a library's config schema instead of serving it.
pub(crate) const SCHEMA_ARG: &str = "--config-schema";

impl PluginHost {
    /// The JSON Schema plugin `name` declares for its config, read without starting it (see the
    /// module docs of how, per kind of source); `None` when it declares none. `settings` gives the
    /// runner, and how long a child may take to answer (`handshake_timeout`).
    pub async fn describe_config_schema(
        &self,
        name: &str,
        source: &PluginSource,
        settings: &ProcessSettings,
    ) -> Result<Option<Value>, HostError> {
        match source {
            PluginSource::Builtin(builtin) => {
                Ok(self.builtin_plugin(builtin)?(name).config_schema().cloned())
            }
            PluginSource::Library(path) => {
                let policy = self.policy_for(name);
                let (plugin, path, settings) = (name.to_owned(), path.clone(), settings.clone());
                tokio::task::spawn_blocking(move || {
                    library_config_schema(&plugin, &path, &policy, &settings)
                })
                .await
                .map_err(|e| HostError::Thread {
                    plugin: name.to_owned(),
                    what: "config schema",
                    reason: e.to_string(),
                })?
            }
            PluginSource::Command(_) => {
                let lifecycle = std::sync::Arc::new(Lifecycle::new(name, PluginState::Loading));
                let policy = self.policy_for(name);
                let plugin =
                    ProcessPlugin::start_checked(name, source, settings, lifecycle, &policy)
                        .await?;
                let schema = crate::Plugin::config_schema(&plugin).cloned();
                let _ = crate::Plugin::shutdown(&plugin).await;
                Ok(schema)
            }
        }
    }
}

/// A library's config schema: from its metadata, or from a child that calls its vtable entry.
fn library_config_schema(
    name: &str,
    path: &Path,
    policy: &LoadPolicy,
    settings: &ProcessSettings,
) -> Result<Option<Value>, HostError> {
    let (metadata, copy) = crate::loader::check_and_copy(path, policy, Runs::InChild)?;
    if let Some(text) = &metadata.config_schema {
        return crate::config_schema::parse_schema(name, text).map(Some);
    }
    if metadata.abi_minor < 1 {
        // Built before the vtable had the entry, and no metadata key: no schema.
        return Ok(None);
    }
    let copy = ChildCopy::of(copy.copy());
    let mut command = match settings.runner.as_deref() {
        Some([program, args @ ..]) => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
        _ => {
            let exe = std::env::current_exe().map_err(|source| spawn_error(name, source))?;
            let mut command = Command::new(exe);
            command.arg(CHILD_ARG);
            command
        }
    };
    let absolute = std::path::absolute(path).map_err(|source| HostError::Io {
        path: path.to_owned(),
        source,
    })?;
    command
        .arg(SCHEMA_ARG)
        .arg(absolute)
        .env_clear()
        .env(
            crate::process::env::PARENT_PID,
            std::process::id().to_string(),
        )
        .env(crate::process::env::NAME, name)
        .env(crate::process::env::COPY, &copy.source)
        .env(crate::process::env::SHA256, &copy.sha256)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|source| spawn_error(name, source))?;
    let readers = [
        child.stdout.take().map(|s| read_all(Box::new(s))),
        child.stderr.take().map(|s| read_all(Box::new(s))),
    ];
    let deadline = Instant::now() + settings.handshake_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    if status.is_none() {
        // The runner's group: it and, through their parent-death signal, what it started.
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
    let [stdout, stderr] = readers.map(|r| r.and_then(|r| r.join().ok()).unwrap_or_default());
    let bad = |reason: String| HostError::BadSchema {
        plugin: name.to_owned(),
        reason,
    };
    match status {
        None => Err(bad(format!(
            "the child reading it did not answer within {:?}",
            settings.handshake_timeout
        ))),
        Some(status) if !status.success() => {
            let said = String::from_utf8_lossy(&stderr);
            let said = said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            Err(bad(format!(
                "the child reading it failed ({status}): {}",
                said.trim_start_matches("ERROR: ")
            )))
        }
        Some(_) => serde_json::from_slice::<Option<Value>>(&stdout)
            .map_err(|e| bad(format!("the child's answer is not JSON: {e}"))),
    }
}

fn spawn_error(name: &str, source: std::io::Error) -> HostError {
    HostError::Spawn {
        plugin: name.to_owned(),
        command: "the plugin runner".to_owned(),
        source,
    }
}

/// Reads a child's pipe to its end on a thread of its own, at most 1 MiB of it.
fn read_all(pipe: Box<dyn Read + Send>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.take(1 << 20).read_to_end(&mut bytes);
        bytes
    })
}

/// The child side: `__plugin-child --config-schema LIBRARY`. Loads the host's checked copy (as a
/// process-isolated runner does), calls the vtable's `config_schema` (no instance is created),
/// and writes the schema as JSON (`null` for none) on stdout; anything the library prints while
/// it loads goes to stderr instead. Returns the exit status.
pub(crate) fn print_config_schema(path: &Path) -> i32 {
    use std::io::Write;
    use std::os::fd::AsFd;
    let answer = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(error) => {
            eprintln!("ERROR: cannot keep stdout: {error}");
            return 1;
        }
    };
    if let Err(error) = nix::unistd::dup2_stdout(std::io::stderr()) {
        eprintln!("ERROR: cannot point stdout at stderr: {error}");
        return 1;
    }
    let name = std::env::var(crate::process::env::NAME).unwrap_or_else(|_| "plugin".to_owned());
    let copy = match (
        std::env::var_os(crate::process::env::COPY),
        std::env::var(crate::process::env::SHA256),
    ) {
        (Some(source), Ok(sha256)) => Some(ChildCopy {
            source: source.into(),
            sha256,
        }),
        _ => None,
    };
    let schema = crate::loader::load_in_child(path, copy.as_ref())
        .and_then(|library| library.config_schema(&name));
    match schema {
        Ok(schema) => {
            let text = serde_json::to_vec(&schema).unwrap_or_else(|_| b"null".to_vec());
            match (&answer).write_all(&text) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("ERROR: cannot write the schema: {error}");
                    1
                }
            }
        }
        Err(error) => {
            eprintln!("ERROR: {error}");
            1
        }
    }
}

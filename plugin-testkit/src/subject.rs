//! The plugin under test — a library or a command — and the host spec that starts it the way
//! `backworks serve` would: in process, or in a child through the runner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backworks_plugin_host::sdk::Hooks;
use backworks_plugin_host::{
    BreakerSettings, CHILD_ARG, CallPolicy, HostError, Isolation, PluginSource, PluginSpec,
    ProcessSettings, RestartPolicy,
};

/// The environment variable naming the `backworks` executable that runs process-isolated
/// libraries (and command plugins) for the testkit.
pub const RUNNER_ENV: &str = "BACKWORKS_BIN";

/// The deadline of every call unless set otherwise: long enough for a slow machine, short enough
/// that a hanging plugin fails its check instead of hanging the test.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Where the plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A plugin library file.
    Library(PathBuf),
    /// A program speaking the wire protocol, with its arguments.
    Command(Vec<String>),
}

/// The plugin under test and how to run it.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub(crate) source: Source,
    /// A library in a child process (a command always runs in one).
    pub(crate) isolated: bool,
    /// The `backworks` executable that runs children, when set explicitly.
    pub(crate) runner: Option<PathBuf>,
    /// The most any one call (initialize and shutdown included) may take.
    pub(crate) deadline: Duration,
}

impl Subject {
    pub(crate) fn library(path: &Path) -> Subject {
        Subject {
            source: Source::Library(path.to_owned()),
            isolated: false,
            runner: None,
            deadline: DEFAULT_DEADLINE,
        }
    }

    pub(crate) fn command(program: String, args: Vec<String>) -> Subject {
        let mut command = vec![program];
        command.extend(args);
        Subject {
            source: Source::Command(command),
            isolated: true,
            runner: None,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// Whether the plugin runs in a child process.
    pub(crate) fn in_child(&self) -> bool {
        self.isolated || matches!(self.source, Source::Command(_))
    }

    /// What the plugin is, for reports: the library's path or the command line.
    pub(crate) fn describe(&self) -> String {
        match &self.source {
            Source::Library(path) => path.display().to_string(),
            Source::Command(command) => command.join(" "),
        }
    }

    /// The spec that starts the plugin as instance `name` with `config`, subscribed to `hooks`.
    ///
    /// The call policy has the deadline as its timeout, no concurrency limit and no circuit
    /// breaker: the battery judges the plugin, not the host's protection of it.
    pub(crate) fn spec(
        &self,
        name: &str,
        config: serde_json::Value,
        hooks: Hooks,
    ) -> Result<PluginSpec, HostError> {
        let source = match &self.source {
            Source::Library(path) => PluginSource::Library(path.clone()),
            Source::Command(command) => PluginSource::Command(command.clone()),
        };
        let mut spec = PluginSpec::new(name, source, config);
        spec.hooks = hooks;
        spec.policy = CallPolicy {
            timeout: Some(self.deadline),
            max_concurrency: None,
            breaker: BreakerSettings {
                enabled: false,
                ..BreakerSettings::default()
            },
            ..CallPolicy::default()
        };
        if self.in_child() {
            spec.isolation = Isolation::Process(ProcessSettings {
                runner: Some(self.runner_argv(name)?),
                handshake_timeout: self.deadline,
                // A crash is reported by the check it happened in; one restart keeps the later
                // checks meaningful, a crash loop ends them.
                restart: RestartPolicy {
                    max_restarts: 2,
                    ..RestartPolicy::default()
                },
                ..ProcessSettings::default()
            });
        }
        Ok(spec)
    }

    /// Whether a `backworks` runner is at hand (named, in `$BACKWORKS_BIN` or on `PATH`).
    pub(crate) fn has_runner(&self) -> bool {
        self.found_runner().is_some()
    }

    fn found_runner(&self) -> Option<PathBuf> {
        self.runner
            .clone()
            .or_else(|| std::env::var_os(RUNNER_ENV).map(PathBuf::from))
            .or_else(|| on_path("backworks"))
    }

    /// The runner's command line: `backworks __plugin-child` from [`Subject::runner`],
    /// `$BACKWORKS_BIN` or `PATH`; for a command without any, `env` (which only starts it).
    fn runner_argv(&self, name: &str) -> Result<Vec<String>, HostError> {
        match (self.found_runner(), &self.source) {
            (Some(runner), _) => Ok(vec![
                runner.to_string_lossy().into_owned(),
                CHILD_ARG.to_owned(),
            ]),
            // The wire protocol needs no runner: `env -- PROGRAM ARGS` starts the command as is.
            (None, Source::Command(_)) => Ok(vec!["env".to_owned()]),
            (None, Source::Library(_)) => Err(HostError::Spawn {
                plugin: name.to_owned(),
                command: "backworks __plugin-child".to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "a library runs isolated inside the `backworks` executable, which was \
                         not found: install it on PATH, set {RUNNER_ENV}=/path/to/backworks, or \
                         call .runner(path)"
                    ),
                ),
            }),
        }
    }
}

/// `program` in a folder of `PATH`, when there is an executable file of that name.
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_runner_wins_and_runs_the_child_entry_point() {
        let mut subject = Subject::library(Path::new("/x/libp.so"));
        subject.isolated = true;
        subject.runner = Some(PathBuf::from("/opt/bin/backworks"));
        let spec = subject
            .spec("p", serde_json::Value::Null, Hooks::NONE)
            .unwrap();
        let Isolation::Process(settings) = spec.isolation else {
            panic!("isolated")
        };
        assert_eq!(
            settings.runner.unwrap(),
            ["/opt/bin/backworks", "__plugin-child"]
        );
        assert_eq!(spec.policy.timeout, Some(DEFAULT_DEADLINE));
        assert!(!spec.policy.breaker.enabled);
        assert_eq!(spec.policy.max_concurrency, None);
    }

    #[test]
    fn a_library_in_process_needs_no_runner() {
        let spec = Subject::library(Path::new("/x/libp.so"))
            .spec("p", serde_json::Value::Null, Hooks::ALL)
            .unwrap();
        assert_eq!(spec.isolation, Isolation::InProcess);
        assert_eq!(spec.hooks, Hooks::ALL);
    }

    #[test]
    fn a_command_always_runs_in_a_child() {
        let subject = Subject::command("python3".into(), vec!["plugin.py".into()]);
        assert!(subject.in_child());
        assert_eq!(subject.describe(), "python3 plugin.py");
        let spec = subject
            .spec("p", serde_json::Value::Null, Hooks::NONE)
            .unwrap();
        assert!(matches!(spec.isolation, Isolation::Process(_)));
    }
}

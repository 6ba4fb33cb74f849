//! The conformance battery: [`Conformance`] says what to check, [`Conformance::run`] checks it
//! through the real host and returns a [`Report`].

mod calls;
mod explain;
mod memory;
mod metadata;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backworks_plugin_host::sdk::Hooks;
use backworks_plugin_host::{CallError, HostError, PluginError};

use crate::host::{TestHost, TestRuntime, block_on, new_runtime};
use crate::report::{Check, Report};
use crate::subject::{Source, Subject};
use calls::Probe;

/// The checks that need a running plugin, in the order they run after `initialize`; named in the
/// report as skipped when the plugin could not be started.
const AFTER_START: [&str; 9] = [
    "bad config",
    "endpoints",
    "hooks",
    "health",
    "concurrency",
    "cancellation",
    "hostile input",
    "memory",
    "shutdown",
];

/// A conformance run to make: the plugin, its configs, the endpoints it serves, and how hard to
/// push it. Build it, then [`run`](Conformance::run) it.
///
/// ```no_run
/// use backworks_plugin_testkit::{Conformance, built_library};
/// use backworks_plugin_testkit::sdk::serde_json::json;
///
/// Conformance::library(built_library!())
///     .config(json!({"greeting": "Hi"}))
///     .bad_config(json!({"greeting": 42}))
///     .endpoint("GET", "/hello/ana")
///     .run()
///     .assert_passed();
/// ```
#[derive(Debug, Clone)]
#[must_use = "call .run() to run the battery"]
pub struct Conformance {
    subject: Subject,
    config: serde_json::Value,
    bad_configs: Vec<serde_json::Value>,
    endpoints: Vec<(String, String)>,
    concurrency: usize,
    calls: usize,
}

impl Conformance {
    /// The battery for a plugin library, loaded in this process unless
    /// [`isolated`](Self::isolated).
    pub fn library(path: impl AsRef<Path>) -> Conformance {
        Conformance::of(Subject::library(path.as_ref()))
    }

    /// The battery for a plugin program speaking the wire protocol
    /// (`Conformance::command("python3", ["plugin.py"])`), run in a child process.
    pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Conformance
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let text = |s: &OsStr| s.to_string_lossy().into_owned();
        Conformance::of(Subject::command(
            text(program.as_ref()),
            args.into_iter().map(|a| text(a.as_ref())).collect(),
        ))
    }

    fn of(subject: Subject) -> Conformance {
        Conformance {
            subject,
            config: serde_json::Value::Null,
            bad_configs: Vec::new(),
            endpoints: Vec::new(),
            concurrency: 32,
            calls: 2_000,
        }
    }

    /// A config the plugin must accept (default `null`, as for an entry without `config:`).
    pub fn config(mut self, config: serde_json::Value) -> Conformance {
        self.config = config;
        self
    }

    /// A config the plugin must refuse with an error (repeatable). Without one, the battery tries
    /// a number and a string where a map is expected, and then an error or ignoring them both
    /// pass; a panic, a crash or a hang never does.
    pub fn bad_config(mut self, config: serde_json::Value) -> Conformance {
        self.bad_configs.push(config);
        self
    }

    /// An endpoint the plugin serves, as a concrete request: `.endpoint("GET", "/hello/ana")`
    /// (repeatable). The first one is also the call the load checks repeat.
    pub fn endpoint(mut self, method: &str, path: &str) -> Conformance {
        self.endpoints
            .push((method.to_ascii_uppercase(), path.to_owned()));
        self
    }

    /// Runs a library in a child process, as `isolation: process` does (a command always runs in
    /// one). The child is the `backworks` executable: see [`runner`](Self::runner).
    pub fn isolated(mut self, isolated: bool) -> Conformance {
        self.subject.isolated = isolated;
        self
    }

    /// The `backworks` executable that runs children. Default: `$BACKWORKS_BIN`, else `backworks`
    /// on `PATH`; a command plugin without either is started directly.
    pub fn runner(mut self, backworks: impl Into<PathBuf>) -> Conformance {
        self.subject.runner = Some(backworks.into());
        self
    }

    /// How many calls the `concurrency` check makes at once, and the `cancellation` check drops
    /// (default 32).
    pub fn concurrency(mut self, calls: usize) -> Conformance {
        self.concurrency = calls.max(1);
        self
    }

    /// How many calls each round of the `memory` check makes (default 2,000; four rounds).
    pub fn calls(mut self, calls: usize) -> Conformance {
        self.calls = calls.max(1);
        self
    }

    /// The most any one call may take before its check fails as a hang (default 10 s).
    pub fn deadline(mut self, deadline: Duration) -> Conformance {
        self.subject.deadline = deadline;
        self
    }

    /// Runs every check and reports. Never panics on the plugin's account: a plugin that fails to
    /// load, panics, hangs or (in a child) crashes fails the check it happened in.
    ///
    /// A plugin that crashes *in process* takes this process with it: run such a plugin
    /// [`isolated`](Self::isolated).
    pub fn run(&self) -> Report {
        let mut checks = Vec::new();
        let file_metadata = match &self.subject.source {
            Source::Library(path) => {
                let (check, metadata) = metadata::library(path, self.subject.isolated);
                let loadable = check.outcome != crate::Outcome::Fail;
                checks.push(check);
                if !loadable {
                    skip_rest(&mut checks, "initialize", "the metadata check failed");
                    return self.report(checks);
                }
                metadata
            }
            Source::Command(_) => None,
        };

        let runtime = new_runtime();
        let host = match TestHost::start_on(runtime.clone(), &self.subject, self.config.clone()) {
            Ok(host) => host,
            Err(error) => {
                if file_metadata.is_none() {
                    checks.push(Check::skip(
                        "metadata",
                        "a command's metadata is its manifest, which it did not get to send",
                    ));
                }
                checks.push(Check::fail(
                    "initialize",
                    explain::start_failure(&error, true),
                ));
                skip_rest(&mut checks, "", "the plugin did not start");
                return self.report(checks);
            }
        };
        if file_metadata.is_none() {
            checks.push(metadata::manifest(host.metadata()));
        }
        let metadata = host.metadata().clone();
        checks.push(Check::pass(
            "initialize",
            format!(
                "{} {} initialized with the config given",
                metadata.name, metadata.version
            ),
        ));
        checks.extend(self.bad_config_checks(&runtime));
        checks.extend(self.running_checks(&host, &runtime, metadata.hooks));
        drop(host);
        self.report(checks)
    }

    fn report(&self, checks: Vec<Check>) -> Report {
        Report {
            plugin: self.subject.describe(),
            isolated: self.subject.in_child(),
            checks,
        }
    }

    /// `bad config`: a fresh instance with each bad config refuses it with an error.
    fn bad_config_checks(&self, runtime: &Arc<TestRuntime>) -> Vec<Check> {
        let given = !self.bad_configs.is_empty();
        let configs = if given {
            self.bad_configs.clone()
        } else {
            vec![
                serde_json::json!(42),
                serde_json::json!("not a map of settings"),
            ]
        };
        let mut fine = Vec::new();
        let mut wrong = Vec::new();
        for config in configs {
            match TestHost::start_on(runtime.clone(), &self.subject, config.clone()) {
                Ok(instance) => {
                    drop(instance);
                    if given {
                        wrong.push(format!(
                            "initialize accepted the bad config {config}: a config the plugin \
                             cannot use must fail initialize with PluginError::Config, so the \
                             operator sees the mistake when the server starts"
                        ));
                    } else {
                        fine.push(format!("{config} ignored"));
                    }
                }
                // The host refused it against the plugin's config schema, before initialize.
                Err(HostError::ConfigInvalid { violations, .. }) => {
                    let reasons: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                    fine.push(format!(
                        "{config} refused by the config schema ({})",
                        reasons.join("; ")
                    ));
                }
                Err(HostError::Start {
                    source: CallError::Plugin(error),
                    ..
                }) if !matches!(error, PluginError::Panic(_)) => {
                    fine.push(format!(
                        "{config} refused ({}: {})",
                        error.kind(),
                        error.message()
                    ));
                }
                Err(error) => wrong.push(format!(
                    "{} (config {config})",
                    explain::start_failure(&error, false)
                )),
            }
        }
        vec![if wrong.is_empty() {
            Check::pass("bad config", fine.join("; "))
        } else {
            Check::fail("bad config", wrong.join("; "))
        }]
    }

    /// The checks of a started plugin, ending with its shutdown.
    fn running_checks(
        &self,
        host: &TestHost,
        runtime: &Arc<TestRuntime>,
        declared: Option<Hooks>,
    ) -> Vec<Check> {
        let plugin = host.plugin();
        let deadline = self.subject.deadline;
        let hooks = declared.unwrap_or(Hooks::NONE);
        let probe = Probe::choose(&self.endpoints, hooks);
        let no_endpoint = "no endpoint declared: name the requests the plugin serves with \
                           .endpoint(\"GET\", \"/path\") (or --endpoint \"GET /path\")";
        let mut checks = Vec::new();
        let repeated = block_on(host.runtime(), async {
            if self.endpoints.is_empty() {
                checks.push(Check::skip("endpoints", no_endpoint));
            }
            for (method, path) in &self.endpoints {
                checks.push(calls::endpoint(plugin.clone(), deadline, method, path).await);
            }
            match declared {
                None => checks.push(Check::skip(
                    "hooks",
                    "the plugin's metadata does not say which hooks it implements",
                )),
                Some(hooks) if hooks.is_empty() => {
                    checks.push(Check::skip("hooks", "the plugin declares no hooks"))
                }
                Some(hooks) => {
                    for hook in [Probe::BeforeRequest, Probe::AfterResponse] {
                        let declared = match hook {
                            Probe::BeforeRequest => hooks.before_request(),
                            _ => hooks.after_response(),
                        };
                        if declared {
                            checks.push(calls::hook(plugin.clone(), deadline, hook).await);
                        }
                    }
                }
            }
            checks.push(calls::health(plugin.clone(), deadline).await);
            // The calls the load checks repeat must work on their own first.
            let repeated = match &probe {
                None => Err(format!(
                    "nothing to call: {no_endpoint}, or implement a hook"
                )),
                Some(probe) => {
                    let own = match probe {
                        Probe::Endpoint(method, path) => format!("endpoint {method} {path}"),
                        hook => format!("hook {}", hook.describe()),
                    };
                    match checks.iter().find(|c| c.name == own) {
                        Some(c) if c.outcome == crate::Outcome::Fail => Err(format!(
                            "not run: {} fails on its own (see `{own}`)",
                            probe.describe()
                        )),
                        _ => Ok(probe),
                    }
                }
            };
            match &repeated {
                Ok(probe) => {
                    checks.push(
                        calls::concurrency(plugin.clone(), deadline, probe, self.concurrency).await,
                    );
                    checks.push(
                        calls::cancellation(plugin.clone(), deadline, probe, self.concurrency)
                            .await,
                    );
                }
                Err(why) => {
                    checks.push(Check::skip("concurrency", why));
                    checks.push(Check::skip("cancellation", why));
                }
            }
            checks.push(
                calls::hostile_input(
                    plugin.clone(),
                    deadline,
                    &self.endpoints,
                    hooks,
                    repeated.as_ref().ok().copied(),
                )
                .await,
            );
            repeated.cloned()
        });
        checks.push(match &repeated {
            Ok(probe) => self.memory_check(host, runtime, probe),
            Err(why) => Check::skip("memory", why),
        });
        checks.push(block_on(host.runtime(), calls::shutdown(plugin, deadline)));
        host.mark_shut_down();
        checks
    }

    /// `memory`, measured in a process that runs the plugin alone: its child when it runs in one;
    /// else a child started for the check when there is a runner, since this process's memory
    /// is also that of whatever else runs in it (other tests); else, as a last resort, this
    /// process.
    fn memory_check(&self, host: &TestHost, runtime: &Arc<TestRuntime>, probe: &Probe) -> Check {
        let (deadline, calls) = (self.subject.deadline, self.calls);
        if self.subject.in_child() {
            let pid = || host.child_pid();
            let place = "of the plugin's child process";
            return block_on(
                host.runtime(),
                memory::memory(host.plugin(), deadline, probe, calls, pid, place),
            );
        }
        if !self.subject.has_runner() {
            let pid = || Some(std::process::id());
            let place = "of this process, which runs other tests too (no runner was found to \
                         measure the library alone in a child: set BACKWORKS_BIN)";
            return block_on(
                host.runtime(),
                memory::memory(host.plugin(), deadline, probe, calls, pid, place),
            );
        }
        let mut alone = self.subject.clone();
        alone.isolated = true;
        match TestHost::start_on(runtime.clone(), &alone, self.config.clone()) {
            Ok(child) => {
                let pid = || child.child_pid();
                let place = "of a child process running the library alone";
                block_on(
                    child.runtime(),
                    memory::memory(child.plugin(), deadline, probe, calls, pid, place),
                )
            }
            Err(error) => Check::fail(
                "memory",
                format!(
                    "the library could not be started alone in a child process to measure it: {}",
                    explain::start_failure(&error, true)
                ),
            ),
        }
    }
}

/// Appends a skip for every check from `from` on (all of them after start when empty).
fn skip_rest(checks: &mut Vec<Check>, from: &str, why: &str) {
    let names = std::iter::once("initialize").chain(AFTER_START);
    let mut started = from.is_empty();
    for name in names {
        started |= name == from;
        if started && !(from.is_empty() && name == "initialize") {
            checks.push(Check::skip(name, format!("not run: {why}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_that_did_not_start_lists_every_later_check_as_skipped() {
        let mut checks = Vec::new();
        skip_rest(&mut checks, "", "the plugin did not start");
        let names: Vec<_> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, AFTER_START);
        let mut checks = Vec::new();
        skip_rest(&mut checks, "initialize", "the metadata check failed");
        assert_eq!(checks[0].name, "initialize");
        assert_eq!(checks.len(), AFTER_START.len() + 1);
    }

    #[test]
    fn a_missing_library_fails_the_metadata_check_and_skips_the_rest() {
        let report = Conformance::library("/nonexistent/libnothing.so").run();
        assert!(!report.passed());
        let metadata = report.check("metadata").unwrap();
        assert_eq!(metadata.outcome, crate::Outcome::Fail);
        assert!(
            metadata.detail.contains("/nonexistent/libnothing.so"),
            "{}",
            metadata.detail
        );
        assert_eq!(
            report.check("shutdown").unwrap().outcome,
            crate::Outcome::Skip
        );
    }
}

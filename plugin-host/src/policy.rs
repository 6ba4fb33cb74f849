//! What the operator decided for each plugin: call limits, the circuit breaker, and how the plugin
//! is isolated. Plain data with the documented defaults; `backworks.yaml` fills it, an embedder may
//! build it by hand.

use std::time::Duration;

/// Limits and breaker settings applied to every call of one plugin (endpoint calls and hooks).
#[derive(Debug, Clone, PartialEq)]
pub struct CallPolicy {
    /// A call still running after this is answered 504 and its future dropped. `None`: no limit.
    /// Default 30 s.
    pub timeout: Option<Duration>,
    /// Calls past this many in flight are shed at once with 503. `None`: no limit. Default 1024.
    pub max_concurrency: Option<usize>,
    /// A response body larger than this from the plugin is an error (502), not forwarded.
    /// Default 16 MiB.
    pub max_response_body: usize,
    /// The plugin's circuit breaker.
    pub breaker: BreakerSettings,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Some(Duration::from_secs(30)),
            max_concurrency: Some(1024),
            max_response_body: 16 * 1024 * 1024,
            breaker: BreakerSettings::default(),
        }
    }
}

/// When a plugin's circuit breaker opens, and how it recovers.
///
/// Closed → Open after `consecutive_failures` failures in a row, or when at least `min_calls`
/// calls ended in the last `window` and more than `failure_rate` of them failed. Open → HalfOpen
/// after `cooldown`; HalfOpen lets `half_open_probes` calls through, closes when they all succeed
/// and reopens on the first failure.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// `false` turns the breaker off: the plugin is always called. Default `true`.
    pub enabled: bool,
    /// Failures in a row that open the breaker. Default 5.
    pub consecutive_failures: u32,
    /// Failure rate (0.0–1.0) over the window that opens the breaker. Default 0.5.
    pub failure_rate: f64,
    /// The sliding window the rate is computed over. Default 30 s.
    pub window: Duration,
    /// Calls needed in the window before the rate counts. Default 20.
    pub min_calls: u32,
    /// How long the breaker stays open before probing. Default 10 s.
    pub cooldown: Duration,
    /// Probe calls let through while half-open. Default 1.
    pub half_open_probes: u32,
    /// Whether a 5xx response the plugin returns (not an error) counts as a failure. Default `true`.
    pub count_5xx: bool,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            cooldown: Duration::from_secs(10),
            half_open_probes: 1,
            count_5xx: true,
        }
    }
}

/// Where a plugin's code runs.
#[derive(Debug, Clone, PartialEq, Default)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per plugin from its config, never on a call path"
)]
pub enum Isolation {
    /// In the host process (the default): fastest, but a crash or a blocked thread in the plugin
    /// is the host's.
    #[default]
    InProcess,
    /// In a supervised child process, over the wire protocol.
    Process(ProcessSettings),
}

/// How a process-isolated plugin is run and supervised.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// The program (and its arguments) that runs a plugin library in a child: it gets the library
    /// path as its last argument. `None`: the current executable with `__plugin-child`, which
    /// works for the `backworks` binary and for any embedder that calls the child entry point
    /// first thing in `main`.
    pub runner: Option<Vec<String>>,
    /// Resource limits applied in the child before the plugin's code runs.
    pub limits: ResourceLimits,
    /// Restarts after a crash.
    pub restart: RestartPolicy,
    /// How long the child has to answer the manifest and `init` handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// The largest protocol frame accepted either way, in bytes. Default 64 MiB.
    pub max_frame: usize,
    /// The most bytes the host holds for the child while the child does not read them (calls
    /// sent but not yet taken from its input). A call that would go over fails at once as
    /// overloaded (503), and the child is killed and restarted if it then reads nothing for the
    /// probe deadline. One call larger than this is still sent when nothing else waits, so the
    /// host holds at most this or one frame. Default 16 MiB.
    pub max_outbound: usize,
    /// How long each side keeps polling for the next message after one arrived, before its
    /// thread sleeps, while messages come close together (the wire protocol's `SpinRead`):
    /// up to this much CPU per message, for round trips without the wake-up of a sleeping CPU.
    /// Only while calls come less than twice this apart: sparse traffic and an idle plugin do not
    /// spin. Default 50 µs; zero turns it off.
    pub spin: Duration,
    /// The child's working directory; `None` inherits the host's. `backworks` sets it to the
    /// directory of `backworks.yaml`, so a `command` names its script relative to the config.
    pub working_dir: Option<std::path::PathBuf>,
    /// What the child's environment holds beyond the minimal one ([`ChildEnv::BASE`]): the host's
    /// environment is never passed whole. Default: nothing more.
    pub env: ChildEnv,
}

/// A child's environment beyond the minimal one: the host's variables it may see, and variables
/// set for it. Its `Debug` shows names only: values may be secrets.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ChildEnv {
    /// Names of the host's variables passed through, when the host has them.
    pub pass: Vec<String>,
    /// Variables set to these values (after `pass`, so a name in both gets this value).
    pub set: Vec<(String, String)>,
}

impl ChildEnv {
    /// The host's variables every child gets when the host has them: where programs are, whose
    /// home, the locale, the temporary directory.
    pub const BASE: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

    /// The child's variables besides the runner's own: [`BASE`](ChildEnv::BASE) and `pass` from
    /// `host` (a lookup in the host's environment), then `set`.
    pub fn resolve(&self, host: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut put = |name: &str, value: String| match vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => vars.push((name.to_owned(), value)),
        };
        for name in Self::BASE
            .iter()
            .copied()
            .chain(self.pass.iter().map(String::as_str))
        {
            if let Some(value) = host(name) {
                put(name, value);
            }
        }
        for (name, value) in &self.set {
            put(name, value.clone());
        }
        vars
    }
}

impl std::fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildEnv")
            .field("pass", &self.pass)
            .field("set", &self.set.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings {
            runner: None,
            limits: ResourceLimits::default(),
            restart: RestartPolicy::default(),
            handshake_timeout: Duration::from_secs(10),
            max_frame: 64 * 1024 * 1024,
            max_outbound: crate::protocol::DEFAULT_MAX_OUTBOUND,
            spin: crate::protocol::DEFAULT_SPIN,
            working_dir: None,
            env: ChildEnv::default(),
        }
    }
}

/// Resource limits for a child process (`setrlimit`). `None` leaves the limit as inherited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceLimits {
    /// Address space in bytes (`RLIMIT_AS`).
    pub memory_bytes: Option<u64>,
    /// CPU time in seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// How a crashed child is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart; doubles after each crash. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest delay between restarts. Default 30 s.
    pub max_backoff: Duration,
    /// Crashes within `window` after which the plugin is marked Error and no longer restarted.
    /// Default 5.
    pub max_restarts: u32,
    /// The window crashes are counted over. Default 60 s.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_the_base_the_passed_and_the_set_variables_only() {
        let host = |name: &str| match name {
            "PATH" => Some("/bin".to_owned()),
            "LANG" => Some("C.UTF-8".to_owned()),
            "REGION" => Some("eu".to_owned()),
            "ADMIN_TOKEN" => Some("s3cret".to_owned()),
            _ => None,
        };
        let env = ChildEnv {
            pass: vec!["REGION".into(), "MISSING".into()],
            set: vec![("MODE".into(), "fast".into()), ("LANG".into(), "C".into())],
        };
        assert_eq!(
            env.resolve(host),
            [
                ("PATH".to_owned(), "/bin".to_owned()),
                ("LANG".to_owned(), "C".to_owned()),
                ("REGION".to_owned(), "eu".to_owned()),
                ("MODE".to_owned(), "fast".to_owned()),
            ]
        );
        assert_eq!(ChildEnv::default().resolve(|_| None), []);
    }

    #[test]
    fn debug_shows_names_but_never_values() {
        let env = ChildEnv {
            pass: vec!["REGION".into()],
            set: vec![("TOKEN".into(), "s3cret".into())],
        };
        let shown = format!(
            "{:?}",
            ProcessSettings {
                env,
                ..ProcessSettings::default()
            }
        );
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}

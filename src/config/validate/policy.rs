//! Checks of a plugin's operational settings: timeout, limits, circuit breaker, isolation, and the
//! child-process settings of `isolation: process`.

use std::time::Duration;

use backworks_plugin_host::{
    BreakerSettings, CallPolicy, ChildEnv, Isolation, ProcessSettings, ResourceLimits,
    RestartPolicy,
};
use serde_saphyr::Spanned;

use super::{INVALID, boolean, integer};
use crate::config::checked::PluginKind;
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::{
    Number, RawBreaker, RawEnv, RawLimits, RawPlugin, RawRestart, Scalar, Text,
};

/// The plugin's call policy (`timeout_ms`, `max_concurrency`, `max_response_body`, `breaker`).
pub(super) fn call_policy(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &RawPlugin,
) -> Result<CallPolicy, ConfigError> {
    let mut policy = CallPolicy::default();
    if let Some(ms) = &raw.timeout_ms {
        let ms: u64 = integer(ip, ms, &field(n, "timeout_ms"), NON_NEGATIVE_MS)?;
        policy.timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(limit) = &raw.max_concurrency {
        let limit: usize = integer(ip, limit, &field(n, "max_concurrency"), NON_NEGATIVE)?;
        policy.max_concurrency = (limit > 0).then_some(limit);
    }
    if let Some(bytes) = &raw.max_response_body {
        policy.max_response_body =
            positive(ip, bytes, &field(n, "max_response_body"), "a size in bytes")?;
    }
    if let Some(breaker) = &raw.breaker {
        policy.breaker = breaker_settings(ip, n, breaker)?;
    }
    Ok(policy)
}

const NON_NEGATIVE: &str = "a whole number, 0 for no limit";
const NON_NEGATIVE_MS: &str = "a whole number of milliseconds, 0 for no limit";

fn field(plugin: &str, name: &str) -> String {
    format!("`{name}` of plugin `{plugin}`")
}

fn positive<T: TryFrom<i128> + PartialOrd + Default>(
    ip: &Interpolator<'_>,
    raw: &Number,
    what: &str,
    unit: &str,
) -> Result<T, ConfigError> {
    let expected = format!("{unit} greater than 0");
    let value: T = integer(ip, raw, what, &expected)?;
    if value <= T::default() {
        return Err(ip.error(
            INVALID,
            raw.referenced,
            format!("{what} must be {expected}"),
        ));
    }
    Ok(value)
}

fn millis(ip: &Interpolator<'_>, raw: &Number, what: &str) -> Result<Duration, ConfigError> {
    positive::<u64>(ip, raw, what, "a number of milliseconds").map(Duration::from_millis)
}

fn breaker_settings(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &RawBreaker,
) -> Result<BreakerSettings, ConfigError> {
    let mut b = BreakerSettings::default();
    let what = |name: &str| format!("`breaker.{name}` of plugin `{n}`");
    if let Some(v) = &raw.enabled {
        b.enabled = boolean(ip, v, &what("enabled"))?;
    }
    if let Some(v) = &raw.consecutive_failures {
        b.consecutive_failures = positive(ip, v, &what("consecutive_failures"), "a count")?;
    }
    if let Some(v) = &raw.failure_rate {
        b.failure_rate = rate(ip, v, &what("failure_rate"))?;
    }
    if let Some(v) = &raw.window_ms {
        b.window = millis(ip, v, &what("window_ms"))?;
    }
    if let Some(v) = &raw.min_calls {
        b.min_calls = positive(ip, v, &what("min_calls"), "a count")?;
    }
    if let Some(v) = &raw.cooldown_ms {
        b.cooldown = millis(ip, v, &what("cooldown_ms"))?;
    }
    if let Some(v) = &raw.half_open_probes {
        b.half_open_probes = positive(ip, v, &what("half_open_probes"), "a count")?;
    }
    if let Some(v) = &raw.count_5xx {
        b.count_5xx = boolean(ip, v, &what("count_5xx"))?;
    }
    Ok(b)
}

/// A fraction in (0, 1].
fn rate(ip: &Interpolator<'_>, raw: &Number, what: &str) -> Result<f64, ConfigError> {
    let (found, _) = ip.scalar(raw)?;
    let value = match found {
        Scalar::Int(i) => Some(i as f64),
        Scalar::Float(f) => Some(f),
        Scalar::Text(t) => t.trim().parse::<f64>().ok(),
        Scalar::Bool(_) => None,
    };
    match value {
        Some(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(ip.error(
            INVALID,
            raw.referenced,
            format!("{what} must be a fraction greater than 0 and at most 1, such as 0.5"),
        )),
    }
}

/// The plugin's isolation, and its kind when it is a `command:` plugin. `kind` is what `type:`
/// and `path:` said.
pub(super) fn isolation(
    ip: &Interpolator<'_>,
    name: &Text,
    raw: &RawPlugin,
    kind: &mut PluginKind,
) -> Result<Isolation, ConfigError> {
    let n = name.value.as_str();
    // Errors about the plugin as a whole point at its most telling setting, else its name.
    let whole = raw
        .isolation
        .as_ref()
        .or(raw.path.as_ref())
        .or(raw.kind.as_ref())
        .map_or(name.referenced, |t| t.referenced);
    let command = match &raw.command {
        Some(argv) => Some(command(ip, n, argv, kind)?),
        None => None,
    };
    let mode = raw.isolation.as_ref().map(|m| ip.text(m)).transpose()?;
    let process = match mode {
        None => command.is_some(),
        Some(mode) => match mode.value.as_str() {
            "process" => true,
            "in_process" if command.is_some() => {
                let message = format!(
                    "plugin `{n}` has a `command`, which always runs in a child process; \
                     remove `isolation: in_process` or use `isolation: process`"
                );
                return Err(ip.error(INVALID, mode.at, message));
            }
            "in_process" => false,
            _ => {
                let message = format!(
                    "plugin `{n}` has unknown isolation {}; expected `in_process` or `process`",
                    mode.quoted()
                );
                return Err(ip.error(INVALID, mode.at, message));
            }
        },
    };
    if let Some(argv) = command {
        *kind = PluginKind::Command { argv };
    }
    if !process {
        let stray = [
            ("limits", raw.limits.is_some()),
            ("restart", raw.restart.is_some()),
            ("handshake_timeout_ms", raw.handshake_timeout_ms.is_some()),
            ("max_frame", raw.max_frame.is_some()),
            ("spin_us", raw.spin_us.is_some()),
            ("max_outbound", raw.max_outbound.is_some()),
            ("env", raw.env.is_some()),
        ];
        if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
            let message =
                format!("plugin `{n}` sets `{name}`, which only applies with `isolation: process`");
            return Err(ip.error(INVALID, whole, message));
        }
        return Ok(Isolation::InProcess);
    }
    if matches!(kind, PluginKind::Builtin) {
        let message = format!(
            "plugin `{n}` is a built-in and cannot run in a child process; \
             give it a `path` to a library or a `command`"
        );
        return Err(ip.error(INVALID, whole, message));
    }
    let mut settings = ProcessSettings::default();
    if let Some(limits) = &raw.limits {
        settings.limits = resource_limits(ip, n, limits)?;
    }
    if let Some(restart) = &raw.restart {
        settings.restart = restart_policy(ip, name, restart)?;
    }
    if let Some(ms) = &raw.handshake_timeout_ms {
        settings.handshake_timeout = millis(ip, ms, &field(n, "handshake_timeout_ms"))?;
    }
    if let Some(bytes) = &raw.max_frame {
        settings.max_frame = positive(ip, bytes, &field(n, "max_frame"), "a size in bytes")?;
        if settings.max_frame < 4096 {
            return Err(ip.error(
                INVALID,
                bytes.referenced,
                format!("{} must be at least 4096 bytes", field(n, "max_frame")),
            ));
        }
    }
    if let Some(raw_us) = &raw.spin_us {
        let expected = "a whole number of microseconds up to 10000, 0 to turn it off";
        let us: u64 = integer(ip, raw_us, &field(n, "spin_us"), expected)?;
        if us > 10_000 {
            return Err(ip.error(
                INVALID,
                raw_us.referenced,
                format!("{} must be {expected}, found {us}", field(n, "spin_us")),
            ));
        }
        settings.spin = Duration::from_micros(us);
    }
    if let Some(bytes) = &raw.max_outbound {
        settings.max_outbound = positive(ip, bytes, &field(n, "max_outbound"), "a size in bytes")?;
        if settings.max_outbound < 65536 {
            return Err(ip.error(
                INVALID,
                bytes.referenced,
                format!("{} must be at least 65536 bytes", field(n, "max_outbound")),
            ));
        }
    }
    if let Some(env) = &raw.env {
        settings.env = child_env(ip, n, env)?;
    }
    Ok(Isolation::Process(settings))
}

/// Variables the runner sets for itself: a plugin's `env` may not name them.
const RESERVED_PREFIX: &str = "BACKWORKS_PLUGIN_";

/// `env: {pass: [NAME, …], set: {NAME: value, …}}`. A value is interpolated and never shown in
/// a message.
fn child_env(ip: &Interpolator<'_>, n: &str, raw: &RawEnv) -> Result<ChildEnv, ConfigError> {
    let mut env = ChildEnv::default();
    let check_name = |name: &Text, key: &str| -> Result<String, ConfigError> {
        let what = format!("`env.{key}` of plugin `{n}`");
        let name_ok = name
            .value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            let message = format!(
                "{what} names `{}`, which is not a variable name (letters, digits and `_`, not \
                 starting with a digit)",
                name.value
            );
            return Err(ip.error(INVALID, name.referenced, message));
        }
        if name.value.starts_with(RESERVED_PREFIX) {
            let message = format!(
                "{what} names `{}`: variables starting with `{RESERVED_PREFIX}` are the runner's own",
                name.value
            );
            return Err(ip.error(INVALID, name.referenced, message));
        }
        Ok(name.value.clone())
    };
    for name in raw.pass.iter().flatten() {
        let name = check_name(name, "pass")?;
        if !env.pass.contains(&name) {
            env.pass.push(name);
        }
    }
    for (name, value) in raw.set.iter().flatten() {
        let checked = check_name(name, "set")?;
        if env.pass.contains(&checked) {
            let message = format!(
                "`env.set` of plugin `{n}` sets `{checked}`, which `env.pass` passes from the \
                 host already; keep one"
            );
            return Err(ip.error(INVALID, name.referenced, message));
        }
        let (found, _) = ip.scalar(value)?;
        let text = match found {
            Scalar::Text(t) => t,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        };
        if text.contains('\0') {
            let message = format!(
                "`env.set.{checked}` of plugin `{n}` holds a NUL character, which no environment \
                 variable can"
            );
            return Err(ip.error(INVALID, value.referenced, message));
        }
        env.set.push((checked, text));
    }
    Ok(env)
}

fn command(
    ip: &Interpolator<'_>,
    n: &str,
    argv: &Spanned<Vec<Text>>,
    kind: &PluginKind,
) -> Result<Vec<String>, ConfigError> {
    if !matches!(kind, PluginKind::Builtin) {
        let message = format!(
            "plugin `{n}` has both a `command` and a library (`path` or `type`); \
             a plugin is either a program or a library"
        );
        return Err(ip.error(INVALID, argv.referenced, message));
    }
    let words: Vec<String> = argv
        .value
        .iter()
        .map(|arg| ip.text(arg).map(|a| a.value))
        .collect::<Result<_, _>>()?;
    if words
        .first()
        .is_none_or(|program| program.trim().is_empty())
    {
        let message = format!("plugin `{n}` has an empty `command`; name the program to run");
        return Err(ip.error(INVALID, argv.referenced, message));
    }
    Ok(words)
}

fn resource_limits(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &RawLimits,
) -> Result<ResourceLimits, ConfigError> {
    let what = |name: &str| format!("`limits.{name}` of plugin `{n}`");
    let mut limits = ResourceLimits::default();
    if let Some(mb) = &raw.memory_mb {
        let mb: u64 = positive(ip, mb, &what("memory_mb"), "a number of MiB")?;
        limits.memory_bytes = Some(mb.saturating_mul(1024 * 1024));
    }
    if let Some(s) = &raw.cpu_seconds {
        limits.cpu_seconds = Some(positive(
            ip,
            s,
            &what("cpu_seconds"),
            "a number of seconds",
        )?);
    }
    if let Some(files) = &raw.open_files {
        limits.open_files = Some(positive(ip, files, &what("open_files"), "a count")?);
    }
    Ok(limits)
}

fn restart_policy(
    ip: &Interpolator<'_>,
    name: &Text,
    raw: &RawRestart,
) -> Result<RestartPolicy, ConfigError> {
    let n = name.value.as_str();
    let what = |name: &str| format!("`restart.{name}` of plugin `{n}`");
    let mut policy = RestartPolicy::default();
    if let Some(v) = &raw.initial_backoff_ms {
        policy.initial_backoff = millis(ip, v, &what("initial_backoff_ms"))?;
    }
    if let Some(v) = &raw.max_backoff_ms {
        policy.max_backoff = millis(ip, v, &what("max_backoff_ms"))?;
    }
    if let Some(v) = &raw.max_restarts {
        policy.max_restarts = integer(ip, v, &what("max_restarts"), "a whole number")?;
    }
    if let Some(v) = &raw.window_ms {
        policy.window = millis(ip, v, &what("window_ms"))?;
    }
    if policy.max_backoff < policy.initial_backoff {
        let at = raw
            .max_backoff_ms
            .as_ref()
            .or(raw.initial_backoff_ms.as_ref())
            .map_or(name.referenced, |v| v.referenced);
        let message = format!(
            "{} ({} ms) is shorter than `restart.initial_backoff_ms` ({} ms)",
            what("max_backoff_ms"),
            policy.max_backoff.as_millis(),
            policy.initial_backoff.as_millis()
        );
        return Err(ip.error(INVALID, at, message));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, parse};
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse("plugins:\n  p: {path: libp.so}\n").unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.policy, CallPolicy::default());
        assert_eq!(p.policy.timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.isolation, Isolation::InProcess);
        assert!(!p.important);
    }

    #[test]
    fn every_setting_is_read() {
        let c = parse(
            "plugins:
  p:
    path: libp.so
    important: true
    timeout_ms: 250
    max_concurrency: 8
    max_response_body: 1024
    breaker:
      enabled: true
      consecutive_failures: 3
      failure_rate: 0.25
      window_ms: 5000
      min_calls: 4
      cooldown_ms: 1500
      half_open_probes: 2
      count_5xx: false
    isolation: process
    limits: {memory_mb: 64, cpu_seconds: 5, open_files: 32}
    restart: {initial_backoff_ms: 50, max_backoff_ms: 400, max_restarts: 2, window_ms: 10000}
    handshake_timeout_ms: 3000
    max_frame: 65536
    spin_us: 50
    max_outbound: 1048576
    env: {pass: [REGION], set: {MODE: fast, WORKERS: 4}}
",
        )
        .unwrap();
        let p = &c.plugins[0];
        assert!(p.important);
        assert_eq!(p.policy.timeout, Some(Duration::from_millis(250)));
        assert_eq!(p.policy.max_concurrency, Some(8));
        assert_eq!(p.policy.max_response_body, 1024);
        let b = &p.policy.breaker;
        assert_eq!(
            (
                b.consecutive_failures,
                b.failure_rate,
                b.min_calls,
                b.half_open_probes
            ),
            (3, 0.25, 4, 2)
        );
        assert_eq!(
            (b.window, b.cooldown),
            (Duration::from_secs(5), Duration::from_millis(1500))
        );
        assert!(b.enabled && !b.count_5xx);
        let Isolation::Process(settings) = &p.isolation else {
            panic!("{:?}", p.isolation);
        };
        assert_eq!(settings.limits.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(settings.limits.cpu_seconds, Some(5));
        assert_eq!(settings.limits.open_files, Some(32));
        assert_eq!(settings.restart.max_restarts, 2);
        assert_eq!(settings.restart.initial_backoff, Duration::from_millis(50));
        assert_eq!(settings.handshake_timeout, Duration::from_secs(3));
        assert_eq!(settings.max_frame, 65536);
        assert_eq!(settings.spin, Duration::from_micros(50));
        assert_eq!(settings.max_outbound, 1 << 20);
        assert_eq!(settings.env.pass, ["REGION"]);
        assert_eq!(
            settings.env.set,
            [
                ("MODE".to_owned(), "fast".to_owned()),
                ("WORKERS".to_owned(), "4".to_owned())
            ]
        );
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let c =
            parse("plugins:\n  p: {path: libp.so, timeout_ms: 0, max_concurrency: 0}\n").unwrap();
        assert_eq!(c.plugins[0].policy.timeout, None);
        assert_eq!(c.plugins[0].policy.max_concurrency, None);
    }

    #[test]
    fn a_command_is_a_process_plugin() {
        let c = parse("plugins:\n  py:\n    command: [python3, plugins/report.py]\n").unwrap();
        let p = &c.plugins[0];
        assert_eq!(
            p.kind,
            PluginKind::Command {
                argv: vec!["python3".into(), "plugins/report.py".into()]
            }
        );
        let Isolation::Process(settings) = &p.isolation else {
            panic!("{:?}", p.isolation);
        };
        assert_eq!(
            settings.spin,
            Duration::from_micros(50),
            "adaptive spin on by default"
        );
    }

    #[test]
    fn bad_settings_name_the_plugin_and_field() {
        assert_eq!(
            error("plugins:\n  p:\n    path: l.so\n    breaker: {failure_rate: 2}\n"),
            "4:29: `breaker.failure_rate` of plugin `p` must be a fraction greater than 0 and at \
             most 1, such as 0.5"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, timeout_ms: -1}\n"),
            "2:31: `timeout_ms` of plugin `p` must be a whole number of milliseconds, 0 for no \
             limit, found `-1`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, isolation: sandbox}\n"),
            "2:30: plugin `p` has unknown isolation `sandbox`; expected `in_process` or `process`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, limits: {memory_mb: 5}}\n"),
            "2:13: plugin `p` sets `limits`, which only applies with `isolation: process`"
        );
        assert_eq!(
            error("plugins:\n  p: {isolation: process}\n"),
            "2:18: plugin `p` is a built-in and cannot run in a child process; give it a `path` \
             to a library or a `command`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, command: [x]}\n"),
            "2:28: plugin `p` has both a `command` and a library (`path` or `type`); a plugin is \
             either a program or a library"
        );
        assert_eq!(
            error("plugins:\n  p: {command: []}\n"),
            "2:16: plugin `p` has an empty `command`; name the program to run"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], isolation: in_process}\n"),
            "2:32: plugin `p` has a `command`, which always runs in a child process; remove \
             `isolation: in_process` or use `isolation: process`"
        );
        assert_eq!(
            error(
                "plugins:\n  p:\n    command: [x]\n    restart: {initial_backoff_ms: 500, max_backoff_ms: 100}\n"
            ),
            "4:56: `restart.max_backoff_ms` of plugin `p` (100 ms) is shorter than \
             `restart.initial_backoff_ms` (500 ms)"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], spin_us: 20000}\n"),
            "2:30: `spin_us` of plugin `p` must be a whole number of microseconds up to 10000, 0 \
             to turn it off, found 20000"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, spin_us: 10}\n"),
            "2:13: plugin `p` sets `spin_us`, which only applies with `isolation: process`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, env: {pass: [X]}}\n"),
            "2:13: plugin `p` sets `env`, which only applies with `isolation: process`"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], max_outbound: 1000}\n"),
            "2:35: `max_outbound` of plugin `p` must be at least 65536 bytes"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], env: {pass: [1X]}}\n"),
            "2:34: `env.pass` of plugin `p` names `1X`, which is not a variable name (letters, \
             digits and `_`, not starting with a digit)"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], env: {set: {BACKWORKS_PLUGIN_NAME: y}}}\n"),
            "2:33: `env.set` of plugin `p` names `BACKWORKS_PLUGIN_NAME`: variables starting \
             with `BACKWORKS_PLUGIN_` are the runner's own"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], env: {pass: [A], set: {A: y}}}\n"),
            "2:44: `env.set` of plugin `p` sets `A`, which `env.pass` passes from the host \
             already; keep one"
        );
    }
}

//! Turns the parsed document into a checked [`Config`]: interpolates every string value,
//! applies defaults, and checks the rules. Pure: no file system, no process environment.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_saphyr::Spanned;

use super::checked::{Config, PluginConfig, PluginDir, PluginKind, Secrets, TrustConfig};
use super::error::{ConfigError, ConfigErrorKind};
use super::interpolate::{EnvLookup, Interpolator};
use super::model::{RawConfig, RawPlugin, RawPluginDir, Scalar, Text};

mod endpoints;
mod hooks;
mod policy;
mod server;
mod trust;
mod workers;

const INVALID: ConfigErrorKind = ConfigErrorKind::Invalid;

/// Checks `raw`, read from `source`, with relative paths resolved against `base_dir`.
pub(crate) fn check(
    raw: &RawConfig,
    source: &Path,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    let ip = Interpolator::new(env, source);
    let server = server::server(&ip, raw)?;
    let health = server::health(&ip, raw)?;
    let trust = trust(&ip, raw)?;
    let plugin_dirs = match &raw.plugin_dirs {
        None => vec![PluginDir {
            path: base_dir.join("plugins"),
            recursive: false,
        }],
        Some(dirs) => dirs
            .iter()
            .map(|dir| plugin_dir(&ip, dir, base_dir))
            .collect::<Result<_, _>>()?,
    };
    let plugins = match &raw.plugins {
        None => Vec::new(),
        Some(map) => map
            .iter()
            .map(|(name, body)| plugin(&ip, name, body))
            .collect::<Result<_, _>>()?,
    };
    let empty = IndexMap::new();
    let endpoints = endpoints::check(&ip, raw.endpoints.as_ref().unwrap_or(&empty), &plugins)?;
    Ok(Config {
        reload: server::reload(&ip, raw)?,
        secrets: Secrets(ip.secrets()),
        source: source.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        server,
        plugin_dirs,
        plugins,
        endpoints,
        health,
        trust,
        marketplace: super::marketplace::settings(&ip, raw.marketplace.as_ref(), base_dir)?,
    })
}

fn trust(ip: &Interpolator<'_>, raw: &RawConfig) -> Result<TrustConfig, ConfigError> {
    let mut trust = TrustConfig {
        signatures: trust::policy(ip, raw.trust.as_ref())?,
        ..TrustConfig::default()
    };
    if let Some(text) = raw.trust.as_ref().and_then(|t| t.file_checks.as_ref()) {
        let text = ip.text(text)?;
        trust.file_checks = text.value.parse().map_err(|_| {
            ip.error(
                INVALID,
                text.at,
                format!(
                    "`trust.file_checks` is {}: expected `strict` or `relaxed`",
                    text.quoted()
                ),
            )
        })?;
    }
    Ok(trust)
}

fn plugin_dir(
    ip: &Interpolator<'_>,
    dir: &Spanned<RawPluginDir>,
    base_dir: &Path,
) -> Result<PluginDir, ConfigError> {
    let (path, recursive) = match &dir.value {
        RawPluginDir::Path(path) => (
            Spanned::new(path.clone(), dir.referenced, dir.defined),
            None,
        ),
        RawPluginDir::Table(table) => (table.path.clone(), table.recursive.as_ref()),
    };
    let path = ip.text(&path)?;
    if path.value.is_empty() {
        return Err(ip.error(
            INVALID,
            path.at,
            format!("plugin directory {} is empty", path.quoted()),
        ));
    }
    let recursive = match recursive {
        Some(flag) => boolean(ip, flag, "`recursive`")?,
        None => false,
    };
    Ok(PluginDir {
        path: base_dir.join(path.value),
        recursive,
    })
}

fn plugin(
    ip: &Interpolator<'_>,
    name: &Text,
    body: &Spanned<Option<RawPlugin>>,
) -> Result<PluginConfig, ConfigError> {
    check_name(ip, name, "plugin")?;
    let default = RawPlugin::default();
    let raw = body.value.as_ref().unwrap_or(&default);
    let n = &name.value;
    let kind_text = raw.kind.as_ref().map(|k| ip.text(k)).transpose()?;
    let path = raw.path.as_ref().map(|p| ip.text(p)).transpose()?;
    if let Some(path) = &path
        && path.value.is_empty()
    {
        return Err(ip.error(
            INVALID,
            path.at,
            format!("plugin `{n}` has an empty `path` {}", path.quoted()),
        ));
    }
    let mut kind = match (kind_text, path) {
        (None, None) => PluginKind::Builtin,
        (None, Some(path)) => PluginKind::External {
            path: PathBuf::from(path.value),
        },
        (Some(kind), path) => match (kind.value.as_str(), path) {
            ("external", Some(path)) => PluginKind::External {
                path: PathBuf::from(path.value),
            },
            ("external", None) => {
                let message =
                    format!("plugin `{n}` is `type: external` but has no `path` to its library");
                return Err(ip.error(INVALID, kind.at, message));
            }
            ("builtin", None) => PluginKind::Builtin,
            ("builtin", Some(path)) => {
                let message = format!(
                    "plugin `{n}` is `type: builtin` and cannot have a `path`; \
                     use `type: external` to load it from a library"
                );
                return Err(ip.error(INVALID, path.at, message));
            }
            ("marketplace", path) => super::marketplace::kind(ip, n, &kind, path, raw)?,
            _ => {
                let message = format!(
                    "plugin `{n}` has unknown type {}; expected `external`, `builtin` or \
                     `marketplace`",
                    kind.quoted()
                );
                return Err(ip.error(INVALID, kind.at, message));
            }
        },
    };
    super::marketplace::stray_version(ip, n, &kind, raw)?;
    let subscription = hooks::subscription(ip, n, raw)?;
    let isolation = policy::isolation(ip, name, raw, &mut kind)?;
    let policy = policy::call_policy(ip, n, raw)?;
    let workers = workers::workers(ip, n, raw, &kind, &isolation)?;
    Ok(PluginConfig {
        name: n.clone(),
        kind,
        important: match &raw.important {
            Some(flag) => boolean(ip, flag, &format!("`important` of plugin `{n}`"))?,
            None => false,
        },
        policy,
        isolation,
        workers,
        enabled: match &raw.enabled {
            Some(flag) => boolean(ip, flag, &format!("`enabled` of plugin `{n}`"))?,
            None => true,
        },
        config: match &raw.config {
            Some(node) => ip.json(node)?,
            None => serde_json::Value::Null,
        },
        config_map: super::ConfigMap::of(ip.file(), name.referenced, raw.config.as_ref()),
        before_request: subscription.before_request,
        after_response: subscription.after_response,
        observe: subscription.observe,
        observe_queue: subscription.observe_queue,
        order: match &raw.order {
            Some(order) => integer(
                ip,
                order,
                &format!("`order` of plugin `{n}`"),
                "a 32-bit integer",
            )?,
            None => 0,
        },
    })
}

pub(super) fn check_name(
    ip: &Interpolator<'_>,
    name: &Text,
    what: &str,
) -> Result<(), ConfigError> {
    let n = &name.value;
    let message = if n.is_empty() {
        format!("{what} name is empty")
    } else if !n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        format!("invalid {what} name `{n}`: use only letters, digits, `_`, `.` and `-`")
    } else {
        return Ok(());
    };
    Err(ip.error(INVALID, name.referenced, message))
}

pub(super) fn boolean(
    ip: &Interpolator<'_>,
    raw: &Spanned<Scalar>,
    what: &str,
) -> Result<bool, ConfigError> {
    match ip.scalar(raw)? {
        (Scalar::Bool(b), _) => Ok(b),
        (Scalar::Text(t), _) if t.trim().eq_ignore_ascii_case("true") => Ok(true),
        (Scalar::Text(t), _) if t.trim().eq_ignore_ascii_case("false") => Ok(false),
        (found, written) => Err(ip.error(
            INVALID,
            raw.referenced,
            format!(
                "{what} must be `true` or `false`, found {}",
                describe(&found, &written)
            ),
        )),
    }
}

pub(super) fn integer<T: TryFrom<i128>>(
    ip: &Interpolator<'_>,
    raw: &Spanned<Scalar>,
    what: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    let (found, written) = ip.scalar(raw)?;
    let number = match &found {
        Scalar::Int(i) => Some(*i),
        Scalar::Text(t) => t.trim().parse::<i128>().ok(),
        Scalar::Bool(_) | Scalar::Float(_) => None,
    };
    number.and_then(|i| T::try_from(i).ok()).ok_or_else(|| {
        ip.error(
            INVALID,
            raw.referenced,
            format!(
                "{what} must be {expected}, found {}",
                describe(&found, &written)
            ),
        )
    })
}

/// A scalar for an error message; text is shown as written, never as interpolated.
fn describe(found: &Scalar, written: &str) -> String {
    match found {
        Scalar::Bool(b) => format!("`{b}`"),
        Scalar::Int(i) => format!("`{i}`"),
        Scalar::Float(f) => format!("`{f}`"),
        Scalar::Text(t) if t == written => format!("`{t}`"),
        Scalar::Text(_) => format!("`{written}` (after interpolation)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str_with_env;

    pub(super) fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_owned())
    }

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str_with_env(text, Path::new("b.yaml"), &env)
    }

    /// The error of `text`, as `line:column: message`.
    pub(super) fn error(text: &str) -> String {
        let err = parse(text).unwrap_err();
        assert_eq!(err.kind(), INVALID, "{err}");
        let shown = err.to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        shown.strip_prefix("b.yaml:").unwrap().to_owned()
    }

    pub(super) const TWO: &str =
        "plugins:\n  a: {path: liba.so}\n  b:\n    path: libb.so\n    hooks: [before_request]\n";

    #[test]
    fn defaults() {
        let c = parse("plugins:\n  p:\n  q: {enabled: false, order: -3}\nendpoints:\n  e: {path: /, plugin: p}\n")
            .unwrap();
        assert_eq!((c.server.host.as_str(), c.server.port), ("127.0.0.1", 3000));
        assert_eq!(
            c.plugin_dirs,
            [PluginDir {
                path: "./plugins".into(),
                recursive: false
            }]
        );
        let p = &c.plugins[0];
        assert_eq!(
            (p.kind.clone(), p.enabled, p.order),
            (PluginKind::Builtin, true, 0)
        );
        assert_eq!(p.config, serde_json::Value::Null);
        assert!(p.before_request.is_none() && p.after_response.is_none());
        assert_eq!((c.plugins[1].enabled, c.plugins[1].order), (false, -3));
        assert_eq!(c.endpoints[0].methods, ["GET"]);
        assert_eq!(c.endpoints[0].hooks, None);
    }

    #[test]
    fn settings_are_read() {
        let c = parse(
            "server: {host: 0.0.0.0, port: 0}\nplugin_dirs:\n  - /abs\n  - {path: lib, recursive: \"true\"}\n\
             plugins:\n  p: {type: builtin, hooks: [after_response, before_request], order: \"7\"}\n\
             endpoints:\n  e: {path: \"/a/{x}/b/\", methods: [get, Post, patch], hooks: [p]}\n",
        )
        .unwrap();
        assert_eq!((c.server.host.as_str(), c.server.port), ("0.0.0.0", 0));
        assert_eq!(
            c.plugin_dirs[0],
            PluginDir {
                path: "/abs".into(),
                recursive: false
            }
        );
        assert_eq!(
            c.plugin_dirs[1],
            PluginDir {
                path: "./lib".into(),
                recursive: true
            }
        );
        let p = &c.plugins[0];
        assert!(p.before_request.is_some() && p.after_response.is_some());
        assert_eq!(p.order, 7);
        assert_eq!(c.endpoints[0].methods, ["GET", "POST", "PATCH"]);
        assert_eq!(c.endpoints[0].hooks, Some(vec!["p".to_owned()]));
        assert!(parse("plugin_dirs: []\n").unwrap().plugin_dirs.is_empty());
    }

    #[test]
    fn scalar_settings_are_checked() {
        assert_eq!(
            error("server:\n  port: 70000\n"),
            "2:9: `server.port` must be an integer from 0 to 65535, found `70000`"
        );
        assert_eq!(
            error("server:\n  port: \"${SECRET}\"\n"),
            "2:9: `server.port` must be an integer from 0 to 65535, found `${SECRET}` (after interpolation)"
        );
        assert_eq!(
            error("plugins:\n  p: {enabled: \"yes please\"}\n"),
            "2:16: `enabled` of plugin `p` must be `true` or `false`, found `yes please`"
        );
        assert_eq!(
            error("plugins:\n  p: {order: 1.5}\n"),
            "2:14: `order` of plugin `p` must be a 32-bit integer, found `1.5`"
        );
        assert_eq!(
            error("server: {host: \"\"}\n"),
            "1:16: `server.host` `` is empty"
        );
    }

    #[test]
    fn plugin_names_are_checked() {
        assert_eq!(
            error("plugins:\n  \"my plugin\": {}\n"),
            "2:3: invalid plugin name `my plugin`: use only letters, digits, `_`, `.` and `-`"
        );
        assert_eq!(error("plugins:\n  \"\": {}\n"), "2:3: plugin name is empty");
        assert_eq!(
            error("plugins: {p: {}}\nendpoints:\n  a/b: {path: /}\n"),
            "3:3: invalid endpoint name `a/b`: use only letters, digits, `_`, `.` and `-`"
        );
    }

    #[test]
    fn plugin_kinds_are_checked() {
        assert_eq!(
            error("plugins:\n  p:\n    type: external\n"),
            "3:11: plugin `p` is `type: external` but has no `path` to its library"
        );
        assert_eq!(
            error("plugins:\n  p:\n    type: builtin\n    path: libp.so\n"),
            "4:11: plugin `p` is `type: builtin` and cannot have a `path`; \
             use `type: external` to load it from a library"
        );
        assert_eq!(
            error("plugins:\n  p:\n    type: wasm\n"),
            "3:11: plugin `p` has unknown type `wasm`; expected `external`, `builtin` or \
             `marketplace`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: \"\"}\n"),
            "2:13: plugin `p` has an empty `path` ``"
        );
    }

    #[test]
    fn plugin_hooks_are_checked() {
        assert_eq!(
            error("plugins:\n  p:\n    hooks: [before_request, before-response]\n"),
            "3:29: plugin `p` has unknown hook point `before-response`; \
             expected `before_request`, `after_response` or `observe`"
        );
        assert_eq!(
            error("plugins:\n  p:\n    hooks:\n      - after_response\n      - after_response\n"),
            "5:9: plugin `p` lists hook point `after_response` twice"
        );
    }

    #[test]
    fn interpolation_errors_come_first_and_are_positioned() {
        let err = parse("plugins:\n  p:\n    path: ${NOPE}\n").unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Interpolation);
        assert_eq!((err.line(), err.column()), (3, 11));
        assert!(err.message().contains("`NOPE`"), "{err}");
        let err = parse("plugins:\n  p:\n    config: {a: \"x ${oops\"}\n").unwrap_err();
        assert_eq!(
            (err.kind(), err.line(), err.column()),
            (ConfigErrorKind::Interpolation, 3, 17)
        );
        assert_eq!(
            err.message(),
            "unterminated `${` in a value (write `$$` for a literal `$`)"
        );
    }
}

//! Turns the parsed document into a checked [`Config`]: interpolates every string value,
//! applies defaults, and checks the rules. Pure: no file system, no process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_saphyr::{Location, Spanned};

use super::checked::{Config, EndpointConfig, PluginConfig, PluginDir, PluginKind, ServerConfig};
use super::error::{ConfigError, ConfigErrorKind};
use super::interpolate::{EnvLookup, Interpolator};
use super::model::{RawConfig, RawEndpoint, RawPlugin, RawPluginDir, Scalar, Text};

const INVALID: ConfigErrorKind = ConfigErrorKind::Invalid;

/// Checks `raw`, read from `source`, with relative paths resolved against `base_dir`.
pub(crate) fn check(
    raw: &RawConfig,
    source: &Path,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    let ip = Interpolator::new(env, source);
    let server = server(&ip, raw)?;
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
    let endpoints = endpoints(&ip, raw.endpoints.as_ref().unwrap_or(&empty), &plugins)?;
    Ok(Config {
        source: source.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        server,
        plugin_dirs,
        plugins,
        endpoints,
    })
}

fn server(ip: &Interpolator<'_>, raw: &RawConfig) -> Result<ServerConfig, ConfigError> {
    let mut server = ServerConfig::default();
    let Some(raw) = &raw.server else {
        return Ok(server);
    };
    if let Some(host) = &raw.host {
        let host = ip.text(host)?;
        if host.value.trim().is_empty() {
            return Err(ip.error(
                INVALID,
                host.at,
                format!("`server.host` {} is empty", host.quoted()),
            ));
        }
        server.host = host.value;
    }
    if let Some(port) = &raw.port {
        server.port = integer(ip, port, "`server.port`", "an integer from 0 to 65535")?;
    }
    Ok(server)
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
    let kind = match (kind_text, path) {
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
            ("marketplace", _) => {
                let message = format!(
                    "plugin `{n}`: `type: marketplace` is not supported; \
                     use `type: external` with a `path` to the plugin's library"
                );
                return Err(ip.error(INVALID, kind.at, message));
            }
            _ => {
                let message = format!(
                    "plugin `{n}` has unknown type {}; expected `external` or `builtin`",
                    kind.quoted()
                );
                return Err(ip.error(INVALID, kind.at, message));
            }
        },
    };
    let mut before_request = false;
    let mut after_response = false;
    for hook in raw.hooks.iter().flatten() {
        let hook = ip.text(hook)?;
        let slot = match hook.value.as_str() {
            "before_request" => &mut before_request,
            "after_response" => &mut after_response,
            _ => {
                let message = format!(
                    "plugin `{n}` has unknown hook point {}; \
                     expected `before_request` or `after_response`",
                    hook.quoted()
                );
                return Err(ip.error(INVALID, hook.at, message));
            }
        };
        if std::mem::replace(slot, true) {
            let message = format!("plugin `{n}` lists hook point `{}` twice", hook.value);
            return Err(ip.error(INVALID, hook.at, message));
        }
    }
    Ok(PluginConfig {
        name: n.clone(),
        kind,
        enabled: match &raw.enabled {
            Some(flag) => boolean(ip, flag, &format!("`enabled` of plugin `{n}`"))?,
            None => true,
        },
        config: match &raw.config {
            Some(node) => ip.json(node)?,
            None => serde_json::Value::Null,
        },
        before_request,
        after_response,
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

fn endpoints(
    ip: &Interpolator<'_>,
    raw: &IndexMap<Text, Spanned<RawEndpoint>>,
    plugins: &[PluginConfig],
) -> Result<Vec<EndpointConfig>, ConfigError> {
    // (method, normalised path) -> (endpoint, line) of the first endpoint claiming it.
    let mut routes: HashMap<(String, String), (&str, u64)> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (name, endpoint) in raw {
        check_name(ip, name, "endpoint")?;
        let n = name.value.as_str();
        let raw = &endpoint.value;
        let path = ip.text(&raw.path)?;
        let route = normalise_route(&path.value).map_err(|(reason, detail)| {
            let detail = detail.filter(|_| path.value == path.written);
            let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
            ip.error(
                INVALID,
                path.at,
                format!(
                    "endpoint `{n}` has path {} that {reason}{detail}",
                    path.quoted()
                ),
            )
        })?;
        let methods = methods(ip, n, raw.methods.as_ref())?;
        let plugin = endpoint_plugin(ip, n, name.referenced, raw.plugin.as_ref(), plugins)?;
        let hooks = raw
            .hooks
            .as_ref()
            .map(|hooks| endpoint_hooks(ip, n, hooks, plugins))
            .transpose()?;
        for method in &methods {
            let key = (method.clone(), route.clone());
            if let Some((other, line)) = routes.get(&key) {
                let message = format!(
                    "endpoint `{n}` claims {method} {}, already claimed by endpoint `{other}` \
                     (line {line}); parameter names do not make routes different",
                    path.quoted()
                );
                return Err(ip.error(INVALID, path.at, message));
            }
            routes.insert(key, (n, path.at.line()));
        }
        out.push(EndpointConfig {
            name: n.to_owned(),
            path: path.value,
            methods,
            plugin,
            hooks,
        });
    }
    Ok(out)
}

fn methods(
    ip: &Interpolator<'_>,
    n: &str,
    raw: Option<&Spanned<Vec<Text>>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec!["GET".to_owned()]);
    };
    if raw.value.is_empty() {
        return Err(ip.error(
            INVALID,
            raw.referenced,
            format!("endpoint `{n}` has an empty `methods` list"),
        ));
    }
    let mut methods: Vec<String> = Vec::with_capacity(raw.value.len());
    for method in &raw.value {
        let method = ip.text(method)?;
        // RFC 9110 `token`.
        let is_token = !method.value.is_empty()
            && method
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !is_token {
            let message = format!("endpoint `{n}` has invalid HTTP method {}", method.quoted());
            return Err(ip.error(INVALID, method.at, message));
        }
        let upper = method.value.to_ascii_uppercase();
        if methods.contains(&upper) {
            let message = format!("endpoint `{n}` lists method {upper} twice");
            return Err(ip.error(INVALID, method.at, message));
        }
        methods.push(upper);
    }
    Ok(methods)
}

fn endpoint_plugin(
    ip: &Interpolator<'_>,
    n: &str,
    name_at: Location,
    raw: Option<&Text>,
    plugins: &[PluginConfig],
) -> Result<String, ConfigError> {
    let Some(raw) = raw else {
        return match plugins {
            [only] => Ok(only.name.clone()),
            [] => Err(ip.error(
                INVALID,
                name_at,
                format!("endpoint `{n}` needs a plugin, but no plugins are configured; add one under `plugins:` and name it with `plugin:`"),
            )),
            _ => Err(ip.error(
                INVALID,
                name_at,
                format!(
                    "endpoint `{n}` does not say which plugin serves it; add `plugin:` naming one of {}",
                    list(plugins.iter().map(|p| p.name.as_str()))
                ),
            )),
        };
    };
    let plugin = ip.text(raw)?;
    if plugins.iter().any(|p| p.name == plugin.value) {
        return Ok(plugin.value);
    }
    let known = if plugins.is_empty() {
        "no plugins are configured".to_owned()
    } else {
        format!(
            "configured: {}",
            list(plugins.iter().map(|p| p.name.as_str()))
        )
    };
    let message = format!(
        "endpoint `{n}` names unknown plugin {} ({known})",
        plugin.quoted()
    );
    Err(ip.error(INVALID, plugin.at, message))
}

fn endpoint_hooks(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &Spanned<Vec<Text>>,
    plugins: &[PluginConfig],
) -> Result<Vec<String>, ConfigError> {
    let mut hooks: Vec<String> = Vec::with_capacity(raw.value.len());
    for hook in &raw.value {
        let hook = ip.text(hook)?;
        let message = match plugins.iter().find(|p| p.name == hook.value) {
            None => format!(
                "endpoint `{n}` lists unknown plugin {} in `hooks`",
                hook.quoted()
            ),
            Some(p) if !p.has_hooks() => format!(
                "endpoint `{n}` lists plugin `{}` in `hooks`, but that plugin has no `hooks` \
                 (give it e.g. `hooks: [before_request]`)",
                p.name
            ),
            Some(p) if hooks.contains(&p.name) => {
                format!("endpoint `{n}` lists plugin `{}` in `hooks` twice", p.name)
            }
            Some(p) => {
                hooks.push(p.name.clone());
                continue;
            }
        };
        return Err(ip.error(INVALID, hook.at, message));
    }
    Ok(hooks)
}

/// Checks a route and returns it with parameter names erased (`/a/{}`), so that routes that
/// differ only in parameter names compare equal. The error is a reason, plus a detail that
/// quotes part of the path (to leave out when the path came from interpolation).
fn normalise_route(path: &str) -> Result<String, (&'static str, Option<String>)> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(("does not start with `/`", None));
    };
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "?#".contains(*c))
    {
        return Err((
            "contains a character not allowed in a route",
            Some(format!("{c:?}")),
        ));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let mut params: Vec<&str> = Vec::new();
    let mut normalised = String::with_capacity(path.len());
    for (i, segment) in segments.iter().enumerate() {
        normalised.push('/');
        if segment.is_empty() && i + 1 < segments.len() {
            return Err(("has an empty segment (`//`)", None));
        }
        if !segment.contains(['{', '}']) {
            normalised.push_str(segment);
            continue;
        }
        let name = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        let valid = name.is_some_and(|name| {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        let Some(name) = name.filter(|_| valid) else {
            return Err((
                "has a bad parameter: a parameter is a whole segment `{name}` \
                 of letters, digits and `_`",
                Some(format!("segment `{segment}`")),
            ));
        };
        if params.contains(&name) {
            return Err(("uses a parameter name twice", Some(format!("`{{{name}}}`"))));
        }
        params.push(name);
        normalised.push_str("{}");
    }
    Ok(normalised)
}

fn check_name(ip: &Interpolator<'_>, name: &Text, what: &str) -> Result<(), ConfigError> {
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

fn boolean(ip: &Interpolator<'_>, raw: &Spanned<Scalar>, what: &str) -> Result<bool, ConfigError> {
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

fn integer<T: TryFrom<i128>>(
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

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str_with_env;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_owned())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str_with_env(text, Path::new("b.yaml"), &env)
    }

    /// The error of `text`, as `line:column: message`.
    fn error(text: &str) -> String {
        let err = parse(text).unwrap_err();
        assert_eq!(err.kind(), INVALID, "{err}");
        let shown = err.to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        shown.strip_prefix("b.yaml:").unwrap().to_owned()
    }

    const TWO: &str =
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
        assert!(!p.before_request && !p.after_response);
        assert_eq!((c.plugins[1].enabled, c.plugins[1].order), (false, -3));
        assert_eq!(c.endpoints[0].methods, ["GET"]);
        assert_eq!(c.endpoints[0].hooks, None);
    }

    #[test]
    fn settings_are_read() {
        let c = parse(
            "server: {host: 0.0.0.0, port: 0}\nplugin_dirs:\n  - /abs\n  - {path: lib, recursive: \"true\"}\n\
             plugins:\n  p: {type: builtin, hooks: [after_response, before_request], order: \"7\"}\n\
             endpoints:\n  e: {path: \"/a/{x}/b/\", methods: [get, Post, PURGE], hooks: [p]}\n",
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
        assert!(p.before_request && p.after_response);
        assert_eq!(p.order, 7);
        assert_eq!(c.endpoints[0].methods, ["GET", "POST", "PURGE"]);
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
            error("plugins:\n  p:\n    type: marketplace\n    path: libp.so\n"),
            "3:11: plugin `p`: `type: marketplace` is not supported; \
             use `type: external` with a `path` to the plugin's library"
        );
        assert_eq!(
            error("plugins:\n  p:\n    type: wasm\n"),
            "3:11: plugin `p` has unknown type `wasm`; expected `external` or `builtin`"
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
             expected `before_request` or `after_response`"
        );
        assert_eq!(
            error("plugins:\n  p:\n    hooks:\n      - after_response\n      - after_response\n"),
            "5:9: plugin `p` lists hook point `after_response` twice"
        );
    }

    #[test]
    fn endpoint_plugin_must_exist() {
        let text = format!("{TWO}endpoints:\n  hello:\n    path: /hello\n    plugin: helo\n");
        assert_eq!(
            error(&text),
            "9:13: endpoint `hello` names unknown plugin `helo` (configured: `a`, `b`)"
        );
        assert_eq!(
            error("endpoints:\n  e: {path: /, plugin: x}\n"),
            "2:24: endpoint `e` names unknown plugin `x` (no plugins are configured)"
        );
    }

    #[test]
    fn endpoint_plugin_may_be_omitted_only_with_one_plugin() {
        let text = format!("{TWO}endpoints:\n  hello:\n    path: /hello\n");
        assert_eq!(
            error(&text),
            "7:3: endpoint `hello` does not say which plugin serves it; \
             add `plugin:` naming one of `a`, `b`"
        );
        assert_eq!(
            error("endpoints:\n  hello: {path: /}\n"),
            "2:3: endpoint `hello` needs a plugin, but no plugins are configured; \
             add one under `plugins:` and name it with `plugin:`"
        );
    }

    #[test]
    fn disabled_plugin_is_not_an_error() {
        let c =
            parse("plugins:\n  p: {path: libp.so, enabled: false}\nendpoints:\n  e: {path: /}\n")
                .unwrap();
        assert_eq!(c.endpoints[0].plugin, "p");
        assert!(!c.plugins[0].enabled);
    }

    #[test]
    fn endpoint_hooks_are_checked() {
        let base = format!("{TWO}endpoints:\n  e:\n    path: /\n    plugin: a\n");
        assert_eq!(
            error(&format!("{base}    hooks: [b, c]\n")),
            "10:16: endpoint `e` lists unknown plugin `c` in `hooks`"
        );
        assert_eq!(
            error(&format!("{base}    hooks: [a]\n")),
            "10:13: endpoint `e` lists plugin `a` in `hooks`, but that plugin has no `hooks` \
             (give it e.g. `hooks: [before_request]`)"
        );
        assert_eq!(
            error(&format!("{base}    hooks: [b, b]\n")),
            "10:16: endpoint `e` lists plugin `b` in `hooks` twice"
        );
        let c = parse(&format!("{base}    hooks: [b]\n")).unwrap();
        assert_eq!(c.endpoints[0].hooks, Some(vec!["b".to_owned()]));
    }

    #[test]
    fn endpoint_paths_are_checked() {
        let check = |path: &str| {
            error(&format!(
                "plugins: {{p: {{}}}}\nendpoints:\n  e:\n    path: \"{path}\"\n"
            ))
        };
        assert_eq!(
            check("hello"),
            "4:11: endpoint `e` has path `hello` that does not start with `/`"
        );
        assert_eq!(
            check("/a b"),
            "4:11: endpoint `e` has path `/a b` that contains a character not allowed in a route (' ')"
        );
        assert_eq!(
            check("/a?x=1"),
            "4:11: endpoint `e` has path `/a?x=1` that contains a character not allowed in a route ('?')"
        );
        assert_eq!(
            check("/a//b"),
            "4:11: endpoint `e` has path `/a//b` that has an empty segment (`//`)"
        );
        let bad_param = "that has a bad parameter: a parameter is a whole segment `{name}` of letters, digits and `_`";
        assert_eq!(
            check("/a/x{id}"),
            format!("4:11: endpoint `e` has path `/a/x{{id}}` {bad_param} (segment `x{{id}}`)")
        );
        assert_eq!(
            check("/a/{1d}"),
            format!("4:11: endpoint `e` has path `/a/{{1d}}` {bad_param} (segment `{{1d}}`)")
        );
        assert_eq!(
            check("/a/{*rest}"),
            format!("4:11: endpoint `e` has path `/a/{{*rest}}` {bad_param} (segment `{{*rest}}`)")
        );
        assert_eq!(
            check("/a/{}"),
            format!("4:11: endpoint `e` has path `/a/{{}}` {bad_param} (segment `{{}}`)")
        );
        assert_eq!(
            check("/{id}/x/{id}"),
            "4:11: endpoint `e` has path `/{id}/x/{id}` that uses a parameter name twice (`{id}`)"
        );
        assert_eq!(
            check("/${SECRET}/{x"),
            format!(
                "4:11: endpoint `e` has path `/${{SECRET}}/{{x` (after interpolation) {bad_param}"
            )
        );
        for good in [
            "/",
            "/a/",
            "/hello/{name}",
            "/a/{x}/b/{y_2}",
            "/v1.0/-_~:@!$&'()*+,;=",
        ] {
            assert_eq!(normalise_route(good).map(|_| ()), Ok(()), "{good}");
        }
        assert_eq!(normalise_route("/a/{x}/b/{y}"), Ok("/a/{}/b/{}".to_owned()));
    }

    #[test]
    fn methods_are_checked() {
        let check = |methods: &str| {
            error(&format!(
                "plugins: {{p: {{}}}}\nendpoints:\n  e:\n    path: /\n    methods: {methods}\n"
            ))
        };
        assert_eq!(
            check("[]"),
            "5:14: endpoint `e` has an empty `methods` list"
        );
        assert_eq!(
            check("[GET, \"GE T\"]"),
            "5:20: endpoint `e` has invalid HTTP method `GE T`"
        );
        assert_eq!(
            check("[\"\"]"),
            "5:15: endpoint `e` has invalid HTTP method ``"
        );
        assert_eq!(
            check("[get, GET]"),
            "5:20: endpoint `e` lists method GET twice"
        );
    }

    #[test]
    fn routes_must_not_be_claimed_twice() {
        let base =
            "plugins: {p: {}}\nendpoints:\n  a:\n    path: /a/{x}\n    methods: [GET, POST]\n";
        assert_eq!(
            error(&format!(
                "{base}  b:\n    path: /a/{{y}}\n    methods: [post]\n"
            )),
            "7:11: endpoint `b` claims POST `/a/{y}`, already claimed by endpoint `a` (line 4); \
             parameter names do not make routes different"
        );
        assert_eq!(
            error(&format!("{base}  b:\n    path: /a/{{x}}\n")),
            "7:11: endpoint `b` claims GET `/a/{x}`, already claimed by endpoint `a` (line 4); \
             parameter names do not make routes different"
        );
        let c = parse(&format!(
            "{base}  b:\n    path: /a/{{y}}\n    methods: [DELETE]\n  c:\n    path: /a/x\n  d:\n    path: /a/{{x}}/\n"
        ))
        .unwrap();
        assert_eq!(c.endpoints.len(), 4);
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

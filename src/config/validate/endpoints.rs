//! Checks of `endpoints:`: routes, methods, the serving plugin and the hook list.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_saphyr::{Location, Spanned};

use super::{INVALID, check_name};
use crate::config::checked::{EndpointConfig, PluginConfig};
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::{RawEndpoint, Text};

/// Checks every endpoint against the checked `plugins`.
pub(super) fn check(
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
        if route == RESERVED_PATH {
            let message = format!(
                "endpoint `{n}` has path {}, which the host serves itself (its health report)",
                path.quoted()
            );
            return Err(ip.error(INVALID, path.at, message));
        }
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

/// The methods the server routes (axum's method filters).
pub const SERVED_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
];

/// A path the host answers itself.
const RESERVED_PATH: &str = "/health";

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
        if !SERVED_METHODS.contains(&upper.as_str()) {
            let message = format!(
                "endpoint `{n}` has method {upper}, which the server does not route (use one of {})",
                SERVED_METHODS.join(", ")
            );
            return Err(ip.error(INVALID, method.at, message));
        }
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

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::tests::{TWO, error, parse};

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
}

//! Checking a plugin's config against the JSON Schema the plugin declares, before `initialize`.
//!
//! [`check_config`] is the whole step: values that came from `${VAR}` interpolation
//! ([`Interpolated`]) and that the schema types as an integer, a number or a boolean are turned
//! from text into that type ("8080" → 8080), then the config is validated with the `jsonschema`
//! crate. Every failure is a [`ConfigViolation`] with the JSON pointer of the offending value and
//! the schema's reason; a value from the environment is never quoted in a reason (it may be a
//! secret): the reason names the text as written (`` `${PORT}` ``) instead.
//!
//! The schema is the plugin's, so untrusted: it is compiled without any network or file access
//! (the crate's resolving features are off), and a `$ref` outside the schema fails to compile
//! rather than being fetched.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::HostError;

/// A string of a plugin's config that `${VAR}` interpolation produced: where it is and how it was
/// written, so that the schema can type it and an error can name it without showing its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// The JSON pointer of the value in the config (`/port`, `/servers/0/port`).
    pub pointer: String,
    /// The value as written, before interpolation (`${PORT}`): safe to show.
    pub written: String,
}

/// One way a config fails its plugin's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// The JSON pointer of the offending value (`""` for the whole config; for a missing required
    /// property, the object that lacks it).
    pub pointer: String,
    /// Why, in the schema's words (`42 is not of type "string"`); a value from the environment
    /// is named by how it was written, never shown.
    pub reason: String,
}

impl std::fmt::Display for ConfigViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.reason)
    }
}

/// Parses a plugin's schema text (from its metadata, its vtable or its manifest).
pub(crate) fn parse_schema(plugin: &str, text: &str) -> Result<Value, HostError> {
    serde_json::from_str(text).map_err(|e| HostError::BadSchema {
        plugin: plugin.to_owned(),
        reason: format!("it is not JSON: {e}"),
    })
}

/// Checks `config` of plugin `plugin` against `schema` and returns the config to initialize the
/// plugin with: `config` with the interpolated values the schema types as numbers or booleans
/// converted. A plugin without a `config:` (`null`) is checked as an empty map when its schema
/// does not accept `null` itself, so a required field is still reported; it still gets `null`.
///
/// ```
/// use backworks_plugin_host::{Interpolated, check_config};
/// use serde_json::json;
///
/// let schema = json!({
///     "type": "object",
///     "properties": { "port": { "type": "integer" }, "name": { "type": "string" } },
///     "required": ["name"],
/// });
/// let interpolated = [Interpolated { pointer: "/port".into(), written: "${PORT}".into() }];
/// let typed = check_config("p", &schema, &json!({"name": "a", "port": "8080"}), &interpolated)
///     .unwrap();
/// assert_eq!(typed, json!({"name": "a", "port": 8080}));
///
/// let err = check_config("p", &schema, &json!({"port": "80a"}), &interpolated).unwrap_err();
/// let text = err.to_string();
/// assert!(text.contains("/port: `${PORT}` does not read as an integer"), "{text}");
/// assert!(text.contains(r#""name" is a required property"#), "{text}");
/// assert!(!text.contains("80a"));
/// ```
pub fn check_config(
    plugin: &str,
    schema: &Value,
    config: &Value,
    interpolated: &[Interpolated],
) -> Result<Value, HostError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| HostError::BadSchema {
        plugin: plugin.to_owned(),
        reason: format!("it is not a valid JSON Schema: {}", e.masked()),
    })?;
    let mut typed = config.clone();
    let mut violations = Vec::new();
    for value in interpolated {
        if let Err(reason) = type_value(schema, &mut typed, value) {
            violations.push(ConfigViolation {
                pointer: value.pointer.clone(),
                reason,
            });
        }
    }
    let empty = Value::Object(Default::default());
    let checked = if typed.is_null() && !validator.is_valid(&typed) {
        &empty
    } else {
        &typed
    };
    for error in validator.iter_errors(checked) {
        let pointer = error.instance_path().as_str().to_owned();
        if violations.iter().any(|v| v.pointer == pointer) {
            continue; // already reported as a value that does not read as its type
        }
        // A reason quotes the value it is about; one that holds a value from the environment is
        // named by how it was written instead.
        let secret = interpolated
            .iter()
            .filter(|i| contains(&pointer, &i.pointer))
            .map(|i| i.written.as_str())
            .collect::<Vec<_>>();
        let reason = match secret.as_slice() {
            [] => error.to_string(),
            [written] if interpolated.iter().any(|i| i.pointer == pointer) => {
                error.masked_with(format!("`{written}`")).to_string()
            }
            _ => error.masked_with("the value").to_string(),
        };
        violations.push(ConfigViolation { pointer, reason });
    }
    if violations.is_empty() {
        Ok(typed)
    } else {
        Err(HostError::ConfigInvalid {
            plugin: plugin.to_owned(),
            violations,
        })
    }
}

/// Whether the value at JSON pointer `outer` contains (or is) the one at `inner`.
fn contains(outer: &str, inner: &str) -> bool {
    inner == outer || inner.starts_with(&format!("{outer}/")) || outer.is_empty()
}

/// Turns the interpolated string at `value.pointer` into the number or boolean the schema types
/// it as; leaves it alone where the schema accepts a string or says nothing. The error says what
/// it should read as, naming the value as written.
fn type_value(schema: &Value, config: &mut Value, value: &Interpolated) -> Result<(), String> {
    let Some(slot) = config.pointer_mut(&value.pointer) else {
        return Ok(());
    };
    let Value::String(text) = slot else {
        return Ok(());
    };
    let segments: Vec<String> = value
        .pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut types = BTreeSet::new();
    types_at(schema, schema, &segments, 0, &mut types);
    if types.is_empty() || types.contains("string") {
        return Ok(());
    }
    let trimmed = text.trim();
    let converted = if types.contains("integer")
        && let Some(n) = integer(trimmed)
    {
        Some(n)
    } else if types.contains("number")
        && let Some(n) = integer(trimmed).or_else(|| number(trimmed))
    {
        Some(n)
    } else if types.contains("boolean") {
        match trimmed {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        }
    } else {
        None
    };
    match converted {
        Some(typed) => {
            *slot = typed;
            Ok(())
        }
        None => {
            let expected: Vec<&str> = ["integer", "number", "boolean"]
                .into_iter()
                .filter(|t| types.contains(*t))
                .map(|t| match t {
                    "integer" => "an integer",
                    "number" => "a number",
                    _ => "a boolean (`true` or `false`)",
                })
                .collect();
            if expected.is_empty() {
                // The schema wants an object, an array or null: the validator says so.
                return Ok(());
            }
            Err(format!(
                "`{}` does not read as {}",
                value.written,
                expected.join(" or ")
            ))
        }
    }
}

fn integer(text: &str) -> Option<Value> {
    text.parse::<i64>()
        .map(Value::from)
        .or_else(|_| text.parse::<u64>().map(Value::from))
        .ok()
}

fn number(text: &str) -> Option<Value> {
    let n = text.parse::<f64>().ok().filter(|n| n.is_finite())?;
    serde_json::Number::from_f64(n).map(Value::Number)
}

/// How deep `$ref`s and combinators are followed when looking for a value's type: a schema that
/// refers to itself ends here.
const MAX_DEPTH: usize = 32;

/// Collects the `type`s `schema` (part of `root`) allows at the value reached by `path`: through
/// `properties`, `additionalProperties`, `items`/`prefixItems`, local `$ref`s and
/// `anyOf`/`oneOf`/`allOf` (so `Option<u32>`'s `{"type": ["integer", "null"]}` and
/// `anyOf: [{"$ref": …}, {"type": "null"}]` both work).
fn types_at(
    root: &Value,
    schema: &Value,
    path: &[String],
    depth: usize,
    types: &mut BTreeSet<String>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|r| root.pointer(r))
    {
        types_at(root, target, path, depth + 1, types);
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for member in schema
            .get(combinator)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            types_at(root, member, path, depth + 1, types);
        }
    }
    let Some((first, rest)) = path.split_first() else {
        match schema.get("type") {
            Some(Value::String(t)) => {
                types.insert(t.clone());
            }
            Some(Value::Array(list)) => {
                types.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            _ => {}
        }
        return;
    };
    let mut next = Vec::new();
    if let Some(property) = schema.get("properties").and_then(|p| p.get(first)) {
        next.push(property);
    } else if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        next.push(additional);
    }
    if let Ok(index) = first.parse::<usize>() {
        match schema.get("prefixItems").and_then(|p| p.get(index)) {
            Some(item) => next.push(item),
            None => next.extend(schema.get("items").filter(|i| i.is_object())),
        }
    }
    for child in next {
        types_at(root, child, rest, depth + 1, types);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pointer: &str, written: &str) -> Interpolated {
        Interpolated {
            pointer: pointer.into(),
            written: written.into(),
        }
    }

    fn violations(error: HostError) -> Vec<ConfigViolation> {
        match error {
            HostError::ConfigInvalid { violations, .. } => violations,
            other => panic!("not a config error: {other}"),
        }
    }

    /// What schemars derives for `struct C { port: Option<u16>, debug: bool, inner: Option<Inner>,
    /// ratio: f64, list: Vec<u8> }` with `struct Inner { n: u32 }`.
    fn derived() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "port": {"type": ["integer", "null"], "format": "uint16", "minimum": 0, "maximum": 65535},
                "debug": {"type": "boolean"},
                "inner": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]},
                "ratio": {"type": "number"},
                "list": {"type": "array", "items": {"type": "integer"}},
                "name": {"type": "string"},
            },
            "required": ["debug"],
            "$defs": {"Inner": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        })
    }

    #[test]
    fn interpolated_text_becomes_the_type_the_schema_says() {
        let config = json!({
            "port": "8080", "debug": "true", "inner": {"n": " 7 "}, "ratio": "0.5",
            "list": ["1", "2"], "name": "42",
        });
        let from_env = [
            env("/port", "${PORT}"),
            env("/debug", "${DEBUG}"),
            env("/inner/n", "${N}"),
            env("/ratio", "${R}"),
            env("/list/1", "${L}"),
            env("/name", "${NAME}"),
        ];
        let typed = check_config("p", &derived(), &config, &from_env);
        let mut expected = json!({
            "port": 8080, "debug": true, "inner": {"n": 7}, "ratio": 0.5,
            "list": ["1", 2], "name": "42",
        });
        // `/list/0` was not from the environment: still text, so the schema refuses it.
        let err = violations(typed.unwrap_err());
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].pointer, "/list/0");
        expected["list"][0] = json!(1);
        let mut config = config;
        config["list"][0] = json!(1);
        assert_eq!(
            check_config("p", &derived(), &config, &from_env).unwrap(),
            expected
        );
    }

    #[test]
    fn text_that_does_not_read_names_the_variable_and_not_the_value() {
        let config = json!({"port": "80a", "debug": "yes-secret"});
        let from_env = [env("/port", "${PORT}"), env("/debug", "${DEBUG}")];
        let err = violations(check_config("p", &derived(), &config, &from_env).unwrap_err());
        let text: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "/port: `${PORT}` does not read as an integer",
                "/debug: `${DEBUG}` does not read as a boolean (`true` or `false`)",
            ]
        );
    }

    #[test]
    fn a_schema_violation_at_an_interpolated_value_hides_the_value() {
        let schema =
            json!({"type": "object", "properties": {"key": {"type": "string", "minLength": 40}}});
        let config = json!({"key": "hunter2"});
        let err = check_config("p", &schema, &config, &[env("/key", "${KEY}")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/key: `${KEY}` is shorter than 40"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // The whole config holds the secret too: an error about it does not quote it.
        let schema = json!({"type": "object", "maxProperties": 0});
        let err = check_config("p", &schema, &config, &[env("/key", "${KEY}")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_missing_config_is_checked_as_an_empty_map() {
        let err = violations(check_config("p", &derived(), &Value::Null, &[]).unwrap_err());
        assert_eq!(err[0].pointer, "");
        assert_eq!(err[0].reason, r#""debug" is a required property"#);
        let optional = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(
            check_config("p", &optional, &Value::Null, &[]).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn an_invalid_schema_or_a_remote_ref_is_refused_without_fetching() {
        let err = check_config("p", &json!({"type": 12}), &json!({}), &[]).unwrap_err();
        assert!(matches!(err, HostError::BadSchema { .. }), "{err}");
        let remote = json!({"$ref": "http://127.0.0.1:9/schema.json"});
        let err = check_config("p", &remote, &json!({}), &[]).unwrap_err();
        assert!(matches!(err, HostError::BadSchema { .. }), "{err}");
        let file = json!({"$ref": "file:///etc/passwd"});
        assert!(check_config("p", &file, &json!({}), &[]).is_err());
    }

    #[test]
    fn a_self_referring_schema_ends() {
        let schema = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
        let mut types = BTreeSet::new();
        types_at(&schema, &schema, &["x".into()], 0, &mut types);
        assert!(types.is_empty());
    }
}

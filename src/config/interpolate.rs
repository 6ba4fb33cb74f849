//! `${VAR}` expansion in string values.
//!
//! Syntax, applied to every string value after parsing (never to the raw text, so a value
//! can never change the document's structure):
//!
//! - `${NAME}`: the variable's value; an error when it is not set.
//! - `${NAME:-default}`: the variable's value, or `default` when it is unset or empty. The
//!   default is literal text up to the first `}`.
//! - `$$`: a literal `$`. Any other `$` not followed by `{` is kept as is (`^a$` stays).
//!
//! `NAME` is `[A-Za-z_][A-Za-z0-9_]*`. Errors name the variable and the place, never a
//! value: configuration values that come from the environment are often secrets.

use std::path::Path;

use serde_saphyr::{Location, Spanned};

use super::error::{ConfigError, ConfigErrorKind};
use super::model::{Node, Scalar};

/// Looks up an environment variable; `None` when unset.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a template could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` names a variable that is not set.
    Missing(String),
    /// `${` with no closing `}`.
    Unterminated,
    /// `${...}` whose contents are neither `NAME` nor `NAME:-default` (as written).
    Malformed(String),
}

/// Expands every `${...}` and `$$` of `template`.
pub(crate) fn expand(template: &str, env: EnvLookup<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let close = body_and_tail.find('}').ok_or(ExpandError::Unterminated)?;
            out.push_str(&expand_reference(&body_and_tail[..close], env)?);
            rest = &body_and_tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands the inside of one `${...}`.
fn expand_reference(body: &str, env: EnvLookup<'_>) -> Result<String, ExpandError> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if !is_variable_name(name) {
        return Err(ExpandError::Malformed(format!("${{{body}}}")));
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(ExpandError::Missing(name.to_owned())),
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A string value after expansion, with what was written and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expanded {
    /// The value to use.
    pub value: String,
    /// The text as written in the file (safe to show: it holds no secret).
    pub written: String,
    /// Where it was written.
    pub at: Location,
}

impl Expanded {
    /// The value quoted for an error message without revealing what interpolation produced:
    /// `` `x` ``, or `` `${X}` (after interpolation) ``.
    pub fn quoted(&self) -> String {
        if self.value == self.written {
            format!("`{}`", self.value)
        } else {
            format!("`{}` (after interpolation)", self.written)
        }
    }
}

/// Expands values of one document, turning failures into positioned [`ConfigError`]s.
pub(crate) struct Interpolator<'a> {
    env: EnvLookup<'a>,
    file: &'a Path,
    /// Values the environment gave to strings of plugin configs: secrets, as far as the host
    /// knows (see [`Interpolator::secrets`]).
    secrets: std::cell::RefCell<Vec<String>>,
}

impl<'a> Interpolator<'a> {
    /// An interpolator reading variables from `env`, reporting errors in `file`.
    pub fn new(env: EnvLookup<'a>, file: &'a Path) -> Self {
        Self {
            env,
            file,
            secrets: Default::default(),
        }
    }

    /// The file this document came from.
    pub fn file(&self) -> &Path {
        self.file
    }

    /// Every value the environment gave to a string in a plugin's `config:` (through
    /// [`Interpolator::json`]), which the host must never print or serve. Defaults written in the
    /// file are not secrets; settings of the host itself (ports, paths) are not either.
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.borrow().clone()
    }

    /// Expands a located string.
    pub fn text(&self, text: &Spanned<String>) -> Result<Expanded, ConfigError> {
        let value = self.expand_at(&text.value, text.defined)?;
        Ok(Expanded {
            value,
            written: text.value.clone(),
            at: text.referenced,
        })
    }

    /// Expands a scalar written as a string; other scalars are returned as they are.
    /// The text as written comes along for error messages.
    pub fn scalar(&self, scalar: &Spanned<Scalar>) -> Result<(Scalar, String), ConfigError> {
        match &scalar.value {
            Scalar::Text(template) => {
                let value = self.expand_at(template, scalar.defined)?;
                Ok((Scalar::Text(value), template.clone()))
            }
            other => Ok((other.clone(), String::new())),
        }
    }

    /// Converts any YAML value to JSON, expanding every string in it (keys stay as written).
    pub fn json(&self, node: &Spanned<Node>) -> Result<serde_json::Value, ConfigError> {
        use serde_json::Value;
        Ok(match &node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::UInt(u) => Value::from(*u),
            Node::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(number) => Value::Number(number),
                None => {
                    return Err(self.error(
                        ConfigErrorKind::Invalid,
                        node.referenced,
                        "plugin config cannot hold a non-finite number (NaN or infinity)",
                    ));
                }
            },
            Node::Str(template) => {
                let recording = |name: &str| {
                    let value = (self.env)(name);
                    if let Some(value) = &value {
                        self.secrets.borrow_mut().push(value.clone());
                    }
                    value
                };
                let value =
                    expand(template, &recording).map_err(|e| self.expand_error(e, node.defined))?;
                Value::String(value)
            }
            Node::Seq(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.json(item))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| Ok((key.clone(), self.json(value)?)))
                    .collect::<Result<_, ConfigError>>()?,
            ),
        })
    }

    /// An error of this document at `at`.
    pub fn error(
        &self,
        kind: ConfigErrorKind,
        at: Location,
        message: impl AsRef<str>,
    ) -> ConfigError {
        ConfigError::at(kind, self.file, at, message)
    }

    fn expand_at(&self, template: &str, at: Location) -> Result<String, ConfigError> {
        expand(template, self.env).map_err(|e| self.expand_error(e, at))
    }

    fn expand_error(&self, e: ExpandError, at: Location) -> ConfigError {
        {
            let message = match e {
                ExpandError::Missing(name) => format!(
                    "environment variable `{name}` is not set \
                     (write `${{{name}:-default}}` to give it a default)"
                ),
                ExpandError::Unterminated => {
                    "unterminated `${` in a value (write `$$` for a literal `$`)".to_owned()
                }
                ExpandError::Malformed(reference) => format!(
                    "malformed variable reference `{reference}`: \
                     expected `${{NAME}}` or `${{NAME:-default}}`"
                ),
            };
            self.error(ConfigErrorKind::Interpolation, at, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/op".into()),
            "EMPTY" => Some(String::new()),
            "SECRET" => Some("hunter2".into()),
            _ => None,
        }
    }

    fn run(template: &str) -> Result<String, ExpandError> {
        expand(template, &env)
    }

    #[test]
    fn expands_set_variables() {
        assert_eq!(run("${HOME}/x").unwrap(), "/home/op/x");
        assert_eq!(run("a${HOME}b${HOME}c").unwrap(), "a/home/opb/home/opc");
        assert_eq!(run("${EMPTY}").unwrap(), "");
        assert_eq!(run("plain").unwrap(), "plain");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(run("${NOPE:-3000}").unwrap(), "3000");
        assert_eq!(run("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(run("${HOME:-x}").unwrap(), "/home/op");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
        assert_eq!(run("${NOPE:-a b:-c}").unwrap(), "a b:-c");
    }

    #[test]
    fn dollars() {
        assert_eq!(run("$$").unwrap(), "$");
        assert_eq!(run("$${HOME}").unwrap(), "${HOME}");
        assert_eq!(run("cost: 5$").unwrap(), "cost: 5$");
        assert_eq!(run("^a$b $HOME").unwrap(), "^a$b $HOME");
        assert_eq!(run("$$$${HOME}").unwrap(), "$${HOME}");
        assert_eq!(run("$$${HOME}").unwrap(), "$/home/op");
    }

    #[test]
    fn errors() {
        assert_eq!(run("${NOPE}"), Err(ExpandError::Missing("NOPE".into())));
        assert_eq!(run("x ${HOME"), Err(ExpandError::Unterminated));
        assert_eq!(run("${}"), Err(ExpandError::Malformed("${}".into())));
        assert_eq!(run("${1A}"), Err(ExpandError::Malformed("${1A}".into())));
        assert_eq!(run("${A-b}"), Err(ExpandError::Malformed("${A-b}".into())));
    }

    #[test]
    fn interpolator_errors_name_variable_and_place_but_no_value() {
        let yaml = "a: x\nb:\n  - \"${SECRET} and ${MISSING}\"\n";
        let node: Spanned<Node> = serde_saphyr::from_str(yaml).unwrap();
        let file = Path::new("conf/b.yaml");
        let err = Interpolator::new(&env, file).json(&node).unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Interpolation);
        assert_eq!((err.line(), err.column()), (3, 5));
        assert_eq!(
            err.to_string(),
            "conf/b.yaml:3:5: environment variable `MISSING` is not set \
             (write `${MISSING:-default}` to give it a default)"
        );
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn json_expands_nested_strings_only() {
        let yaml = "key: \"${SECRET}\"\nn: 42\nlist: [\"${NOPE:-d}\", 1.5, null]\n${HOME}: k\n";
        let node: Spanned<Node> = serde_saphyr::from_str(yaml).unwrap();
        let value = Interpolator::new(&env, Path::new("b.yaml"))
            .json(&node)
            .unwrap();
        assert_eq!(
            value,
            serde_json::json!({"key": "hunter2", "n": 42, "list": ["d", 1.5, null], "${HOME}": "k"})
        );
    }

    #[test]
    fn quoted_hides_interpolated_values() {
        let text: Spanned<String> = serde_saphyr::from_str("\"${SECRET}\"").unwrap();
        let expanded = Interpolator::new(&env, Path::new("b.yaml"))
            .text(&text)
            .unwrap();
        assert_eq!(expanded.value, "hunter2");
        assert_eq!(expanded.quoted(), "`${SECRET}` (after interpolation)");
        let plain: Spanned<String> = serde_saphyr::from_str("abc").unwrap();
        let expanded = Interpolator::new(&env, Path::new("b.yaml"))
            .text(&plain)
            .unwrap();
        assert_eq!(expanded.quoted(), "`abc`");
    }
}

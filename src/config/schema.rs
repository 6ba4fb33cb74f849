//! Where each value of a plugin's `config:` was written, so that a violation of the plugin's config
//! schema (reported by the host with a JSON pointer) points at `backworks.yaml:line:column`, and
//! which values came from `${VAR}`, so that the host can type them by the schema.
//!
//! The host checks the config ([`backworks_plugin_host::check_config`]); this module only maps
//! its answers back to the file.

use std::path::{Path, PathBuf};

use backworks_plugin_host::{ConfigViolation, HostError, Interpolated};
use serde_saphyr::{Location, Spanned};

use super::error::{ConfigError, ConfigErrorKind};
use super::model::Node;

/// The places of one plugin's `config:` values, by JSON pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMap {
    file: PathBuf,
    /// The `config:` map itself, or the plugin's name when it has no `config:`.
    root: (u64, u64),
    /// `(pointer, line, column)` of every value, in document order.
    nodes: Vec<(String, u64, u64)>,
    /// The strings written with a `${VAR}` reference.
    interpolated: Vec<Interpolated>,
}

impl ConfigMap {
    /// The map of `config` (absent: everything points at `entry`, the plugin's name) in `file`.
    pub(crate) fn of(file: &Path, entry: Location, config: Option<&Spanned<Node>>) -> ConfigMap {
        let mut map = ConfigMap {
            file: file.to_owned(),
            root: position(entry),
            ..ConfigMap::default()
        };
        if let Some(config) = config {
            map.root = position(config.referenced);
            map.walk(String::new(), config);
        }
        map
    }

    fn walk(&mut self, pointer: String, node: &Spanned<Node>) {
        let (line, column) = position(node.referenced);
        self.nodes.push((pointer.clone(), line, column));
        match &node.value {
            Node::Str(written) if written.contains("${") => self.interpolated.push(Interpolated {
                pointer,
                written: written.clone(),
            }),
            Node::Seq(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.walk(format!("{pointer}/{index}"), item);
                }
            }
            Node::Map(entries) => {
                for (key, value) in entries {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    self.walk(format!("{pointer}/{key}"), value);
                }
            }
            _ => {}
        }
    }

    /// The strings of the config that `${VAR}` interpolation produced, for
    /// [`PluginSpec::interpolated`](backworks_plugin_host::PluginSpec::interpolated).
    pub fn interpolated(&self) -> &[Interpolated] {
        &self.interpolated
    }

    /// Where the value at `pointer` was written: its own node, else its nearest written parent
    /// (a missing property points at the map that lacks it).
    pub fn position(&self, pointer: &str) -> (u64, u64) {
        let mut pointer = pointer;
        loop {
            if let Some((_, line, column)) = self.nodes.iter().find(|(p, ..)| p == pointer) {
                return (*line, *column);
            }
            match pointer.rfind('/') {
                Some(cut) => pointer = &pointer[..cut],
                None => return self.root,
            }
        }
    }

    /// One violation of plugin `plugin`'s schema as a positioned error:
    /// `backworks.yaml:14:18: plugin "hello": config field /greeting: 42 is not of type "string"`.
    pub fn error(&self, plugin: &str, violation: &ConfigViolation) -> ConfigError {
        let (line, column) = self.position(&violation.pointer);
        let field = if violation.pointer.is_empty() {
            "config".to_owned()
        } else {
            format!("config field {}", violation.pointer)
        };
        ConfigError::new(
            ConfigErrorKind::Invalid,
            &self.file,
            line,
            column,
            format!("plugin \"{plugin}\": {field}: {}", violation.reason),
        )
    }

    /// Each violation of a [`HostError::ConfigInvalid`] as a positioned error; `None` for any
    /// other error.
    pub fn errors(&self, plugin: &str, error: &HostError) -> Option<Vec<ConfigError>> {
        match error {
            HostError::ConfigInvalid { violations, .. } => {
                Some(violations.iter().map(|v| self.error(plugin, v)).collect())
            }
            _ => None,
        }
    }
}

fn position(location: Location) -> (u64, u64) {
    (location.line(), location.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(yaml: &str) -> ConfigMap {
        let node: Spanned<Node> = serde_saphyr::from_str(yaml).unwrap();
        let entry = node.referenced;
        ConfigMap::of(Path::new("b.yaml"), entry, Some(&node))
    }

    #[test]
    fn pointers_lead_to_the_line_and_column_of_their_value() {
        let map = map("greeting: 42\nlist:\n  - a\n  - {x/y: \"${PORT}\"}\n");
        assert_eq!(map.position("/greeting"), (1, 11));
        assert_eq!(map.position("/list/1/x~1y"), (4, 11));
        // Not written (a missing property): the nearest parent that was.
        assert_eq!(map.position("/list/1/nope"), map.position("/list/1"));
        assert_eq!(map.position(""), (1, 1));
        assert_eq!(
            map.interpolated(),
            [Interpolated {
                pointer: "/list/1/x~1y".into(),
                written: "${PORT}".into()
            }]
        );
    }

    #[test]
    fn a_violation_reads_like_a_compiler_error() {
        let map = map("greeting: 42\n");
        let schema = json!({"type": "object", "properties": {"greeting": {"type": "string"}}, "required": ["name"]});
        let error =
            backworks_plugin_host::check_config("hello", &schema, &json!({"greeting": 42}), &[])
                .unwrap_err();
        let text: Vec<String> = map
            .errors("hello", &error)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                r#"b.yaml:1:1: plugin "hello": config: "name" is a required property"#,
                r#"b.yaml:1:11: plugin "hello": config field /greeting: 42 is not of type "string""#,
            ]
        );
    }
}

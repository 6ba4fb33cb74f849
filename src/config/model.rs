//! The configuration file as written: serde types, every value carrying its source location.
//!
//! Nothing here has effects or knows about environment variables. Strings are kept exactly
//! as written (`${VAR}` unexpanded); [`super::validate`] expands them and checks the rules.
//! Every struct denies unknown fields, so a typo is an error that points at the typo.

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A string value with its location.
pub(crate) type Text = Spanned<String>;

/// The whole document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<RawServer>,
    pub plugin_dirs: Option<Vec<Spanned<RawPluginDir>>>,
    /// Spanned<Option<..>> so that `name:` with no body is a plugin with every default.
    pub plugins: Option<IndexMap<Text, Spanned<Option<RawPlugin>>>>,
    pub endpoints: Option<IndexMap<Text, Spanned<RawEndpoint>>>,
    pub health: Option<RawHealth>,
    pub reload: Option<RawReload>,
    pub trust: Option<RawTrust>,
    pub marketplace: Option<super::marketplace::RawMarketplace>,
}

/// A number (or a string that becomes one after interpolation), with its location.
pub(crate) type Number = Spanned<Scalar>;

/// `server:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub host: Option<Text>,
    pub port: Option<Number>,
    pub max_request_body: Option<Number>,
    pub admin: Option<RawAdmin>,
    pub header_read_timeout_ms: Option<Number>,
    pub idle_timeout_ms: Option<Number>,
    pub body_read_timeout_ms: Option<Number>,
    pub max_connections: Option<Number>,
    pub backlog: Option<Number>,
}

/// `server.admin:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub enabled: Option<Number>,
    pub host: Option<Text>,
    pub port: Option<Number>,
    pub token: Option<Text>,
}

/// `reload:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReload {
    pub watch: Option<Number>,
    pub watch_interval_ms: Option<Number>,
    pub drain_timeout_ms: Option<Number>,
    pub max_generations: Option<Number>,
}

/// `health:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub interval_ms: Option<Number>,
    pub timeout_ms: Option<Number>,
}

/// One entry of `plugin_dirs:`: a bare path, or `{path: ..., recursive: ...}`.
#[derive(Debug)]
pub(crate) enum RawPluginDir {
    Path(String),
    Table(RawPluginDirTable),
}

/// The map form of a `plugin_dirs:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPluginDirTable {
    pub path: Text,
    pub recursive: Option<Spanned<Scalar>>,
}

/// One entry of `plugins:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    pub path: Option<Text>,
    pub enabled: Option<Spanned<Scalar>>,
    pub config: Option<Spanned<Node>>,
    pub hooks: Option<Vec<Text>>,
    pub on_failure: Option<RawOnFailure>,
    pub observe_queue: Option<Number>,
    pub order: Option<Number>,
    pub important: Option<Number>,
    pub timeout_ms: Option<Number>,
    pub max_concurrency: Option<Number>,
    pub workers: Option<Number>,
    pub max_response_body: Option<Number>,
    pub breaker: Option<RawBreaker>,
    pub isolation: Option<Text>,
    pub command: Option<Spanned<Vec<Text>>>,
    pub limits: Option<RawLimits>,
    pub restart: Option<RawRestart>,
    pub handshake_timeout_ms: Option<Number>,
    pub max_frame: Option<Number>,
    pub spin_us: Option<Number>,
    pub max_outbound: Option<Number>,
    pub env: Option<RawEnv>,
    /// `type: marketplace`: the semver requirement of the version installed.
    pub version: Option<Text>,
}

/// A process-isolated plugin's `env:`: what the child gets beyond the minimal environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnv {
    /// Names of the host's variables passed through as they are.
    pub pass: Option<Vec<Text>>,
    /// Variables set to these values (interpolated like any other string).
    pub set: Option<IndexMap<Text, Number>>,
}

/// A plugin's `on_failure:`: what a failure of each of its hooks does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOnFailure {
    pub before_request: Option<Text>,
    pub after_response: Option<Text>,
}

/// A plugin's `breaker:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub enabled: Option<Number>,
    pub consecutive_failures: Option<Number>,
    pub failure_rate: Option<Number>,
    pub window_ms: Option<Number>,
    pub min_calls: Option<Number>,
    pub cooldown_ms: Option<Number>,
    pub half_open_probes: Option<Number>,
    pub count_5xx: Option<Number>,
}

/// A process-isolated plugin's `limits:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub memory_mb: Option<Number>,
    pub cpu_seconds: Option<Number>,
    pub open_files: Option<Number>,
}

/// A process-isolated plugin's `restart:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestart {
    pub initial_backoff_ms: Option<Number>,
    pub max_backoff_ms: Option<Number>,
    pub max_restarts: Option<Number>,
    pub window_ms: Option<Number>,
}

/// One entry of `endpoints:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub path: Text,
    pub methods: Option<Spanned<Vec<Text>>>,
    pub plugin: Option<Text>,
    pub hooks: Option<Spanned<Vec<Text>>>,
}

/// `trust:`: the keys plugin signatures are checked against.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrust {
    pub keys: Option<Vec<Spanned<RawTrustKey>>>,
    pub require_signatures: Option<Spanned<Scalar>>,
    /// `strict` (the default) or `relaxed`.
    pub file_checks: Option<Text>,
}

/// One entry of `trust.keys:`: a bare public key, or `{id: ..., public_key: ...}`.
#[derive(Debug)]
pub(crate) enum RawTrustKey {
    Key(String),
    Table(RawTrustKeyTable),
}

/// The map form of a `trust.keys:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrustKeyTable {
    pub id: Option<Text>,
    pub public_key: Text,
}

impl<'de> Deserialize<'de> for RawTrustKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawTrustKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a minisign public key, or a map with `id` and `public_key`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTrustKey::Key(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawTrustKeyTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawTrustKey::Table)
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// A scalar setting (number or boolean) that may also be written as a string, so that it
/// can come from the environment: `port: ${PORT:-3000}`. Validation converts it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
}

/// Any YAML value (plugin `config:`), with a location on every node so that interpolation
/// errors inside it point at the offending string.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    /// Keys are kept as written; YAML scalar keys (`404:`) become their text.
    Map(IndexMap<String, Spanned<Node>>),
}

impl<'de> Deserialize<'de> for RawPluginDir {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DirVisitor;

        impl<'de> Visitor<'de> for DirVisitor {
            type Value = RawPluginDir;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a directory path, or a map with `path` and `recursive`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawPluginDir::Path(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // The fields are read from the YAML deserializer itself, so their spans
                // and unknown-field errors keep their positions.
                RawPluginDirTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawPluginDir::Table)
            }
        }

        deserializer.deserialize_any(DirVisitor)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a boolean or a string")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Node::Null)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Node::Null)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Node::deserialize(d)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Node::Bool(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Node::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Node::UInt(v))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Node::Float(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Node::Str(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Node::Str(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = IndexMap::new();
                while let Some((key, value)) = map.next_entry::<String, Spanned<Node>>()? {
                    entries.insert(key, value);
                }
                Ok(Node::Map(entries))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, String> {
        serde_saphyr::from_str(text).map_err(|e| {
            let loc = e.location().map(|l| (l.line(), l.column()));
            format!("{loc:?} {e}")
        })
    }

    #[test]
    fn empty_document_is_all_defaults() {
        let raw = parse("# nothing here\n").unwrap();
        assert!(raw.server.is_none() && raw.plugins.is_none() && raw.endpoints.is_none());
        assert!(raw.plugin_dirs.is_none());
    }

    #[test]
    fn plugin_without_body_is_all_defaults() {
        let raw = parse("plugins:\n  request-id:\n  b: {}\n").unwrap();
        let plugins = raw.plugins.unwrap();
        let (name, body) = plugins.get_index(0).unwrap();
        assert_eq!(name.value, "request-id");
        assert_eq!((name.referenced.line(), name.referenced.column()), (2, 3));
        assert!(body.value.is_none());
        assert!(plugins[1].value.is_some());
    }

    #[test]
    fn plugin_dirs_take_both_forms() {
        let raw = parse("plugin_dirs:\n  - plugins\n  - {path: lib, recursive: true}\n").unwrap();
        let dirs = raw.plugin_dirs.unwrap();
        assert!(matches!(&dirs[0].value, RawPluginDir::Path(p) if p == "plugins"));
        assert_eq!(dirs[0].referenced.line(), 2);
        let RawPluginDir::Table(table) = &dirs[1].value else {
            panic!("expected a table: {dirs:?}");
        };
        assert_eq!(table.path.value, "lib");
        assert_eq!(table.path.referenced.line(), 3);
        assert_eq!(table.recursive.as_ref().unwrap().value, Scalar::Bool(true));
    }

    #[test]
    fn unknown_field_in_plugin_dir_table_has_position() {
        let err = parse("plugin_dirs:\n  - {path: lib, recursiv: true}\n").unwrap_err();
        assert!(err.starts_with("Some((2, 17))"), "{err}");
        assert!(err.contains("unknown field `recursiv`"), "{err}");
    }

    #[test]
    fn scalars_keep_their_type() {
        let raw = parse("server:\n  port: 8080\n").unwrap();
        assert_eq!(raw.server.unwrap().port.unwrap().value, Scalar::Int(8080));
        let raw = parse("server:\n  port: \"${PORT:-1}\"\n").unwrap();
        let port = raw.server.unwrap().port.unwrap();
        assert_eq!(port.value, Scalar::Text("${PORT:-1}".into()));
        assert_eq!((port.referenced.line(), port.referenced.column()), (2, 9));
    }

    #[test]
    fn nodes_keep_every_location() {
        let raw = parse(
            "plugins:\n  p:\n    config:\n      a: [1, -2, 1.5, null, true, 'x']\n      404: z\n",
        )
        .unwrap();
        let plugins = raw.plugins.unwrap();
        let config = plugins[0].value.as_ref().unwrap().config.as_ref().unwrap();
        let Node::Map(map) = &config.value else {
            panic!("{config:?}");
        };
        let Node::Seq(items) = &map["a"].value else {
            panic!("{map:?}");
        };
        let values: Vec<_> = items.iter().map(|n| n.value.clone()).collect();
        assert_eq!(
            values,
            [
                Node::UInt(1),
                Node::Int(-2),
                Node::Float(1.5),
                Node::Null,
                Node::Bool(true),
                Node::Str("x".into())
            ]
        );
        assert_eq!(
            (items[5].referenced.line(), items[5].referenced.column()),
            (4, 35)
        );
        assert_eq!(map["404"].value, Node::Str("z".into()));
    }
}

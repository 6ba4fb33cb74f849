//! Reading a configuration file: read → parse → interpolate → validate.

use std::fs;
use std::path::{Path, PathBuf};

use super::checked::Config;
use super::error::{ConfigError, ConfigErrorKind};
use super::model::RawConfig;
use super::validate;

/// Reads, parses and checks the configuration file at `path`, expanding `${VAR}` from the
/// process environment.
///
/// [`Config::base_dir`] is the file's directory, made absolute (without resolving symbolic
/// links) so that later changes of the working directory do not move plugin paths.
///
/// # Errors
///
/// Every error names the file and, except when the file cannot be read, the line and
/// column of the offending text.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|e| {
        let message = format!("cannot read configuration file: {e}");
        ConfigError::new(ConfigErrorKind::Io, path, 0, 0, message)
    })?;
    let dir = directory_of(path);
    let base_dir = std::path::absolute(&dir).unwrap_or(dir);
    let mut config = parse(&text, path, &base_dir, &process_env)?;
    super::marketplace::resolve(&mut config)?;
    Ok(config)
}

/// As [`load`], but `type: marketplace` plugins stay [`super::PluginKind::Marketplace`]: what
/// `backworks plugin install|update|remove` read, since they run before the lock file has an
/// entry for every plugin.
///
/// # Errors
///
/// As [`load`], minus the lock file's.
pub fn load_unresolved(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|e| {
        let message = format!("cannot read configuration file: {e}");
        ConfigError::new(ConfigErrorKind::Io, path, 0, 0, message)
    })?;
    let dir = directory_of(path);
    let base_dir = std::path::absolute(&dir).unwrap_or(dir);
    parse(&text, path, &base_dir, &process_env)
}

/// Parses and checks configuration `text` as if read from the file `source`, expanding
/// `${VAR}` from the process environment.
///
/// `source` is used in error messages, and its parent directory (`.` when it has none) as
/// [`Config::base_dir`]; the file itself is not read.
///
/// # Errors
///
/// As [`load`], minus the I/O errors.
pub fn parse_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
    parse_str_with_env(text, source, &process_env)
}

/// As [`parse_str`], with environment variables looked up through `env` (which returns
/// `None` for an unset variable), so that tests need not touch the process environment.
///
/// # Errors
///
/// As [`parse_str`].
pub fn parse_str_with_env(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    parse(text, source, &directory_of(source), env)
}

fn parse(
    text: &str,
    source: &Path,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // YAML 1.2 booleans only: `country: NO` stays a string (the "Norway problem").
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    let raw: RawConfig = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ConfigError::from_yaml(source, &e))?;
    validate::check(&raw, source, base_dir, env)
}

/// A variable that is not valid Unicode counts as unset.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PluginKind, ServerConfig};
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "BLOOMBERG_API_KEY" => Some("bbg-secret-123".into()),
            "PORT" => Some("8081".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str_with_env(text, Path::new("conf/backworks.yaml"), &env)
    }

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/config")
            .join(name)
    }

    const SEED: &str = r#"
plugins:
  my-plugin:
    type: "external"
    path: "./plugins/libmy_plugin.so"
    config:
      setting1: "value1"
      setting2: 42

endpoints:
  my-feature:
    path: "/my-feature"
    methods: ["GET", "POST"]
    # Handled by my-plugin
"#;

    #[test]
    fn seed_example_is_accepted_unchanged() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.source, Path::new("conf/backworks.yaml"));
        assert_eq!(c.base_dir, Path::new("conf"));
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.plugin_dirs.len(), 1);
        assert_eq!(c.plugin_dirs[0].path, Path::new("conf/plugins"));
        assert!(!c.plugin_dirs[0].recursive);
        let p = &c.plugins[0];
        assert_eq!(p.name, "my-plugin");
        assert_eq!(
            p.kind,
            PluginKind::External {
                path: "./plugins/libmy_plugin.so".into()
            }
        );
        assert!(p.enabled, "enabled defaults to true");
        assert_eq!(p.config, json!({"setting1": "value1", "setting2": 42}));
        assert!(!p.has_hooks());
        assert_eq!(p.order, 0);
        let e = &c.endpoints[0];
        assert_eq!(e.name, "my-feature");
        assert_eq!(e.path, "/my-feature");
        assert_eq!(e.methods, ["GET", "POST"]);
        assert_eq!(e.plugin, "my-plugin", "the only plugin serves it");
        assert_eq!(e.hooks, None);
    }

    #[test]
    fn seed_secret_interpolation_in_plugin_config() {
        let c = parse(
            "plugins:\n  bloomberg:\n    path: libbbg.so\n    config:\n      \
             api_key: \"${BLOOMBERG_API_KEY}\"\n      nested: [{url: \"${BBG_URL:-https://x}\"}]\n",
        )
        .unwrap();
        assert_eq!(
            c.plugins[0].config,
            json!({"api_key": "bbg-secret-123", "nested": [{"url": "https://x"}]})
        );
    }

    #[test]
    fn missing_variable_points_at_value_and_hides_secrets() {
        let text = "plugins:\n  p:\n    config:\n      key: ${BLOOMBERG_API_KEY}\n      \
                    other: ${NOT_SET}\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Interpolation);
        assert_eq!(
            err.to_string(),
            "conf/backworks.yaml:5:14: environment variable `NOT_SET` is not set \
             (write `${NOT_SET:-default}` to give it a default)"
        );
        assert!(!format!("{err:?}").contains("bbg-secret"));
    }

    #[test]
    fn every_string_is_interpolated() {
        let text = "server:\n  host: ${HOST:-0.0.0.0}\n  port: ${PORT}\n\
                    plugin_dirs: [\"${DIR:-lib}\"]\n\
                    plugins:\n  p:\n    path: ${LIB:-libp.so}\n    enabled: ${ON:-false}\n\
                    endpoints:\n  e:\n    path: /${SEG:-v1}/x\n    methods: [\"${M:-post}\"]\n\
                    \x20   plugin: ${P:-p}\n";
        let c = parse(text).unwrap();
        assert_eq!((c.server.host.as_str(), c.server.port), ("0.0.0.0", 8081));
        assert_eq!(c.plugin_dirs[0].path, Path::new("conf/lib"));
        assert_eq!(
            c.plugins[0].kind,
            PluginKind::External {
                path: "libp.so".into()
            }
        );
        assert!(!c.plugins[0].enabled);
        assert_eq!(c.endpoints[0].path, "/v1/x");
        assert_eq!(c.endpoints[0].methods, ["POST"]);
        assert_eq!(c.endpoints[0].plugin, "p");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        let c = parse("plugins:\n  p:\n    config: {price: \"$$5 ${X:-$$}\", re: ^a$}\n").unwrap();
        assert_eq!(c.plugins[0].config, json!({"price": "$5 $$", "re": "^a$"}));
    }

    #[test]
    fn booleans_are_yaml_1_2() {
        let c =
            parse("plugins:\n  p:\n    enabled: False\n    config: {country: NO, on: yes, y: n}\n")
                .unwrap();
        assert!(!c.plugins[0].enabled);
        assert_eq!(
            c.plugins[0].config,
            json!({"country": "NO", "on": "yes", "y": "n"})
        );
        let err = parse("plugins:\n  p:\n    enabled: yes\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf/backworks.yaml:3:14: `enabled` of plugin `p` must be `true` or `false`, found `yes`"
        );
    }

    #[test]
    fn malformed_yaml_has_line_and_column() {
        let err = parse("plugins:\n  p:\n    config: {a: 1\nendpoints: {}\n").unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Parse);
        assert_eq!(
            err.to_string(),
            "conf/backworks.yaml:4:10: while parsing a flow mapping, did not find expected ',' or '}'"
        );

        let err = parse("plugins:\n  p:\n    config: [1, 2\n").unwrap_err();
        assert_eq!(
            (err.kind(), err.line(), err.column()),
            (ConfigErrorKind::Parse, 3, 13),
            "{err}"
        );

        let err = parse("server:\n\thost: x\n").unwrap_err();
        assert_eq!(err.line(), 2, "{err}");
        assert!(err.message().contains("tab"), "{err}");
    }

    #[test]
    fn unknown_field_is_named_with_position() {
        let err = parse("plugins:\n  p:\n    path: libp.so\n    enable: false\n").unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Parse);
        assert_eq!((err.line(), err.column()), (4, 5));
        assert!(err.message().starts_with("unknown field `enable`"), "{err}");

        let err = parse("server: {host: a, prot: 1}\n").unwrap_err();
        assert_eq!((err.line(), err.column()), (1, 19), "{err}");
        assert!(err.message().contains("`prot`"), "{err}");

        let err = parse("endpoint: {}\n").unwrap_err();
        assert_eq!((err.line(), err.column()), (1, 1), "{err}");
        assert!(err.message().contains("`endpoint`"), "{err}");
    }

    #[test]
    fn wrong_types_and_duplicates_have_positions() {
        let err = parse("endpoints:\n  e:\n    path: /x\n    methods: GET\n").unwrap_err();
        assert_eq!(
            (err.kind(), err.line(), err.column()),
            (ConfigErrorKind::Parse, 4, 14)
        );

        let err = parse("plugins:\n  a: {}\n  a: {}\n").unwrap_err();
        assert_eq!((err.line(), err.column()), (3, 3), "{err}");
        assert!(err.message().contains("duplicate"), "{err}");

        let err = parse("endpoints:\n  e:\n    methods: [GET]\n").unwrap_err();
        assert_eq!(err.line(), 3, "{err}");
        assert!(err.message().contains("missing field `path`"), "{err}");
    }

    #[test]
    fn load_reads_files_and_makes_base_dir_absolute() {
        let c = load(&data("seed.yaml")).unwrap();
        assert!(c.base_dir.is_absolute());
        assert_eq!(c.base_dir, data(""));
        assert_eq!(c.endpoints[0].plugin, "my-plugin");
        assert_eq!(c.plugins[0].config["setting2"], 42);

        let c = load(&data("full.yaml")).unwrap();
        assert_eq!(c.plugins.len(), 3);
        assert_eq!(c.endpoints.len(), 3);
    }

    #[test]
    fn full_example_settings_and_hook_chains() {
        let text = fs::read_to_string(data("full.yaml")).unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(c.server.port, 8081);
        let dirs: Vec<_> = c
            .plugin_dirs
            .iter()
            .map(|d| (d.path.clone(), d.recursive))
            .collect();
        assert_eq!(
            dirs,
            [
                ("conf/plugins".into(), false),
                ("conf/target/release".into(), false)
            ]
        );
        let auth = c.plugin("auth").unwrap();
        assert_eq!(auth.config, json!({"api_key": "dev-key"}));
        assert!(auth.before_request.is_some() && auth.after_response.is_none());
        let request_id = c.plugin("request-id").unwrap();
        assert_eq!(
            (request_id.kind.clone(), request_id.order),
            (PluginKind::Builtin, -10)
        );
        let chain = |endpoint: usize| -> Vec<&str> {
            c.hook_chain(&c.endpoints[endpoint])
                .iter()
                .map(|p| p.name.as_str())
                .collect()
        };
        assert_eq!(chain(0), ["request-id", "auth"]);
        assert_eq!(chain(1), ["request-id"]);
        assert!(chain(2).is_empty());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!(
            "plugins:\n  p:\n    config: {}{}\n",
            "[".repeat(500),
            "]".repeat(500)
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(
            (err.kind(), err.line()),
            (ConfigErrorKind::Parse, 3),
            "{err}"
        );
        assert!(err.column() > 0, "{err}");
    }

    #[test]
    fn unreadable_file_is_an_io_error_without_position() {
        let missing = data("no-such-file.yaml");
        let err = load(&missing).unwrap_err();
        assert_eq!(
            (err.kind(), err.line(), err.column()),
            (ConfigErrorKind::Io, 0, 0)
        );
        assert!(err.to_string().starts_with(&format!(
            "{}: cannot read configuration file: ",
            missing.display()
        )));
    }

    #[test]
    fn bare_source_name_uses_current_directory() {
        let c = parse_str_with_env("", Path::new("backworks.yaml"), &env).unwrap();
        assert_eq!(c.base_dir, Path::new("."));
        assert!(c.plugins.is_empty() && c.endpoints.is_empty());
    }
}

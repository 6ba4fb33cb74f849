//! `plugin check LIB | -- COMMAND…`: the testkit's conformance battery against any plugin, a
//! library in any language or a program speaking the wire protocol.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use backworks_plugin_host::LIBRARY_EXTENSION;
use backworks_plugin_testkit::Conformance;
use serde_json::Value;

/// The arguments of `plugin check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plugin: a library file, or a command and its arguments after `--`
    /// (`backworks plugin check -- python3 plugin.py`).
    #[arg(required = true, num_args = 1.., value_name = "LIB|COMMAND")]
    plugin: Vec<String>,
    /// The config the plugin must accept: JSON, or a JSON or YAML file.
    #[arg(long, value_name = "JSON_OR_FILE")]
    config: Option<String>,
    /// A config the plugin must refuse with an error (repeatable): JSON, or a JSON or YAML file.
    /// Default: a number and a string, which it may refuse or ignore.
    #[arg(long = "bad-config", value_name = "JSON_OR_FILE")]
    bad_config: Vec<String>,
    /// An endpoint the plugin serves, as a request: `"GET /hello/ana"` (repeatable).
    #[arg(long, value_name = "METHOD /PATH")]
    endpoint: Vec<String>,
    /// Run a library in a child process, as `isolation: process` does (a command always is).
    #[arg(long)]
    isolated: bool,
    /// Calls made at once by the concurrency check, and dropped by the cancellation check.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Calls per round of the memory check.
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Seconds any one call may take before its check fails as a hang.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    deadline: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the battery and prints its report: exit 0 when every check passed (or was skipped), 1
/// otherwise.
pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let mut battery = match args.plugin.as_slice() {
        [lib] if Path::new(lib).extension().and_then(|e| e.to_str()) == Some(LIBRARY_EXTENSION) => {
            Conformance::library(lib)
        }
        [program, rest @ ..] => Conformance::command(program, rest),
        [] => anyhow::bail!("name the plugin: a library file, or `-- COMMAND ARGS…`"),
    };
    if let Some(config) = &args.config {
        battery = battery.config(value_of("--config", config)?);
    }
    for config in &args.bad_config {
        battery = battery.bad_config(value_of("--bad-config", config)?);
    }
    for endpoint in &args.endpoint {
        let (method, path) = endpoint
            .trim()
            .split_once(char::is_whitespace)
            .filter(|(_, path)| path.trim_start().starts_with('/'))
            .with_context(|| {
                format!(
                    "--endpoint {endpoint:?}: write it as a method and a path, \"GET /hello/ana\""
                )
            })?;
        battery = battery.endpoint(method, path.trim());
    }
    if !(args.deadline > 0.0 && args.deadline.is_finite()) {
        anyhow::bail!(
            "--deadline {}: give a number of seconds above 0",
            args.deadline
        );
    }
    // Children run in this executable's plugin runner, like `backworks serve`'s.
    let runner = std::env::current_exe().context("cannot find the backworks executable")?;
    let report = battery
        .isolated(args.isolated)
        .runner(runner)
        .concurrency(args.concurrency)
        .calls(args.calls)
        .deadline(Duration::from_secs_f64(args.deadline))
        .run();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// A config given as `text`: JSON, or the path of a JSON or YAML file.
fn value_of(flag: &str, text: &str) -> anyhow::Result<Value> {
    let path = Path::new(text);
    if path.is_file() {
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
        return match serde_json::from_str(&content) {
            Ok(value) => Ok(value),
            Err(_) => serde_saphyr::from_str(&content)
                .with_context(|| format!("{flag}: {} is neither JSON nor YAML", path.display())),
        };
    }
    serde_json::from_str(text).with_context(|| {
        format!("{flag} {text:?}: not a file, and not JSON (quote strings: '\"text\"')")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_json_or_files_of_json_or_yaml() {
        assert_eq!(
            value_of("--config", r#"{"greeting":"Hi"}"#).unwrap(),
            serde_json::json!({"greeting": "Hi"})
        );
        assert_eq!(value_of("--config", "42").unwrap(), serde_json::json!(42));
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("config.yaml");
        std::fs::write(&yaml, "greeting: Hi\nchannels: [ops]\n").unwrap();
        assert_eq!(
            value_of("--config", yaml.to_str().unwrap()).unwrap(),
            serde_json::json!({"greeting": "Hi", "channels": ["ops"]})
        );
        let error = value_of("--bad-config", "greeting: Hi").unwrap_err();
        assert!(
            format!("{error:#}")
                .contains("--bad-config \"greeting: Hi\": not a file, and not JSON"),
            "{error:#}"
        );
    }
}

//! `plugin list`, `plugin inspect` and `validate`: they read plugin files, never load them.

use std::collections::HashSet;
use std::path::Path;

use backworks_plugin_host::Isolation;
use backworks_plugin_host::{FileChecks, check_file};
use backworks_plugin_host::{Inspection, inspect as inspect_file, supported_sdk};
use backworks_plugin_host::{ScanDir, discover};
use backworks_plugin_host::{TrustPolicy, Verdict, check_signature};
use serde_json::{Value, json};

use crate::config::{Config, PluginConfig, PluginKind, TrustConfig};

fn inspection_json(inspection: &Inspection) -> Value {
    let m = &inspection.metadata;
    json!({
        "path": inspection.path,
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "sdk_version": m.sdk_version,
        "abi": format!("{}.{}", m.abi_major, m.abi_minor),
        "panic": if m.panic_unwind { "unwind" } else { "abort" },
        "hooks_implemented": m.hooks.map(|h| h.names().collect::<Vec<_>>()),
        "compatible": inspection.compatibility.is_ok(),
        "compatible_isolated": inspection.runs_in_child(),
        "problem": inspection.compatibility.as_ref().err().map(|e| e.to_string()),
    })
}

/// `plugin inspect FILE`: exit 0 when the host can load it in process, 1 when it cannot (a
/// `panic = "abort"` plugin, which runs only under `isolation: process`, included).
pub fn inspect(file: &Path, as_json: bool, config: &Path) -> anyhow::Result<i32> {
    let result = inspect_file(file);
    // The config's `trust:` judges the file (its checks and its signature) when there is a
    // config; without one, the defaults: strict file checks, no trusted keys.
    let trust = if config.exists() {
        match crate::config::load(config) {
            Ok(config) => config.trust,
            Err(e) => {
                eprintln!("warning: {e}; judging the file with the default trust settings");
                TrustConfig::default()
            }
        }
    } else {
        TrustConfig::default()
    };
    let checks = check_file(file, trust.file_checks);
    let mut signature = json!({});
    add_signature(&mut signature, file, &trust.signatures, None);
    let refused = trust.signatures.require_signatures && signature["signature_valid"] != true;
    if as_json {
        let mut value = inspect_row(file, trust.file_checks);
        merge(&mut value, &signature);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match &result {
            Ok(i) => {
                let m = &i.metadata;
                println!("file:        {}", i.path.display());
                println!("name:        {}", m.name);
                println!("version:     {}", m.version);
                println!("description: {}", m.description);
                println!(
                    "sdk:         {} (host loads {})",
                    m.sdk_version,
                    supported_sdk()
                );
                println!("abi:         {}.{}", m.abi_major, m.abi_minor);
                match m.hooks {
                    Some(hooks) if hooks.is_empty() => println!("hooks:       none"),
                    Some(hooks) => println!(
                        "hooks:       {}",
                        hooks.names().collect::<Vec<_>>().join(", ")
                    ),
                    None => {
                        println!("hooks:       not declared (built before hooks were declared)")
                    }
                }
                match &i.compatibility {
                    Ok(()) => println!("compatible:  yes"),
                    Err(e) if i.runs_in_child() => {
                        println!("compatible:  only with `isolation: process`: {e}");
                    }
                    Err(e) => println!("compatible:  no: {e}"),
                }
            }
            Err(e) => println!("error: {e}"),
        }
        let mode = trust.file_checks.as_str();
        match &checks {
            Ok(()) => println!("file checks: ok ({mode})"),
            Err(e) => println!(
                "file checks: refused ({mode}; `trust.file_checks: relaxed` would load it): {e}"
            ),
        }
        println!(
            "signature:   {}",
            signature["signature"].as_str().unwrap_or("-")
        );
        if let Some(problem) = signature["signature_problem"].as_str() {
            println!("             {problem}");
        }
    }
    Ok(match result {
        Ok(i) if i.compatibility.is_ok() && checks.is_ok() && !refused => 0,
        _ => 1,
    })
}

/// Compares the hooks `plugin`'s entry calls with those its file declares: one it does not
/// implement makes the row incompatible; a declared `before_request` left unsubscribed is a
/// warning (an auth check that never runs).
fn check_hooks(row: &mut Value, plugin: &PluginConfig) {
    let Some(declared) = row["hooks_implemented"].as_array().cloned() else {
        return;
    };
    let declared: Vec<&str> = declared.iter().filter_map(Value::as_str).collect();
    let called = plugin.called_hooks();
    let missing: Vec<&str> = called.names().filter(|h| !declared.contains(h)).collect();
    if !missing.is_empty() && row["compatible"] == true {
        row["compatible"] = json!(false);
        row["problem"] = json!(format!(
            "`hooks:` lists {} (observe is served by after_response), which the plugin does not \
             implement; it declares {}",
            missing.join(", "),
            if declared.is_empty() {
                "no hooks".to_owned()
            } else {
                declared.join(", ")
            }
        ));
    }
    if declared.contains(&"before_request") && plugin.before_request.is_none() {
        row["warning"] = json!(
            "the plugin implements before_request but its entry does not list it in `hooks:`, \
             so it never runs (add `hooks: [before_request]` if it is a check such as auth)"
        );
    }
}

/// One row per configured plugin, then one per unconfigured plugin file in `plugin_dirs`.
fn rows(config: &Config) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let builtins = {
        let host = backworks_plugin_host::PluginHost::new();
        crate::builtins::register(&host);
        host.builtin_names()
    };
    for plugin in &config.plugins {
        let mut row = json!({
            "name": plugin.name,
            "configured": true,
            "enabled": plugin.enabled,
            "hooks_enabled": plugin.hook_points(),
        });
        match &plugin.kind {
            PluginKind::Builtin => {
                row["type"] = json!("builtin");
                if builtins.contains(&plugin.name) {
                    row["compatible"] = json!(true);
                } else {
                    row["compatible"] = json!(false);
                    row["problem"] = json!(format!(
                        "no built-in plugin named `{}` (built-ins: {})",
                        plugin.name,
                        builtins.join(", ")
                    ));
                }
            }
            PluginKind::Command { argv } => {
                row["type"] = json!("command");
                row["command"] = json!(argv);
                row["path"] = json!(argv.join(" "));
                let program = argv.first().map(String::as_str).unwrap_or_default();
                if find_program(program, &config.base_dir) {
                    row["compatible"] = json!(true);
                } else {
                    row["compatible"] = json!(false);
                    row["problem"] = json!(format!(
                        "program `{program}` not found (looked next to the config file and on PATH)"
                    ));
                }
            }
            // `config::load` resolves it into a library or a command through `backworks.lock`.
            PluginKind::Marketplace { version, .. } => {
                row["type"] = json!("marketplace");
                row["compatible"] = json!(false);
                row["problem"] = json!(format!("version {version} is not installed"));
            }
            PluginKind::External { .. } => {
                row["type"] = json!("external");
                match config.resolve_plugin_path(plugin) {
                    Ok(path) => {
                        seen.insert(path.canonicalize().unwrap_or(path.clone()));
                        merge(&mut row, &inspect_row(&path, config.trust.file_checks));
                        check_hooks(&mut row, plugin);
                        add_signature(
                            &mut row,
                            &path,
                            &config.trust.signatures,
                            Some(&plugin.name),
                        );
                        // Under `isolation: process` a `panic = "abort"` plugin is fine.
                        if matches!(plugin.isolation, Isolation::Process(_))
                            && row["compatible_isolated"] == true
                        {
                            row["compatible"] = json!(true);
                            row["problem"] = Value::Null;
                        }
                        if config.trust.signatures.require_signatures
                            && row["signature_valid"] != true
                            && row["compatible"] == true
                        {
                            row["compatible"] = json!(false);
                            row["problem"] = row["signature_problem"].clone();
                        }
                    }
                    Err(tried) => {
                        row["compatible"] = json!(false);
                        row["problem"] = json!(format!(
                            "file not found; looked at {}",
                            tried
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
        }
        row["state"] = json!(if !plugin.enabled {
            "disabled"
        } else if row["compatible"] == true {
            "discovered"
        } else {
            "error"
        });
        rows.push(row);
    }
    let dirs: Vec<ScanDir> = config
        .plugin_dirs
        .iter()
        .map(|d| ScanDir {
            path: d.path.clone(),
            recursive: d.recursive,
        })
        .collect();
    for file in discover(&dirs).files {
        if seen.contains(&file.canonicalize().unwrap_or(file.clone())) {
            continue;
        }
        let mut row = json!({ "configured": false, "type": "external", "state": "discovered" });
        merge(&mut row, &inspect_row(&file, config.trust.file_checks));
        add_signature(&mut row, &file, &config.trust.signatures, None);
        rows.push(row);
    }
    rows
}

/// Whether `program` names a file the child could run: with a `/`, relative to the config's
/// folder (where commands run); without, on `PATH`.
fn find_program(program: &str, base_dir: &Path) -> bool {
    if program.contains('/') {
        return base_dir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The inspection of `path` with the verdict of the file checks: a file they refuse is not
/// compatible, whatever its metadata says, since the host will not load it.
fn inspect_row(path: &Path, checks: FileChecks) -> Value {
    let mut row = match inspect_file(path) {
        Ok(inspection) => inspection_json(&inspection),
        Err(e) => json!({ "path": path, "compatible": false, "problem": e.to_string() }),
    };
    add_file_checks(&mut row, path, checks);
    row
}

/// Adds `file_checks` (`{mode, ok, problem}`) to a row; a refusal makes the row incompatible.
fn add_file_checks(row: &mut Value, path: &Path, checks: FileChecks) {
    let verdict = check_file(path, checks);
    row["file_checks"] = json!({
        "mode": checks.as_str(),
        "ok": verdict.is_ok(),
        "problem": verdict.as_ref().err().map(|e| e.to_string()),
    });
    if let Err(refused) = verdict {
        row["compatible"] = json!(false);
        row["compatible_isolated"] = json!(false);
        row["problem"] = json!(refused.to_string());
    }
}

/// Adds the signature verdict on the file at `path` to `row` (`signature`, `signature_valid`,
/// `signature_problem`), reading the file and its `.minisig`, never loading it.
fn add_signature(row: &mut Value, path: &Path, policy: &TrustPolicy, configured_as: Option<&str>) {
    let verdict = match std::fs::read(path) {
        Ok(bytes) => check_signature(path, &bytes, policy, configured_as),
        Err(e) => {
            row["signature"] = json!("unreadable");
            row["signature_valid"] = json!(false);
            row["signature_problem"] = json!(format!("{}: {e}", path.display()));
            return;
        }
    };
    row["signature"] = json!(verdict.label());
    row["signature_valid"] = json!(matches!(verdict, Verdict::Valid(_)));
    if let Verdict::Invalid(e) = &verdict {
        row["signature_problem"] = json!(e.to_string());
    }
}

fn merge(into: &mut Value, from: &Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (k, v) in from {
            if k != "name" || !into.contains_key("name") {
                into.insert(k.clone(), v.clone());
            }
        }
        if let Some(name) = from.get("name") {
            into.insert("plugin_name".into(), name.clone());
        }
    }
}

/// `plugin list`: the live state from a running server's admin API when one answers at
/// `admin_url` (default: the config's `server.admin` address), else the on-disk view.
pub fn list(config_path: &Path, as_json: bool, admin_url: Option<&str>) -> anyhow::Result<i32> {
    // With --admin-url the config file is only needed for the token and the on-disk view: a
    // missing or broken one does not stop the live view.
    let loaded = crate::config::load(config_path);
    if let Ok(config) = &loaded {
        backworks_plugin_host::add_secrets(config.secrets.0.iter().cloned());
    }
    let config = match (loaded, admin_url) {
        (Ok(config), _) => Some(config),
        (Err(_), Some(_)) => None,
        (Err(error), None) => return Err(error.into()),
    };
    let admin = config.as_ref().and_then(|c| c.server.admin.as_ref());
    let url = admin_url
        .map(str::to_owned)
        .or_else(|| admin.map(|a| format!("http://{}:{}", a.host, a.port)));
    let token = admin
        .and_then(|a| a.token.clone())
        .or_else(|| std::env::var("BACKWORKS_ADMIN_TOKEN").ok());
    if let Some(url) = url {
        match live(&url, token.as_deref()) {
            Ok(plugins) => return print_live(&url, plugins, as_json),
            Err(LiveError::NotRunning) => {}
            Err(LiveError::Failed(message)) => {
                eprintln!(
                    "warning: the admin API at {url} did not answer usefully ({message}); showing the on-disk view"
                );
            }
        }
    }
    let Some(config) = config else {
        anyhow::bail!(
            "no server answered at {} and {} cannot be read for the on-disk view",
            admin_url.unwrap_or("-"),
            config_path.display()
        );
    };
    let rows = rows(&config);
    if as_json {
        let out = json!({ "source": "disk", "plugins": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("(no server answering; showing the plugin files on disk)");
    println!(
        "{:<20} {:<9} {:<10} {:<10} {:<11} {:<34} FILE / PROBLEM",
        "NAME", "TYPE", "VERSION", "STATE", "COMPATIBLE", "SIGNATURE"
    );
    for row in &rows {
        let name = row["name"]
            .as_str()
            .or(row["plugin_name"].as_str())
            .unwrap_or("-");
        let name = if row["configured"] == true {
            name.to_owned()
        } else {
            format!("({name})")
        };
        let detail = row["problem"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| row["path"].as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<20} {:<9} {:<10} {:<10} {:<11} {:<34} {}",
            name,
            row["type"].as_str().unwrap_or("-"),
            row["version"].as_str().unwrap_or("-"),
            row["state"].as_str().unwrap_or("-"),
            if row["compatible"] == true {
                "yes"
            } else {
                "no"
            },
            row["signature"].as_str().unwrap_or("-"),
            detail
        );
    }
    Ok(0)
}

enum LiveError {
    /// Nothing listens there: no server is running.
    NotRunning,
    /// Something answered, but not with the plugin list.
    Failed(String),
}

/// `GET {url}/_backworks/plugins`, with the token when there is one.
fn live(url: &str, token: Option<&str>) -> Result<Vec<Value>, LiveError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LiveError::Failed(e.to_string()))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .map_err(|e| LiveError::Failed(e.to_string()))?;
        let mut request = client.get(format!("{url}/_backworks/plugins"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                LiveError::NotRunning
            } else {
                LiveError::Failed(e.to_string())
            }
        })?;
        if !response.status().is_success() {
            return Err(LiveError::Failed(format!("status {}", response.status())));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| LiveError::Failed(e.to_string()))?;
        match body.get("plugins").and_then(Value::as_array) {
            Some(plugins) => Ok(plugins.clone()),
            None => Err(LiveError::Failed("no `plugins` in the answer".into())),
        }
    })
}

fn print_live(url: &str, plugins: Vec<Value>, as_json: bool) -> anyhow::Result<i32> {
    if as_json {
        let out = json!({ "source": "live", "admin": url, "plugins": plugins });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("(live, from {url})");
    println!(
        "{:<20} {:<8} {:<10} {:<8} {:<10} {:<10} {:>8} {:>7} {:>8}",
        "NAME", "KIND", "VERSION", "STATE", "HEALTH", "BREAKER", "CALLS", "ERRORS", "RESTARTS"
    );
    for p in &plugins {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let number = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
        let errors = p["stats"]["errors"]
            .as_object()
            .map(|kinds| {
                kinds
                    .values()
                    .filter_map(Value::as_u64)
                    .sum::<u64>()
                    .to_string()
            })
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<20} {:<8} {:<10} {:<8} {:<10} {:<10} {:>8} {:>7} {:>8}",
            text(&p["name"]),
            text(&p["kind"]),
            text(&p["version"]),
            text(&p["state"]),
            text(&p["health"]["status"]),
            text(&p["breaker"]["state"]),
            number(&p["stats"]["calls"]),
            errors,
            number(&p["process"]["restarts"]),
        );
        if let Some(reason) = p["reason"].as_str() {
            println!("{:<20} error: {reason}", "");
        }
    }
    Ok(0)
}

/// `validate`: the config parses and checks, and every enabled external plugin file exists and is
/// compatible. Exit 1 otherwise, with every problem listed.
pub fn validate(config_path: &Path) -> anyhow::Result<i32> {
    let config = match crate::config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    backworks_plugin_host::add_secrets(config.secrets.0.iter().cloned());
    let mut problems = 0;
    // Plugins already refused here are not started again to read their schema.
    let mut refused = HashSet::new();
    for row in rows(&config) {
        if row["configured"] == true
            && row["enabled"] == true
            && let Some(warning) = row["warning"].as_str()
        {
            eprintln!(
                "warning: {}: plugin `{}`: {warning}",
                config.source.display(),
                row["name"].as_str().unwrap_or("?"),
            );
        }
        if row["configured"] == true
            && row["enabled"] == true
            && !config.trust.signatures.require_signatures
            && let Some(problem) = row["signature_problem"].as_str()
        {
            eprintln!(
                "warning: {}: plugin `{}`: signature {} (not required, so it would load): {problem}",
                config.source.display(),
                row["name"].as_str().unwrap_or("?"),
                row["signature"].as_str().unwrap_or("?"),
            );
        }
        if row["configured"] == true && row["enabled"] == true && row["compatible"] != true {
            problems += 1;
            refused.insert(row["name"].as_str().unwrap_or_default().to_owned());
            eprintln!(
                "error: {}: plugin `{}`: {}",
                config.source.display(),
                row["name"].as_str().unwrap_or("?"),
                row["problem"].as_str().unwrap_or("incompatible")
            );
        }
    }
    problems += check_config_schemas(&config, &refused)?;
    if problems == 0 {
        println!(
            "{}: ok ({} plugins, {} endpoints)",
            config.source.display(),
            config.plugins.len(),
            config.endpoints.len()
        );
        Ok(0)
    } else {
        Ok(1)
    }
}

/// How long `validate` waits for a plugin child to tell its config schema.
const SCHEMA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks every enabled plugin's config against the schema the plugin declares, without starting
/// it (a C library's from its metadata, a Rust library's from a throwaway child, a command's from
/// its manifest); prints each violation at its place in the file and returns how many plugins
/// failed. A plugin whose schema cannot be read gets a warning.
fn check_config_schemas(config: &Config, refused: &HashSet<String>) -> anyhow::Result<usize> {
    let host = backworks_plugin_host::PluginHost::new();
    crate::builtins::register(&host);
    host.set_load_policy(crate::server::load_policy(config));
    // A library's schema may come from a child that loads it: only a library that would load.
    host.set_trust_policy(config.trust.signatures.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = 0;
    for plugin in config
        .plugins
        .iter()
        .filter(|p| p.enabled && !refused.contains(&p.name))
    {
        let Ok(source) = crate::server::plugin_source(config, plugin) else {
            continue; // reported above
        };
        let spec = crate::server::plugin_spec(config, plugin, source);
        let mut settings = match &spec.isolation {
            Isolation::Process(settings) => settings.clone(),
            Isolation::InProcess => Default::default(),
        };
        settings.handshake_timeout = settings.handshake_timeout.min(SCHEMA_TIMEOUT);
        let described =
            runtime.block_on(host.describe_config_schema(&plugin.name, &spec.source, &settings));
        let schema = match described {
            Ok(Some(schema)) => schema,
            Ok(None) => continue,
            Err(error) => {
                eprintln!(
                    "warning: {}: plugin `{}`: its config is not checked: cannot read its config schema: {error}",
                    config.source.display(),
                    plugin.name
                );
                continue;
            }
        };
        let checked = backworks_plugin_host::check_config(
            &plugin.name,
            &schema,
            &plugin.config,
            plugin.config_map.interpolated(),
        );
        if let Err(error) = checked {
            failed += 1;
            match plugin.config_map.errors(&plugin.name, &error) {
                Some(located) => located.iter().for_each(|e| eprintln!("error: {e}")),
                None => eprintln!(
                    "error: {}: plugin `{}`: {error}",
                    config.source.display(),
                    plugin.name
                ),
            }
        }
    }
    Ok(failed)
}

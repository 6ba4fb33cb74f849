//! `plugin list`, `plugin inspect` and `validate`: they read plugin files, never load them.

use std::collections::HashSet;
use std::path::Path;

use backworks_plugin_host::discovery::{ScanDir, discover};
use backworks_plugin_host::inspect::{Inspection, inspect as inspect_file, supported_sdk};
use serde_json::{Value, json};

use crate::config::{Config, PluginKind};

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
        "compatible": inspection.compatibility.is_ok(),
        "problem": inspection.compatibility.as_ref().err().map(|e| e.to_string()),
    })
}

/// `plugin inspect FILE`: exit 0 when the host can load it, 1 when it cannot.
pub fn inspect(file: &Path, as_json: bool) -> anyhow::Result<i32> {
    let result = inspect_file(file);
    if as_json {
        let value = match &result {
            Ok(inspection) => inspection_json(inspection),
            Err(e) => json!({ "path": file, "compatible": false, "problem": e.to_string() }),
        };
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
                match &i.compatibility {
                    Ok(()) => println!("compatible:  yes"),
                    Err(e) => println!("compatible:  no: {e}"),
                }
            }
            Err(e) => println!("error: {e}"),
        }
    }
    Ok(match result {
        Ok(i) if i.compatibility.is_ok() => 0,
        _ => 1,
    })
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
            PluginKind::External { .. } => {
                row["type"] = json!("external");
                match config.resolve_plugin_path(plugin) {
                    Ok(path) => {
                        seen.insert(path.canonicalize().unwrap_or(path.clone()));
                        merge(&mut row, &inspect_row(&path));
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
        merge(&mut row, &inspect_row(&file));
        rows.push(row);
    }
    rows
}

fn inspect_row(path: &Path) -> Value {
    match inspect_file(path) {
        Ok(inspection) => inspection_json(&inspection),
        Err(e) => json!({ "path": path, "compatible": false, "problem": e.to_string() }),
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

/// `plugin list`.
pub fn list(config_path: &Path, as_json: bool) -> anyhow::Result<i32> {
    let config = crate::config::load(config_path)?;
    let rows = rows(&config);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<9} {:<10} {:<10} {:<11} FILE / PROBLEM",
        "NAME", "TYPE", "VERSION", "STATE", "COMPATIBLE"
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
            "{:<20} {:<9} {:<10} {:<10} {:<11} {}",
            name,
            row["type"].as_str().unwrap_or("-"),
            row["version"].as_str().unwrap_or("-"),
            row["state"].as_str().unwrap_or("-"),
            if row["compatible"] == true {
                "yes"
            } else {
                "no"
            },
            detail
        );
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
    let mut problems = 0;
    for row in rows(&config) {
        if row["configured"] == true && row["enabled"] == true && row["compatible"] != true {
            problems += 1;
            eprintln!(
                "error: {}: plugin `{}`: {}",
                config.source.display(),
                row["name"].as_str().unwrap_or("?"),
                row["problem"].as_str().unwrap_or("incompatible")
            );
        }
    }
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

//! `backworks reload`: asks a running server to reload its config (`POST /_backworks/reload` on
//! its admin API) and prints what happened.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Reloads the server whose admin API is at `admin_url` (default: `server.admin` of the config
/// file). Exit code 0 when the new config serves, 1 when the reload was refused (every reason is
/// printed), 2 when no server answered.
pub fn reload(
    config_path: &Path,
    admin_url: Option<&str>,
    token: Option<&str>,
    as_json: bool,
) -> anyhow::Result<i32> {
    // With --admin-url the config file is only needed for the token, and only if it is there.
    let config = match (admin_url, crate::config::load(config_path)) {
        (_, Ok(config)) => Some(config),
        (Some(_), Err(_)) => None,
        (None, Err(error)) => return Err(error.into()),
    };
    let url = match (admin_url, &config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(config)) => match &config.server.admin {
            Some(admin) => format!("http://{}:{}", admin.host, admin.port),
            None => anyhow::bail!(
                "{}: the admin API is turned off (server.admin), so there is nothing to ask; \
                 reload with SIGHUP instead",
                config_path.display()
            ),
        },
        (None, None) => unreachable!("a config was read or the command failed"),
    };
    let token = token.map(str::to_owned).or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.server.admin.as_ref())
            .and_then(|a| a.token.clone())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let answer = runtime.block_on(async {
        // A reload drains nothing before it answers, but it starts plugins: give it time.
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        let mut request = client.post(format!("{url}/_backworks/reload"));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok::<_, reqwest::Error>((status, body))
    });
    let (status, report) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("error: no server answered at {url}: {error}");
            return Ok(2);
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if status.is_success() {
        let list = |key: &str| -> String {
            let names: Vec<&str> = report[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        println!(
            "reload applied: generation {} (added: {}; changed: {}; removed: {})",
            report["generation"],
            list("added"),
            list("changed"),
            list("removed")
        );
    } else if report.is_object() && report.get("errors").is_some() {
        eprintln!("reload refused; the running configuration goes on serving:");
        for error in report["errors"].as_array().into_iter().flatten() {
            eprintln!("  {}", error.as_str().unwrap_or_default());
        }
    } else {
        eprintln!("error: {url} answered {status}: {report}");
    }
    for warning in report["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
    Ok(if status.is_success() { 0 } else { 1 })
}

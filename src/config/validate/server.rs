//! Checks of `server:` (listeners, request limit, the HTTP edge's timeouts and caps, the admin
//! API) and `health:`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::{INVALID, boolean, integer};
use crate::config::checked::{AdminConfig, EdgeConfig, HealthConfig, ReloadConfig, ServerConfig};
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::{Number, RawAdmin, RawConfig, RawServer, Text};

const PORT: &str = "an integer from 0 to 65535";

/// The longest edge timeout: one day. Longer is a mistake (and would overflow a deadline).
const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The largest `server.max_connections`.
const MAX_CONNECTIONS: usize = 1_000_000;
/// The largest `server.backlog` (Linux caps it at `net.core.somaxconn` anyway).
const MAX_BACKLOG: u32 = 65_535;

pub(super) fn server(ip: &Interpolator<'_>, raw: &RawConfig) -> Result<ServerConfig, ConfigError> {
    let mut server = ServerConfig::default();
    let Some(raw) = &raw.server else {
        return Ok(server);
    };
    if let Some(host) = &raw.host {
        server.host = host_text(ip, host, "`server.host`")?;
    }
    if let Some(port) = &raw.port {
        server.port = integer(ip, port, "`server.port`", PORT)?;
    }
    if let Some(bytes) = &raw.max_request_body {
        server.max_request_body =
            integer(ip, bytes, "`server.max_request_body`", "a size in bytes")?;
    }
    if let Some(admin) = &raw.admin {
        server.admin = admin_config(ip, admin)?;
    }
    server.edge = edge(ip, raw)?;
    Ok(server)
}

fn edge(ip: &Interpolator<'_>, raw: &RawServer) -> Result<EdgeConfig, ConfigError> {
    let mut edge = EdgeConfig::default();
    let timeout = |raw: &Number, what: &str| {
        bounded(ip, raw, what, "a number of milliseconds", 1, MAX_TIMEOUT_MS)
            .map(Duration::from_millis)
    };
    if let Some(ms) = &raw.header_read_timeout_ms {
        edge.header_read_timeout = timeout(ms, "`server.header_read_timeout_ms`")?;
    }
    if let Some(ms) = &raw.idle_timeout_ms {
        edge.idle_timeout = timeout(ms, "`server.idle_timeout_ms`")?;
    }
    if let Some(ms) = &raw.body_read_timeout_ms {
        edge.body_read_timeout = timeout(ms, "`server.body_read_timeout_ms`")?;
    }
    if let Some(n) = &raw.max_connections {
        let what = "`server.max_connections`";
        edge.max_connections = bounded(ip, n, what, "a count", 1, MAX_CONNECTIONS)?;
    }
    if let Some(n) = &raw.backlog {
        edge.backlog = bounded(ip, n, "`server.backlog`", "a count", 1, MAX_BACKLOG)?;
    }
    Ok(edge)
}

/// An integer from `min` to `max`, inclusive.
fn bounded<T>(
    ip: &Interpolator<'_>,
    raw: &Number,
    what: &str,
    unit: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: TryFrom<i128> + PartialOrd + fmt::Display,
{
    let expected = format!("{unit} from {min} to {max}");
    let value: T = integer(ip, raw, what, &expected)?;
    if value < min || value > max {
        return Err(ip.error(
            INVALID,
            raw.referenced,
            format!("{what} must be {expected}, found {value}"),
        ));
    }
    Ok(value)
}

fn host_text(ip: &Interpolator<'_>, host: &Text, what: &str) -> Result<String, ConfigError> {
    let host = ip.text(host)?;
    if host.value.trim().is_empty() {
        return Err(ip.error(
            INVALID,
            host.at,
            format!("{what} {} is empty", host.quoted()),
        ));
    }
    Ok(host.value)
}

fn admin_config(ip: &Interpolator<'_>, raw: &RawAdmin) -> Result<Option<AdminConfig>, ConfigError> {
    if let Some(flag) = &raw.enabled
        && !boolean(ip, flag, "`server.admin.enabled`")?
    {
        return Ok(None);
    }
    let mut admin = AdminConfig::default();
    if let Some(host) = &raw.host {
        admin.host = host_text(ip, host, "`server.admin.host`")?;
    }
    if let Some(port) = &raw.port {
        admin.port = integer(ip, port, "`server.admin.port`", PORT)?;
    }
    if let Some(token) = &raw.token {
        // Empty (as `${BACKWORKS_ADMIN_TOKEN:-}` gives when the variable is unset) means no token.
        // The value is a secret and never appears in an error.
        let token = ip.text(token)?.value;
        admin.token = (!token.trim().is_empty()).then_some(token);
    }
    let loopback = admin
        .host
        .parse::<IpAddr>()
        .is_ok_and(|addr| addr.is_loopback());
    if let Some(host) = &raw.host
        && !loopback
        && admin.token.is_none()
    {
        let at = host.referenced;
        return Err(ip.error(
            INVALID,
            at,
            format!(
                "`server.admin.host` `{}` is reachable from other machines, so the admin API \
                 needs a `token` (e.g. `token: ${{BACKWORKS_ADMIN_TOKEN}}`)",
                admin.host
            ),
        ));
    }
    Ok(Some(admin))
}

pub(super) fn health(ip: &Interpolator<'_>, raw: &RawConfig) -> Result<HealthConfig, ConfigError> {
    let mut health = HealthConfig::default();
    let Some(raw) = &raw.health else {
        return Ok(health);
    };
    if let Some(ms) = &raw.interval_ms {
        health.interval = millis(ip, ms, "`health.interval_ms`")?;
    }
    if let Some(ms) = &raw.timeout_ms {
        health.timeout = millis(ip, ms, "`health.timeout_ms`")?;
    }
    Ok(health)
}

pub(super) fn reload(ip: &Interpolator<'_>, raw: &RawConfig) -> Result<ReloadConfig, ConfigError> {
    let mut reload = ReloadConfig::default();
    let Some(raw) = &raw.reload else {
        return Ok(reload);
    };
    if let Some(flag) = &raw.watch {
        reload.watch = boolean(ip, flag, "`reload.watch`")?;
    }
    if let Some(ms) = &raw.watch_interval_ms {
        reload.watch_interval = millis(ip, ms, "`reload.watch_interval_ms`")?;
    }
    if let Some(ms) = &raw.drain_timeout_ms {
        reload.drain_timeout = millis(ip, ms, "`reload.drain_timeout_ms`")?;
    }
    if let Some(n) = &raw.max_generations {
        let what = "`reload.max_generations`";
        let expected = "a number from 1 to 10000";
        let max: u64 = integer(ip, n, what, expected)?;
        if !(1..=10_000).contains(&max) {
            return Err(ip.error(INVALID, n.referenced, format!("{what} must be {expected}")));
        }
        reload.max_generations = max;
    }
    Ok(reload)
}

fn millis(ip: &Interpolator<'_>, raw: &Number, what: &str) -> Result<Duration, ConfigError> {
    let expected = "a number of milliseconds greater than 0";
    let ms: u64 = integer(ip, raw, what, expected)?;
    if ms == 0 {
        return Err(ip.error(
            INVALID,
            raw.referenced,
            format!("{what} must be {expected}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, parse};
    use super::*;

    #[test]
    fn admin_and_health_defaults() {
        let c = parse("").unwrap();
        let admin = c.server.admin.as_ref().unwrap();
        assert_eq!((admin.host.as_str(), admin.port), ("127.0.0.1", 9090));
        assert_eq!(admin.token, None);
        assert_eq!(c.server.max_request_body, 2 * 1024 * 1024);
        assert_eq!(c.health, HealthConfig::default());
        let edge = &c.server.edge;
        assert_eq!(edge.header_read_timeout, Duration::from_secs(60));
        assert_eq!(edge.idle_timeout, Duration::from_secs(75));
        assert_eq!(edge.body_read_timeout, Duration::from_secs(60));
        assert_eq!((edge.max_connections, edge.backlog), (10_000, 4096));
    }

    #[test]
    fn edge_settings_are_read() {
        let c = parse(
            "server:\n  header_read_timeout_ms: 300\n  idle_timeout_ms: '400'\n  \
             body_read_timeout_ms: 500\n  max_connections: 20\n  backlog: 2048\n",
        )
        .unwrap();
        let edge = &c.server.edge;
        assert_eq!(edge.header_read_timeout, Duration::from_millis(300));
        assert_eq!(edge.idle_timeout, Duration::from_millis(400));
        assert_eq!(edge.body_read_timeout, Duration::from_millis(500));
        assert_eq!((edge.max_connections, edge.backlog), (20, 2048));
    }

    #[test]
    fn bad_edge_settings_point_at_the_value() {
        assert_eq!(
            error("server:\n  header_read_timeout_ms: 0\n"),
            "2:27: `server.header_read_timeout_ms` must be a number of milliseconds from 1 to \
             86400000, found 0"
        );
        assert_eq!(
            error("server:\n  idle_timeout_ms: 86400001\n"),
            "2:20: `server.idle_timeout_ms` must be a number of milliseconds from 1 to 86400000, \
             found 86400001"
        );
        assert_eq!(
            error("server: {body_read_timeout_ms: soon}\n"),
            "1:32: `server.body_read_timeout_ms` must be a number of milliseconds from 1 to \
             86400000, found `soon`"
        );
        assert_eq!(
            error("server:\n  max_connections: -1\n"),
            "2:20: `server.max_connections` must be a count from 1 to 1000000, found `-1`"
        );
        assert_eq!(
            error("server:\n  backlog: 0\n"),
            "2:12: `server.backlog` must be a count from 1 to 65535, found 0"
        );
    }

    #[test]
    fn admin_settings_and_secret_token() {
        let c = parse(
            "server:\n  max_request_body: 1000\n  admin: {host: 0.0.0.0, port: 9999, token: '${SECRET}'}\n\
             health: {interval_ms: 500, timeout_ms: 100}\n",
        )
        .unwrap();
        let admin = c.server.admin.as_ref().unwrap();
        assert_eq!((admin.host.as_str(), admin.port), ("0.0.0.0", 9999));
        assert_eq!(admin.token.as_deref(), Some("s3cr3t"));
        assert!(!format!("{admin:?}").contains("s3cr3t"), "{admin:?}");
        assert_eq!(c.server.max_request_body, 1000);
        assert_eq!(c.health.interval, Duration::from_millis(500));
        assert_eq!(c.health.timeout, Duration::from_millis(100));
        let off = parse("server:\n  admin: {enabled: false}\n").unwrap();
        assert!(off.server.admin.is_none());
    }

    #[test]
    fn a_public_admin_address_needs_a_token() {
        assert_eq!(
            error("server:\n  admin: {host: 0.0.0.0}\n"),
            "2:17: `server.admin.host` `0.0.0.0` is reachable from other machines, so the admin \
             API needs a `token` (e.g. `token: ${BACKWORKS_ADMIN_TOKEN}`)"
        );
        assert_eq!(
            error("health: {interval_ms: 0}\n"),
            "1:23: `health.interval_ms` must be a number of milliseconds greater than 0"
        );
    }
}

//! An async plugin: real tokio I/O inside a plugin library.
//!
//! - `GET /sleep/{ms}` awaits `tokio::time::sleep` for `ms` milliseconds (at most 10 000, else
//!   400), then answers 200 `{"slept_ms":N}`.
//! - `GET /tcp-echo` opens a TCP listener on `127.0.0.1:0`, connects to it, sends `ping`, echoes it
//!   back from the accepted side, and answers 200 `{"echoed":"ping"}`.
//! - Any other path is a 404; a known path with another method a 405.
//!
//! No config: its schema ([`AsyncClockConfig`]) accepts none or an empty map, so a key given to it
//! by mistake is reported. The plugin's tokio is the library's own copy: the SDK runs the plugin's futures on a
//! runtime inside the library, so timers and sockets work and a waiting request holds no host
//! thread. A thousand concurrent `/sleep/100` calls finish in about 100 ms, not 100 s.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use backworks_plugin_sdk::prelude::*;
use backworks_plugin_sdk::tracing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest sleep `/sleep/{ms}` accepts, in milliseconds.
pub const MAX_SLEEP_MS: u64 = 10_000;

/// How long `/tcp-echo` may take before it gives up.
const TCP_ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/tcp-echo` sends and expects back.
const PING: &[u8] = b"ping";

/// Sleeps on tokio timers and round-trips bytes over tokio sockets. See the crate docs.
#[derive(Debug, Default)]
pub struct AsyncClock;

/// `GET /sleep/{ms}`: awaits the sleep, then says how long it was.
async fn sleep(request: &Request, segment: &str) -> PluginResult<Response> {
    let raw = request.param("ms").unwrap_or(segment);
    let ms: u64 = raw
        .parse()
        .map_err(|_| PluginError::BadRequest(format!("ms must be a whole number, got {raw:?}")))?;
    if ms > MAX_SLEEP_MS {
        return Err(PluginError::BadRequest(format!(
            "ms must be at most {MAX_SLEEP_MS}, got {ms}"
        )));
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Response::json(&json!({ "slept_ms": ms })))
}

/// `GET /tcp-echo`: one TCP round trip through a listener of our own.
async fn tcp_echo() -> PluginResult<Response> {
    let echoed = tokio::time::timeout(TCP_ECHO_TIMEOUT, round_trip())
        .await
        .map_err(|_| {
            PluginError::Unavailable(format!("TCP echo took longer than {TCP_ECHO_TIMEOUT:?}"))
        })?
        .map_err(|e| PluginError::Unavailable(format!("TCP echo failed: {e}")))?;
    let echoed = String::from_utf8(echoed)
        .map_err(|_| PluginError::Internal("TCP echo returned non-UTF-8 bytes".to_owned()))?;
    Ok(Response::json(&json!({ "echoed": echoed })))
}

/// Listens, connects, sends [`PING`]; the accepted side reads it and writes it back; returns what
/// the connecting side read.
async fn round_trip() -> std::io::Result<Vec<u8>> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let address = listener.local_addr()?;

    let server = async {
        let (mut accepted, _) = listener.accept().await?;
        let mut received = vec![0; PING.len()];
        accepted.read_exact(&mut received).await?;
        accepted.write_all(&received).await?;
        accepted.shutdown().await?;
        std::io::Result::Ok(())
    };
    let client = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(PING).await?;
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).await?;
        std::io::Result::Ok(echoed)
    };
    let ((), echoed) = tokio::try_join!(server, client)?;
    Ok(echoed)
}

/// The plugin's configuration: nothing. Its JSON Schema (an object with no properties) is the
/// plugin's [`config_schema`](BackworksPlugin::config_schema).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(crate = "backworks_plugin_sdk::serde", deny_unknown_fields)]
#[schemars(crate = "backworks_plugin_sdk::schemars")]
pub struct AsyncClockConfig {}

#[async_trait]
impl BackworksPlugin for AsyncClock {
    fn config_schema() -> Option<Value> {
        Some(schema_for::<AsyncClockConfig>())
    }

    async fn initialize(&self, _config: Value) -> PluginResult<()> {
        tracing::info!("async-clock initialized (max sleep {MAX_SLEEP_MS} ms)");
        Ok(())
    }

    async fn handle(&self, request: Request) -> PluginResult<Response> {
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["sleep", ms]) => sleep(&request, ms).await,
            ("GET", ["tcp-echo"]) => tcp_echo().await,
            (_, ["sleep", _] | ["tcp-echo"]) => Err(PluginError::Status {
                status: 405,
                message: format!("{} {} is not served; use GET", request.method, request.path),
            }),
            _ => Err(PluginError::NotFound(format!(
                "async-clock serves no {} {}",
                request.method, request.path
            ))),
        }
    }
}

backworks_plugin_sdk::export_plugin!(
    AsyncClock,
    name = "async-clock",
    version = env!("CARGO_PKG_VERSION"),
    description = "awaits tokio timers and sockets inside the plugin"
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    fn get_sleep(ms: &str) -> Request {
        let mut request = Request::new("GET", format!("/sleep/{ms}"));
        request.params.push(("ms".into(), ms.into()));
        request
    }

    #[tokio::test]
    async fn sleeps_then_answers() {
        let plugin = AsyncClock;
        let started = Instant::now();
        let response = plugin.handle(get_sleep("30")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(response.status, 200);
        assert_eq!(response.body, br#"{"slept_ms":30}"#);
        assert_eq!(
            response.headers.get("content-type"),
            Some("application/json")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_sleep_is_allowed() {
        // Paused time: tokio jumps the clock instead of waiting ten seconds.
        let response = AsyncClock.handle(get_sleep("10000")).await.unwrap();
        assert_eq!(response.body, br#"{"slept_ms":10000}"#);
    }

    #[tokio::test]
    async fn bad_durations_are_400() {
        for (ms, message) in [
            ("10001", "ms must be at most 10000, got 10001"),
            ("-1", r#"ms must be a whole number, got "-1""#),
            ("1.5", r#"ms must be a whole number, got "1.5""#),
            ("abc", r#"ms must be a whole number, got "abc""#),
            ("", r#"ms must be a whole number, got """#),
        ] {
            let err = AsyncClock.handle(get_sleep(ms)).await.unwrap_err();
            assert_eq!(err.status(), 400, "{ms}: {err}");
            assert_eq!(err.message(), message);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sleeps_overlap() {
        let plugin = Arc::new(AsyncClock);
        let started = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let plugin = plugin.clone();
                tokio::spawn(async move { plugin.handle(get_sleep("100")).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().status, 200);
        }
        // Sequentially this would be 20 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn tcp_echo_round_trips_ping() {
        let response = AsyncClock
            .handle(Request::new("GET", "/tcp-echo"))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, br#"{"echoed":"ping"}"#);
    }

    #[tokio::test]
    async fn other_routes() {
        let err = AsyncClock
            .handle(Request::new("POST", "/tcp-echo"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 405);
        let err = AsyncClock
            .handle(Request::new("DELETE", "/sleep/5"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 405);
        for path in ["/", "/sleep", "/sleep/1/2", "/clock"] {
            let err = AsyncClock
                .handle(Request::new("GET", path))
                .await
                .unwrap_err();
            assert_eq!(err.status(), 404, "{path}: {err}");
        }
    }
}

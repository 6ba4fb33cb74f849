//! The HTTP edge as a hostile client meets it: silent, idle and stalled connections, the connection
//! cap and the descriptor limit, a burst right after start, `HEAD` on `GET` routes, and the JSON body
//! of every error the server itself makes. A control endpoint keeps answering 200 throughout.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::observe::PATIENCE;
use crate::support::{Server, client, serve_until_exit};

/// A server with the `server:` lines given (indented two spaces), the `static` built-in at
/// `/version`, the hello plugin at `/hello/{name}` (GET) and `/echo` (POST), and async-clock at
/// `/sleep/{ms}`.
fn config(server: &str) -> String {
    format!(
        r#"
server:
{server}
plugin_dirs: ["{{{{plugins}}}}"]
plugins:
  hello:
    path: libhello.so
  async-clock:
    path: libasync_clock.so
  static:
    type: builtin
    config: {{ status: 200, body: {{ name: backworks }} }}
endpoints:
  hello: {{ path: "/hello/{{name}}", methods: [GET], plugin: hello }}
  echo: {{ path: /echo, methods: [POST], plugin: hello }}
  version: {{ path: /version, plugin: static }}
  sleep: {{ path: "/sleep/{{ms}}", methods: [GET], plugin: async-clock }}
"#
    )
}

/// The control: both endpoints answer 200 on new connections.
async fn control(server: &Server) {
    let http = client();
    for path in ["/version", "/hello/control"] {
        let res = http
            .get(server.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("control {path} not answered: {e}\n{}", server.logs()));
        assert_eq!(res.status(), 200, "control {path}");
    }
}

/// `host:port` of the public listener.
fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

async fn connect(server: &Server) -> TcpStream {
    tokio::time::timeout(PATIENCE, TcpStream::connect(address(server)))
        .await
        .expect("connect within the patience")
        .expect("connect")
}

/// Reads until the server closes `stream` and returns what it sent; `Err` when it is still open
/// after the patience. A reset counts as closed.
async fn closed(stream: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => Err("the server kept the connection open"),
    }
}

/// A new connection that has been answered one `GET /version` (200), and the head of that answer.
async fn served_once(server: &Server) -> (TcpStream, String) {
    let mut conn = connect(server).await;
    conn.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = response(&mut conn).await;
    assert_eq!(status, 200, "{head}");
    (conn, head)
}

/// One HTTP/1.1 response read off a kept-alive connection: status, head, body.
async fn response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("a response within the patience")
            .expect("read");
        assert!(n > 0, "closed before a whole response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status_of(&head), head, body)
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// The `error` object of a server-made JSON error body, checked for the common shape: a kind, a
/// message, and `plugin: null` (no plugin ran).
fn server_error(body: &[u8]) -> Value {
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    let error = json["error"].clone();
    assert!(error["kind"].is_string(), "{json}");
    assert!(error["message"].is_string(), "{json}");
    assert_eq!(error.get("plugin"), Some(&Value::Null), "{json}");
    error
}

#[tokio::test]
async fn silent_and_slow_header_connections_are_closed_after_the_header_read_timeout() {
    let server = Server::start(&config("  header_read_timeout_ms: 300"));
    control(&server).await;
    let mut silent = connect(&server).await;
    // A slowloris: a request head that is never finished.
    let mut slow = connect(&server).await;
    slow.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    control(&server).await;
    let said = closed(&mut silent).await.expect("silent connection");
    assert!(said.is_empty(), "closed without an answer: {said:?}");
    closed(&mut slow).await.expect("half-sent request head");
    control(&server).await;
}

#[tokio::test]
async fn a_later_request_head_left_unfinished_is_closed_after_the_header_read_timeout() {
    // The idle timeout is long, so only the header-read timeout of the second request, which
    // starts at its first bytes on a connection that served one already, can close it.
    let server = Server::start(&config(
        "  idle_timeout_ms: 600000\n  header_read_timeout_ms: 300",
    ));
    let (mut conn, _) = served_once(&server).await;
    conn.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    control(&server).await;
    let said = closed(&mut conn)
        .await
        .expect("half-sent second request head");
    assert!(said.is_empty(), "closed without another answer: {said:?}");
    control(&server).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header-read timeout is long, so only the idle timeout can close the connection.
    let server = Server::start(&config(
        "  idle_timeout_ms: 300\n  header_read_timeout_ms: 600000",
    ));
    let (mut conn, head) = served_once(&server).await;
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {head}"
    );
    control(&server).await;
    let said = closed(&mut conn).await.expect("idle keep-alive connection");
    assert!(said.is_empty(), "closed without another answer: {said:?}");
    control(&server).await;
}

#[tokio::test]
async fn a_stalled_request_body_is_answered_408_in_json_and_closed() {
    let server = Server::start(&config("  body_read_timeout_ms: 300"));
    let mut conn = connect(&server).await;
    conn.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 100000\r\n\r\nonly this much",
    )
    .await
    .unwrap();
    control(&server).await;
    let said = closed(&mut conn).await.expect("stalled body");
    let text = String::from_utf8_lossy(&said).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert_eq!(status_of(head), 408, "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let error = server_error(body.as_bytes());
    assert_eq!(error["kind"], "request_timeout", "{error}");
    control(&server).await;
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_idle_connections_make_room_for_new_clients() {
    // The header-read timeout is long, so only the cap can close the silent connections.
    let server = Server::start(&config(
        "  max_connections: 20\n  header_read_timeout_ms: 600000",
    ));
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(connect(&server).await);
    }
    control(&server).await;
    closed(&mut silent[0])
        .await
        .expect("the oldest silent connection was not shed");
    control(&server).await;
}

#[tokio::test]
async fn near_the_descriptor_limit_new_clients_are_still_served() {
    // More silent connections than the server has descriptors; no `max_connections` set: the
    // server derives its cap from the limit, and sheds idle connections for new ones.
    let server = Server::start_with_fd_limit(&config("  header_read_timeout_ms: 600000"), 128);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect(&server).await);
    }
    control(&server).await;
    closed(&mut silent[0])
        .await
        .expect("the oldest silent connection was not shed");
    control(&server).await;
    let logs = server.logs();
    assert!(
        logs.contains("max_connections lowered"),
        "the effective cap is logged:\n{logs}"
    );
}

#[tokio::test]
async fn a_burst_of_1000_connections_right_after_start_is_served() {
    // This test process holds the 1,000 client sockets beside the other tests' files: make room
    // where the soft limit is the common 1,024.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < 8192
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard);
    }
    let server = Server::start(&config(""));
    let addr = address(&server);
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut got = Vec::new();
                s.read_to_end(&mut got).await?;
                std::io::Result::Ok(got)
            })
        })
        .collect();
    for client in clients {
        let got = tokio::time::timeout(PATIENCE, client)
            .await
            .expect("answered within the patience")
            .unwrap()
            .expect("connect, send and read");
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    // The listening socket's backlog, as the kernel reports it (`ss`: Send-Q of a listener).
    let port = addr.rsplit(':').next().unwrap();
    // `ss` comes with iproute2, which .ci/run installs when it is missing.
    let backlog = listen_backlog(port).expect("`ss -ltn` reports the listener's backlog");
    assert!(backlog >= 1024, "listen backlog {backlog}");
    control(&server).await;
}

/// The backlog of the socket listening on `port`, from `ss -ltn`.
fn listen_backlog(port: &str) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
}

#[tokio::test]
async fn head_on_a_get_route_answers_like_get_without_a_body() {
    let server = Server::start(&config(""));
    let http = client();
    for path in ["/hello/ana", "/version"] {
        let get = http.get(server.url(path)).send().await.unwrap();
        let head = http.head(server.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(
            head.headers().get("content-length"),
            get.headers().get("content-length"),
            "HEAD {path} announces the GET body's length"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
    control(&server).await;
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_json_400() {
    let server = Server::start(&config(""));
    let res = client().get(server.url("/hello/%FF")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/json");
    let error = server_error(&res.bytes().await.unwrap());
    assert_eq!(error["kind"], "bad_request", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("`name`"),
        "{error}"
    );
    control(&server).await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_answered_in_json() {
    let server = Server::start(&config(""));
    let http = client();
    for base in [&server.base, &server.admin] {
        let res = http.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(res.status(), 404, "{base}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let error = server_error(&res.bytes().await.unwrap());
        assert_eq!(error["kind"], "not_found", "{error}");
    }
    let res = http.delete(server.url("/hello/ana")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    assert_eq!(res.headers()["content-type"], "application/json");
    let error = server_error(&res.bytes().await.unwrap());
    assert_eq!(error["kind"], "method_not_allowed", "{error}");
    control(&server).await;
}

#[test]
fn bad_edge_settings_stop_serve_with_line_and_column() {
    for (yaml, says) in [
        (
            "server:\n  max_connections: 0\n",
            "backworks.yaml:2:20: `server.max_connections` must be a count from 1 to 1000000, \
             found 0",
        ),
        (
            "server:\n  header_read_timeout_ms: soon\n",
            "backworks.yaml:2:27: `server.header_read_timeout_ms` must be a number of \
             milliseconds from 1 to 86400000, found `soon`",
        ),
        (
            "server: { backlog: 100000 }\n",
            "backworks.yaml:1:20: `server.backlog` must be a count from 1 to 65535, found 100000",
        ),
    ] {
        let (status, stderr) = serve_until_exit(yaml);
        assert!(!status.success(), "{yaml}");
        assert!(stderr.contains(says), "{yaml}\n{stderr}");
    }
}

#[tokio::test]
async fn a_stop_finishes_the_request_in_progress_and_does_not_wait_for_idle_connections() {
    // Were the stop to wait for the silent connection's header-read timeout, `stop` would run
    // out of patience and kill the server before it logs `stopped`.
    let server = Server::start(&config("  header_read_timeout_ms: 600000"));
    let mut silent = connect(&server).await;
    let http = client();
    let slow = tokio::spawn(http.get(server.url("/sleep/1500")).send());
    // Stop only once the request is in the plugin.
    let plugin = server.admin_url("/_backworks/plugins/async-clock");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let about: Value = http
            .get(&plugin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if about["stats"]["in_flight"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in flight: {about}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let answered = slow
        .await
        .unwrap()
        .expect("the request in progress is answered");
    assert_eq!(answered.status(), 200);
    closed(&mut silent)
        .await
        .expect("silent connection at stop");
    assert!(logs.contains("stopped"), "{logs}");
}

/// The open descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the server's descriptors")
        .count()
}

/// The connection cap leaves `DESCRIPTORS_PER_PLUGIN` (8) descriptors per plugin: a plugin, of any
/// kind, idling after its start, must hold no more (a count, not a timing).
#[tokio::test]
async fn a_plugin_holds_no_more_descriptors_than_the_cap_leaves_it() {
    let bare = Server::start(
        r#"
plugins:
  static:
    type: builtin
    config: { status: 200, body: {} }
endpoints:
  s: { path: /s, plugin: static }
"#,
    );
    let base = descriptors(bare.pid());
    drop(bare);
    let server = Server::start(
        r#"
plugin_dirs: ["{{plugins}}"]
plugins:
  static:
    type: builtin
    config: { status: 200, body: {} }
  hello:
    path: libhello.so
  request-id:
    path: librequest_id.so
    hooks: [before_request, after_response]
  kv-store:
    path: libkv_store.so
  async-clock:
    path: libasync_clock.so
  isolated:
    path: libhello.so
    isolation: process
endpoints:
  s: { path: /s, plugin: static }
  hello: { path: "/hello/{name}", methods: [GET], plugin: hello }
  kv: { path: /kv, methods: [GET], plugin: kv-store }
  sleep: { path: "/sleep/{ms}", methods: [GET], plugin: async-clock }
  isolated: { path: "/isolated/{name}", methods: [GET], plugin: isolated }
"#,
    );
    let plugins = 5;
    let held = descriptors(server.pid()).saturating_sub(base);
    assert!(
        held <= 8 * plugins,
        "{plugins} plugins hold {held} descriptors, over the 8 each that the connection cap \
         leaves them"
    );
    // The descriptor table was grown for them (and 256 more) before the runtime started: no
    // growth, and no wait for an RCU grace period, while the plugins load.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let table: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(table >= 8 * 6 + 256, "FDSize {table}");
}

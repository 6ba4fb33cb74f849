//! Shared test machinery: building the example plugins, compiling the C plugins, and running the
//! real `backworks` binary on a free port.

use std::ffi::OsStr;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo puts this build's artifacts (`target/debug` or `target/release`).
pub fn target_dir() -> PathBuf {
    // The test binary lives in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_owned()
}

/// The Rust plugins the tests load, example plugins and fixtures, in one folder of their own,
/// `target/<profile>/test-plugins`; built once per test run with the same cargo and profile as
/// the tests (a no-op when nothing changed).
///
/// The example plugins are cdylib crates and land in `target/<profile>`; the fixtures' libraries
/// are example targets (so `cargo build --workspace` leaves them out of the folder the demo
/// scans) and land in `target/<profile>/examples`. Both are linked (or copied) into the one
/// folder the test configs name as `{{plugins}}`.
pub fn rust_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = target_dir();
        let mut cmd = cargo_build(&target);
        for package in [
            "backworks-example-hello",
            "backworks-example-request-id",
            "backworks-example-kv-store",
            "backworks-example-async-clock",
            "backworks-fixture-noop",
            "backworks-fixture-broken-panic",
            "backworks-fixture-faulty",
        ] {
            cmd.args(["-p", package]);
        }
        // The example plugins' cdylibs, and the fixtures' (their only example targets).
        cmd.args(["--lib", "--examples"]);
        let status = cmd.status().expect("run cargo build for the Rust plugins");
        assert!(status.success(), "building the Rust plugins failed");

        let dir = target.join("test-plugins");
        std::fs::create_dir_all(&dir).expect("create target/<profile>/test-plugins");
        for (built, lib) in [
            (&target, "hello"),
            (&target, "request_id"),
            (&target, "kv_store"),
            (&target, "async_clock"),
            (&target.join("examples"), "noop"),
            (&target.join("examples"), "broken_panic"),
            (&target.join("examples"), "faulty"),
        ] {
            let file = library_file(lib);
            place(&built.join(&file), &dir.join(&file));
        }
        dir
    })
}

/// `cargo build --quiet` with the tests' cargo, into the tests' target folder, in the profile of
/// `target` (`target/<profile>`).
fn cargo_build(target: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["build", "--quiet"]);
    if target.file_name().and_then(|p| p.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    if let Some(dir) = target.parent() {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    cmd
}

/// `lib<name>.so` (`.dylib`, `.dll`).
fn library_file(name: &str) -> String {
    format!("lib{name}.{}", std::env::consts::DLL_EXTENSION)
}

/// Puts a hard link to `built` (a copy where links fail) at `at`, replacing what was there in one
/// step, so a reader never sees half a library.
fn place(built: &Path, at: &Path) {
    let tmp = at.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(built, &tmp).is_err() {
        std::fs::copy(built, &tmp)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), tmp.display()));
    }
    std::fs::rename(&tmp, at).unwrap_or_else(|e| panic!("move {} into place: {e}", at.display()));
    // When `at` already was a link to the same file, rename(2) does nothing and leaves `tmp`.
    let _ = std::fs::remove_file(&tmp);
}

/// The `broken-panic` fixture built with `panic = "abort"` (the workspace's `panic-abort`
/// profile), as some authors ship their plugins; built once per test run.
pub fn panic_abort_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root_dir = target_dir().parent().expect("target/<profile>").to_owned();
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "--quiet", "--profile", "panic-abort"])
            .args([
                "-p",
                "backworks-fixture-broken-panic",
                "--example",
                "broken_panic",
            ])
            .env("CARGO_TARGET_DIR", &root_dir)
            .status()
            .expect("run cargo build for the panic = \"abort\" plugin");
        assert!(
            status.success(),
            "building the panic = \"abort\" plugin failed"
        );
        root_dir
            .join("panic-abort/examples")
            .join(library_file("broken_panic"))
    })
}

/// The path of Rust plugin library `lib` (e.g. `hello`, `faulty`) in [`rust_plugins`].
pub fn rust_plugin(lib: &str) -> PathBuf {
    rust_plugins().join(library_file(lib))
}

/// Whether the kernel grants read leases on this process's files in `dir` (a local file system,
/// `/proc/sys/fs/lease-break-time` of 10 s or more), asked of it directly (by Python's `fcntl`,
/// not through the host): where it does, the host loads plugin files in place, and the tests
/// that look at how a file was loaded expect that; where it does not, they expect a copy, and say
/// so.
pub fn leases_work(dir: &Path) -> bool {
    let probe = dir.join(".lease-probe");
    std::fs::write(&probe, b"probe").unwrap();
    let script = "import fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                  fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE\n\
                  t = int(open('/proc/sys/fs/lease-break-time').read())\n\
                  sys.exit(0 if t >= 10 else 1)\n";
    let granted = Command::new("python3")
        .args(["-c", script])
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&probe);
    if !granted {
        eprintln!(
            "no read leases in {}: expecting private copies",
            dir.display()
        );
    }
    granted
}

/// Compiles the example C plugin `example-plugins/c/<name>.c` against the SDK's C header into a
/// shared library, once.
pub fn c_plugin(name: &str) -> PathBuf {
    compile_c(&root().join("example-plugins/c").join(format!("{name}.c")))
}

/// Compiles the broken C library `tests/fixtures/c/<name>.c` against the SDK's C header into a
/// shared library, once.
pub fn c_fixture(name: &str) -> PathBuf {
    compile_c(&root().join("tests/fixtures/c").join(format!("{name}.c")))
}

/// Compiles `src` into `target/<profile>/c-plugins/lib<stem>.so`, unless that is newer.
fn compile_c(src: &Path) -> PathBuf {
    // One compile at a time in this process: two tests asking for the same library at once would
    // otherwise both compile it to the same temporary file. (The temporary name carries the pid,
    // the rename is atomic, so other processes are safe.)
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = target_dir().join("c-plugins");
    std::fs::create_dir_all(&out_dir).expect("create target/<profile>/c-plugins");
    let name = src
        .file_stem()
        .and_then(|n| n.to_str())
        .expect("source name")
        .to_owned();
    let out = out_dir.join(format!("lib{name}.so"));
    // Fresh when newer than its source and than the ABI header every C plugin includes (a new
    // ABI minor must rebuild them all).
    let header = root().join("plugin-sdk/include/backworks_plugin.h");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&out), modified(src), modified(&header)) {
        (Some(o), Some(s), Some(h)) => o >= s && o >= h,
        _ => false,
    };
    if !fresh {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        // Compile to a temporary name, then rename: a reader never sees half a library.
        let tmp = out_dir.join(format!("{name}.{}.tmp.so", std::process::id()));
        let output = Command::new(&cc)
            .args([
                "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=c11", "-O1",
            ])
            .arg("-I")
            .arg(root().join("plugin-sdk/include"))
            .arg("-o")
            .arg(&tmp)
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (install gcc): {e}"));
        assert!(
            output.status.success(),
            "compiling {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&tmp, &out).expect("move compiled C plugin into place");
    }
    out
}

/// A running `backworks serve`, killed (gracefully, SIGTERM) when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// The admin API's base URL (`server.admin` on a free port).
    pub admin: String,
    /// Holds the config and log files; removed when the server is dropped.
    _dir: tempfile::TempDir,
    log: PathBuf,
    config: PathBuf,
}

impl Server {
    /// Writes `yaml` over the server's config file (`{{plugins}}` and `{{c}}` replaced as in
    /// [`Server::start`]), for a reload to read.
    pub fn rewrite_config(&self, yaml: &str) {
        let dir = self.config.parent().expect("the config's folder");
        write_config(dir, yaml);
    }

    /// The config file the server reads.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Writes `yaml` to a temporary `backworks.yaml` and serves it, waiting until `/health` answers.
    /// `{{plugins}}` in the yaml becomes the Rust plugins' folder and `{{c}}` the C plugins' folder.
    pub fn start(yaml: &str) -> Server {
        Server::start_with_env(yaml, &[])
    }

    /// [`Server::start`] with extra environment variables for the server process.
    ///
    /// The server binds port 0 for both listeners and the test reads the addresses it logs, so
    /// no two tests can race for a port picked in advance.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn(yaml, env, &[])
    }

    /// [`Server::start`] with `file` open on descriptor 9 of the server, without close-on-exec,
    /// as a supervisor or a wrapper script may leave one.
    pub fn start_holding(yaml: &str, file: &Path) -> Server {
        // A shell opens the file without close-on-exec, then becomes the server.
        let wrapper = [
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(r#"exec 9<"$0" && exec "$@""#),
            file.as_os_str(),
        ];
        Server::spawn(yaml, &[], &wrapper)
    }

    /// [`Server::start`] with the server's descriptor limit (`RLIMIT_NOFILE`) lowered to `limit`,
    /// as a container or a supervisor may set it.
    pub fn start_with_fd_limit(yaml: &str, limit: u32) -> Server {
        let limit = limit.to_string();
        let wrapper = [
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(r#"ulimit -n "$0" && exec "$@""#),
            OsStr::new(&limit),
        ];
        Server::spawn(yaml, &[], &wrapper)
    }

    fn spawn(yaml: &str, env: &[(&str, &str)], wrapper: &[&OsStr]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), yaml);
        let log = dir.path().join("server.log");
        let child = serve_command(wrapper, &config, &log)
            .envs(env.iter().copied())
            // Refusals (breaker, shedding, unavailable) are logged at debug: the tests read them.
            .env("RUST_LOG", "info,backworks_plugin_host::public_error=debug")
            .spawn()
            .expect("start backworks");
        let mut server = Server {
            child: Some(child),
            base: String::new(),
            admin: String::new(),
            _dir: dir,
            log,
            config,
        };
        server.wait_ready();
        server
    }

    /// Waits until the server logs the address it listens on, then reads both addresses from the
    /// log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("backworks exited early ({status}):\n{}", self.logs());
            }
            let logs = self.logs();
            if let Some(base) = logged_url(&logs, "backworks listening on ") {
                self.base = base;
                self.admin = logged_url(&logs, "admin API listening on ").unwrap_or_default();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backworks did not start:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// What an operator learns of an error answer with this JSON `body`: for a client error (4xx)
    /// its public message; otherwise the server's log line with the body's request id, since a
    /// public body leaves a server error's details out. Waits up to a minute for the line.
    pub fn detail(&self, status: u16, body: &serde_json::Value) -> String {
        if status < 500 {
            return body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        let id = body["error"]["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("an error body without a request id: {body}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.logs().lines().find(|line| line.contains(id)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with request id {id}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The admin API's `base` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops the server with SIGTERM and waits for it to exit (up to 60 s: the tests that call
    /// this read what it logs while shutting down); returns its logs.
    pub fn stop(mut self) -> String {
        self.terminate(Duration::from_secs(60));
        self.logs()
    }

    /// SIGTERM, then SIGKILL if it still runs after `patience`.
    fn terminate(&mut self, patience: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// The `http://host:port` that follows `marker` in the server's log, once its whole line has been
/// written.
fn logged_url(logs: &str, marker: &str) -> Option<String> {
    let rest = &logs[logs.find(marker)? + marker.len()..];
    let (line, _) = rest.split_once('\n')?;
    let url = line.split_whitespace().next()?;
    url.starts_with("http://").then(|| url.to_owned())
}

/// Runs `backworks serve` on `yaml` (placeholders as in [`Server::start`]) when start-up is
/// expected to fail: waits until it exits on its own and returns its exit status and what it wrote
/// on stderr. Kills it and panics if it still runs after 60 s (generous: the machine is shared).
pub fn serve_until_exit(yaml: &str) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), yaml);
    let log = dir.path().join("stderr.log");
    let mut child = serve_command(&[], &config, &log)
        .spawn()
        .expect("run backworks");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for backworks") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backworks kept running when it should have stopped start-up");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Writes `yaml` to `dir/backworks.yaml`, `{{plugins}}` replaced by the Rust plugins' folder and
/// `{{c}}` by the C plugins' folder, and returns its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let c_dir = target_dir().join("c-plugins");
    let yaml = yaml
        .replace("{{plugins}}", &rust_plugins().display().to_string())
        .replace("{{c}}", &c_dir.display().to_string());
    let config = dir.join("backworks.yaml");
    std::fs::write(&config, yaml).expect("write config");
    config
}

/// `GET url`, its body as JSON (`null` when it is not JSON).
pub async fn get_json(url: String) -> serde_json::Value {
    client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or(serde_json::Value::Null)
}

/// Runs the `backworks` command with `args`, without colours, and waits for its output.
pub fn backworks(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backworks"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run backworks")
}

/// `backworks serve` on `config`, both listeners on port 0 (the addresses are in the log), without
/// colours, its stdout discarded and its stderr written to `log`; run through `wrapper` (a program
/// and its arguments, the server's command line after them) when that is not empty.
fn serve_command(wrapper: &[&OsStr], config: &Path, log: &Path) -> Command {
    let backworks = OsStr::new(env!("CARGO_BIN_EXE_backworks"));
    let (program, wrapper_args) = wrapper.split_first().unwrap_or((&backworks, &[]));
    let mut command = Command::new(program);
    command.args(wrapper_args);
    if !wrapper.is_empty() {
        command.arg(backworks);
    }
    command
        .args(["serve", "-c"])
        .arg(config)
        .args(["--port", "0", "--admin-port", "0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    command
}

/// A blocking-free HTTP client for the tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Serves the files of `dir` over HTTP on a thread of its own (so a blocking CLI call in the test
/// never starves it); returns the base URL.
pub fn serve_dir(dir: &Path) -> String {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let dir = dir.clone();
                async move {
                    let path = uri.path().trim_start_matches('/');
                    if path.split('/').any(|c| c == "..") {
                        return Err(axum::http::StatusCode::NOT_FOUND);
                    }
                    // Small files on a test's own thread: a blocking read is fine here.
                    std::fs::read(dir.join(path)).map_err(|_| axum::http::StatusCode::NOT_FOUND)
                }
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// A finished command's standard output followed by its standard error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `backworks ARGS`, asserting it succeeds; its output.
pub fn backworks_ok(args: &[&str]) -> String {
    let out = backworks(args);
    assert!(
        out.status.success(),
        "backworks {args:?}:\n{}",
        output_text(&out)
    );
    output_text(&out)
}

/// Runs `backworks ARGS`, asserting it fails; its output.
pub fn backworks_refused(args: &[&str]) -> String {
    let out = backworks(args);
    assert!(
        !out.status.success(),
        "backworks {args:?} succeeded:\n{}",
        output_text(&out)
    );
    output_text(&out)
}

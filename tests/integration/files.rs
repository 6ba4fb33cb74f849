//! Plugin files you can trust and replace: the file checks (owner, mode, directory, symlinks, the
//! relaxed setting), the private copy that is what runs (a loaded file overwritten, truncated or
//! deleted under load changes nothing), and one copy shared by identical files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, backworks, client, rust_plugin, write_config};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of `lib` at `dir/name`, mode 0755.
fn copy_plugin(lib: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(rust_plugin(lib), &path).unwrap();
    chmod(&path, 0o755);
    path
}

/// `GET /_backworks/plugins/{name}` on the admin API.
async fn status(server: &Server, name: &str) -> Value {
    let res = client()
        .get(server.admin_url(&format!("/_backworks/plugins/{name}")))
        .send()
        .await
        .unwrap();
    res.json().await.unwrap()
}

/// The plugins of the file-check tests: one good file and one of each kind of bad one, all copies
/// of `hello`, plus a control library that always loads.
struct Files {
    dir: tempfile::TempDir,
    names: Vec<(&'static str, PathBuf)>,
}

fn bad_files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = copy_plugin("hello", d, "good.so");
    let world = copy_plugin("hello", d, "world.so");
    chmod(&world, 0o666);
    let group = copy_plugin("hello", d, "group.so");
    chmod(&group, 0o775);
    let other = copy_plugin("hello", d, "other.so");
    // The tests run as root; `nobody` owns nothing of ours.
    std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
    let open_dir = d.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    chmod(&open_dir, 0o777);
    let in_open_dir = copy_plugin("hello", &open_dir, "in-open.so");
    let bad_link = d.join("bad-link.so");
    std::os::unix::fs::symlink(&world, &bad_link).unwrap();
    let good_link = d.join("good-link.so");
    std::os::unix::fs::symlink(&good, &good_link).unwrap();
    Files {
        names: vec![
            ("good", good),
            ("world", world),
            ("group", group),
            ("other", other),
            ("open-dir", in_open_dir),
            ("bad-link", bad_link),
            ("good-link", good_link),
        ],
        dir,
    }
}

impl Files {
    fn yaml(&self, trust: &str) -> String {
        let mut yaml = format!("{trust}\nplugin_dirs: [\"{{{{plugins}}}}\"]\nplugins:\n");
        yaml += "  control:\n    path: libkv_store.so\n";
        for (name, path) in &self.names {
            yaml += &format!("  {name}:\n    path: {}\n", path.display());
        }
        yaml += "endpoints:\n  kv: { path: /kv, methods: [GET], plugin: control }\n";
        yaml
    }

    fn path(&self, name: &str) -> &Path {
        &self.names.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

/// What each bad file's refusal must say.
fn expected_problem(files: &Files, name: &str) -> Option<String> {
    let open = files.dir.path().join("open");
    Some(match name {
        "world" => "mode 0666 is world-writable".into(),
        "group" => "mode 0775 is group-writable".into(),
        "other" => "owned by uid 65534".into(),
        "open-dir" => format!(
            "its directory {} is world-writable (mode 0777)",
            open.display()
        ),
        "bad-link" => format!(
            "symlink to {}: mode 0666 is world-writable",
            files.path("world").display()
        ),
        _ => return None,
    })
}

#[tokio::test]
async fn bad_files_are_refused_with_path_and_mode_and_the_rest_serve() {
    let files = bad_files();
    let server = Server::start(&files.yaml(""));
    let ok = client().get(server.url("/kv")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "the control plugin serves");
    for (name, path) in &files.names {
        let status = status(&server, name).await;
        match expected_problem(&files, name) {
            None => assert_eq!(status["state"], "active", "{name}: {status}"),
            Some(problem) => {
                assert_eq!(status["state"], "error", "{name}: {status}");
                let reason = status["reason"].as_str().unwrap_or_default();
                assert!(
                    reason
                        .starts_with(&format!("{}: refused by the file checks: ", path.display())),
                    "{name}: {reason}"
                );
                assert!(reason.contains(&problem), "{name}: {reason}");
            }
        }
    }
    assert_eq!(
        client()
            .get(server.url("/kv"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_relaxed_setting_accepts_them() {
    let files = bad_files();
    let server = Server::start(&files.yaml("trust: { file_checks: relaxed }"));
    for (name, _) in &files.names {
        let status = status(&server, name).await;
        assert_eq!(status["state"], "active", "{name}: {status}");
    }
}

#[test]
fn validate_and_list_show_the_verdict_without_loading() {
    let files = bad_files();
    let config = write_config(files.dir.path(), &files.yaml(""));
    let out = backworks(&["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "plugin `world`: {}: refused by the file checks: mode 0666 is world-writable",
            files.path("world").display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("plugin `good`"), "{stderr}");

    let out = backworks(&[
        "plugin",
        "list",
        "--json",
        "-c",
        config.to_str().unwrap(),
        "--admin-url",
        "http://127.0.0.1:9",
    ]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("good")["file_checks"]["ok"], true);
    let group = row("group");
    assert_eq!(group["file_checks"]["ok"], false);
    assert_eq!(group["file_checks"]["mode"], "strict");
    assert_eq!(group["compatible"], false);
    assert!(
        group["problem"]
            .as_str()
            .unwrap()
            .contains("mode 0775 is group-writable"),
        "{group}"
    );

    let out = backworks(&["plugin", "inspect", files.path("other").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("file checks: refused (strict;"), "{stdout}");
    assert!(stdout.contains("owned by uid 65534"), "{stdout}");

    let relaxed = write_config(
        files.dir.path(),
        &files.yaml("trust: { file_checks: relaxed }"),
    );
    let out = backworks(&["validate", "-c", relaxed.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts of a load run.
#[derive(Debug, Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
}

impl Load {
    /// Asserts that no request of `what` failed or got another answer than expected.
    fn no_failure(&self, what: &str) {
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "{what}: {self:?}");
        assert_eq!(self.wrong.load(Ordering::Relaxed), 0, "{what}: {self:?}");
    }
}

/// Sends `GET url` from 8 concurrent clients until `stop`, checking each answer is 200 with
/// `expected` as body.
fn load(
    url: String,
    expected: Value,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let counts = Arc::new(Load::default());
    let http = client();
    let tasks = (0..8)
        .map(|_| {
            let (url, expected, stop, counts, http) = (
                url.clone(),
                expected.clone(),
                stop.clone(),
                counts.clone(),
                http.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(res) if res.status() == 200 => match res.json::<Value>().await {
                            Ok(body) if body == expected => {
                                counts.ok.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => counts.wrong.fetch_add(1, Ordering::Relaxed),
                        },
                        _ => counts.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (counts, tasks)
}

/// Serves `hello` from a file of its own, runs `change` on that file under constant load, and
/// checks that every request succeeded with hello's answer, before, during and after, and that
/// the host is still the same process. By default the host maps the file itself, under a lease
/// (see `leased`); with `BACKWORKS_PRIVATE_COPY=memfd` in `env`, a sealed copy.
/// Gives the server's maps and logs at the end, and whether it loaded the file in place.
async fn change_under_load(
    env: &[(&str, &str)],
    change: impl FnOnce(&Path),
) -> (String, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_plugin("hello", dir.path(), "greeter.so");
    let yaml = format!(
        "plugin_dirs: [\"{{{{plugins}}}}\"]\nplugins:\n  control:\n    path: libkv_store.so\n  \
         greeter:\n    path: {}\n    config: {{ greeting: Hi }}\n\
         endpoints:\n  hello: {{ path: \"/hello/{{name}}\", methods: [GET], plugin: greeter }}\n  \
         kv: {{ path: /kv, methods: [GET], plugin: control }}\n",
        file.display()
    );
    let server = Server::start_with_env(&yaml, env);
    let pid = server.pid();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (in_place, copied) = (
        maps.contains(&*file.to_string_lossy()),
        maps.contains("/memfd:backworks-greeter.so"),
    );
    let leased = env.is_empty() && crate::support::leases_work(dir.path());
    match leased {
        true => assert!(in_place && !copied, "mapped in place: {maps}"),
        false => assert!(copied && !in_place, "copied: {maps}"),
    }
    // In place, only read-only parts are mapped from the file: the writable data was made the
    // host's own memory at the load, before any plugin thread could write it.
    let writable_from_file = maps.lines().any(|line| {
        line.ends_with(&*file.to_string_lossy())
            && line
                .split_whitespace()
                .nth(1)
                .is_some_and(|perms| perms.contains('w'))
    });
    assert!(!writable_from_file, "{maps}");
    let stop = Arc::new(AtomicBool::new(false));
    let (greeter, mut tasks) = load(
        server.url("/hello/ana"),
        json!({"message": "Hi, ana!"}),
        stop.clone(),
    );
    let (control, more) = load(
        server.url("/kv"),
        json!({"count": 0, "keys": []}),
        stop.clone(),
    );
    tasks.extend(more);
    // Bounded load: a second before the change, two after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = greeter.ok.load(Ordering::Relaxed);
    change(&file);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    greeter.no_failure("greeter");
    control.no_failure("control");
    assert!(
        greeter.ok.load(Ordering::Relaxed) > before,
        "requests ran after the change: {greeter:?}"
    );
    let res = client().get(server.url("/hello/bo")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"message": "Hi, bo!"})
    );
    assert_eq!(server.pid(), pid);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the host is alive"
    );
    // The maps, then what each descriptor of the server reaches: after a write, the library's
    // descriptor reaches the sealed copy, not the file.
    let mut maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            maps.push_str(&format!("fd {}\n", target.display()));
        }
    }
    let logs = server.stop();
    assert!(!logs.contains("panicked"), "{logs}");
    (maps, logs, leased)
}

/// What a written file leaves when it was loaded in place: the host said so, and maps nothing of
/// the file any more: its code and constants are mapped from the sealed copy made at the write
/// (`/memfd:backworks-greeter.so`), its relocated data is the host's own memory, all before the
/// writer went on.
fn detached((maps, logs, leased): &(String, String, bool)) {
    if !leased {
        return;
    }
    assert!(
        logs.contains("is being written: the library now runs from memory of its own")
            && logs.contains("library=greeter.so"),
        "{logs}"
    );
    assert!(
        !maps.lines().any(|line| line.ends_with("/greeter.so")),
        "nothing of the file is mapped or open: {maps}"
    );
    assert!(
        maps.contains("/memfd:backworks-greeter.so"),
        "the code is mapped from the sealed copy: {maps}"
    );
}

#[tokio::test]
async fn another_build_copied_over_a_loaded_library_changes_nothing() {
    // `cp` writes in place: same inode, new bytes (the kv-store plugin's).
    let copy = |file: &Path| {
        std::fs::copy(rust_plugin("kv_store"), file).unwrap();
    };
    detached(&change_under_load(&[], copy).await);
    change_under_load(&[("BACKWORKS_PRIVATE_COPY", "memfd")], copy).await;
}

#[tokio::test]
async fn a_loaded_library_truncated_changes_nothing() {
    let truncate = |file: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(0)
            .unwrap();
    };
    detached(&change_under_load(&[], truncate).await);
    change_under_load(&[("BACKWORKS_PRIVATE_COPY", "memfd")], truncate).await;
}

#[tokio::test]
async fn a_loaded_library_written_in_the_middle_changes_nothing() {
    // `dd conv=notrunc`: the same length, a page of zeros over the code.
    detached(
        &change_under_load(&[], |file| {
            let file = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[0; 65536], 0x50000).unwrap();
        })
        .await,
    );
}

#[tokio::test]
async fn a_loaded_library_deleted_changes_nothing() {
    // No write: the lease holds, the file's inode lives on while it is mapped.
    let (maps, _, leased) =
        change_under_load(&[], |file| std::fs::remove_file(file).unwrap()).await;
    if leased {
        assert!(maps.contains("greeter.so (deleted)"), "{maps}");
    }
}

/// The plugin libraries mapped in process `pid` (`a.so` and `b.so`, or their private copies), as
/// `/proc/PID/maps` names them.
fn mapped_copies(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5).map(|_| line))
        .map(|line| {
            line.splitn(6, char::is_whitespace)
                .last()
                .unwrap()
                .trim()
                .to_owned()
        })
        .filter(|path| {
            path.contains("backworks-") || path.ends_with("/a.so") || path.ends_with("/b.so")
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

async fn two_plugins_from_identical_files(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let a = copy_plugin("kv_store", dir.path(), "a.so");
    let b = copy_plugin("kv_store", dir.path(), "b.so");
    let yaml = format!(
        "plugins:\n  a:\n    path: {}\n  b:\n    path: {}\n\
         endpoints:\n  item: {{ path: \"/kv/{{key}}\", methods: [GET, PUT], plugin: a }}\n  \
         list: {{ path: /kv, methods: [GET], plugin: b }}\n",
        a.display(),
        b.display()
    );
    let server = Server::start_with_env(&yaml, env);
    let http = client();
    let put = http
        .put(server.url("/kv/only-in-a"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = http.get(server.url("/kv/only-in-a")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    // Separate instances: b has its own, empty store.
    let list: Value = crate::support::get_json(server.url("/kv")).await;
    assert_eq!(list, json!({"count": 0, "keys": []}));

    let copies = mapped_copies(server.pid());
    assert_eq!(copies.len(), 1, "one library for both: {copies:?}");
    // The file first loaded, or a copy named after it (the two start at once).
    assert!(
        ["a.so", "b.so"].iter().any(|f| copies[0].contains(f)),
        "{copies:?}"
    );
    copies
}

#[tokio::test]
async fn identical_files_share_one_library_and_keep_separate_state() {
    let copies = two_plugins_from_identical_files(&[]).await;
    if crate::support::leases_work(&std::env::temp_dir()) {
        assert!(
            copies[0].ends_with("/a.so") || copies[0].ends_with("/b.so"),
            "in place: {copies:?}"
        );
    } else {
        assert!(copies[0].starts_with("/memfd:backworks-"), "{copies:?}");
    }
}

#[tokio::test]
async fn identical_files_share_one_sealed_copy_when_copies_are_asked_for() {
    let copies = two_plugins_from_identical_files(&[("BACKWORKS_PRIVATE_COPY", "memfd")]).await;
    assert!(copies[0].starts_with("/memfd:backworks-"), "{copies:?}");
}

#[tokio::test]
async fn the_private_directory_serves_where_memfd_is_not_wanted() {
    let copies = two_plugins_from_identical_files(&[("BACKWORKS_PRIVATE_COPY", "directory")]).await;
    assert!(copies[0].contains("/backworks-copy-"), "{copies:?}");
    assert!(copies[0].ends_with(".so (deleted)"), "{copies:?}");
}

#[tokio::test]
async fn a_process_plugin_runs_the_checked_bytes_after_the_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_plugin("hello", dir.path(), "greeter.so");
    let yaml = format!(
        "plugins:\n  greeter:\n    path: {}\n    isolation: process\n    breaker: {{ enabled: false }}\n    config: {{ greeting: Hi }}\n\
         endpoints:\n  hello: {{ path: \"/hello/{{name}}\", methods: [GET], plugin: greeter }}\n",
        file.display()
    );
    let server = Server::start(&yaml);
    let http = client();
    let hello = || async {
        let res = http.get(server.url("/hello/ana")).send().await.unwrap();
        (
            res.status().as_u16(),
            res.json::<Value>().await.unwrap_or_default(),
        )
    };
    assert_eq!(hello().await, (200, json!({"message": "Hi, ana!"})));
    // Another build over the file, then a restart of the child: it loads the host's checked copy.
    std::fs::copy(rust_plugin("kv_store"), &file).unwrap();
    let child = status(&server, "greeter").await["process"]["pid"]
        .as_u64()
        .expect("child pid");
    nix_kill(child as i32);
    let mut answer = hello().await;
    for _ in 0..100 {
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = hello().await;
    }
    assert_eq!(
        answer,
        (200, json!({"message": "Hi, ana!"})),
        "{}",
        server.logs()
    );
    let now = status(&server, "greeter").await["process"]["pid"].as_u64();
    assert_ne!(now, Some(child), "the child was restarted");
}

fn nix_kill(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Two plugin entries loaded from one path share one library (and one lease on the file): a
/// write over it, under load on both (`a` greets, `b` echoes), changes neither, and the host
/// detaches the library once.
#[tokio::test]
async fn two_plugins_from_one_file_survive_a_write_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_plugin("hello", dir.path(), "shared.so");
    let yaml = format!(
        "plugins:\n  a:\n    path: {path}\n    config: {{ greeting: Hi }}\n  b:\n    path: {path}\n\
         endpoints:\n  a: {{ path: \"/hello/{{name}}\", methods: [GET], plugin: a }}\n  \
         b: {{ path: /echo, methods: [POST], plugin: b }}\n",
        path = file.display()
    );
    let server = Server::start(&yaml);
    let leased = crate::support::leases_work(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let (a, tasks) = load(
        server.url("/hello/ana"),
        json!({"message": "Hi, ana!"}),
        stop.clone(),
    );
    let echoes = Arc::new(Load::default());
    let echo = {
        let (url, stop, counts, http) =
            (server.url("/echo"), stop.clone(), echoes.clone(), client());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.post(&url).body("same bytes").send().await {
                    Ok(res) if res.status() == 200 => match res.bytes().await {
                        Ok(body) if &body[..] == b"same bytes" => {
                            counts.ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => counts.wrong.fetch_add(1, Ordering::Relaxed),
                    },
                    _ => counts.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::copy(rust_plugin("kv_store"), &file).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    echo.await.unwrap();
    for (what, counts) in [("a", &a), ("b", &echoes)] {
        counts.no_failure(what);
        assert!(counts.ok.load(Ordering::Relaxed) > 0, "{what}: {counts:?}");
    }
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let logs = server.stop();
    assert!(!logs.contains("panicked"), "{logs}");
    if leased {
        assert_eq!(
            logs.matches("the library now runs from memory of its own")
                .count(),
            1,
            "{logs}"
        );
        assert!(
            !maps.lines().any(|line| line.ends_with("/shared.so")),
            "{maps}"
        );
    }
}

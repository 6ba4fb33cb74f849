//! Distribution: `plugin pack|publish|install|update|remove` against an index served over HTTP by
//! the test, `type: marketplace` resolved through `backworks.lock` and updated with a reload under
//! load, and every refusal of `install` (hash, signature, key, target, archive, version, ABI).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::Value;
use tar::EntryType;

use crate::support::{
    Server, backworks_ok as ok, backworks_refused as refused, client, get_json, rust_plugin,
    serve_dir,
};

/// A folder with key pairs, plugin builds, packages, an index and a config.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `plugin keygen -W`: the public key line.
    fn keygen(&self, name: &str) -> String {
        ok(&[
            "plugin",
            "keygen",
            "-W",
            "-p",
            &self.s(&format!("{name}.pub")),
            "-s",
            &self.s(&format!("{name}.key")),
        ]);
        let public = std::fs::read_to_string(self.path(&format!("{name}.pub"))).unwrap();
        public.lines().nth(1).unwrap().trim().to_owned()
    }

    /// `libhello.so` with its metadata's `from` replaced by `to` (same length), in a folder of its
    /// own: another build of hello, e.g. another version or ABI.
    fn hello_patched(&self, from: &str, to: &str) -> PathBuf {
        assert_eq!(from.len(), to.len());
        let mut bytes = std::fs::read(rust_plugin("hello")).unwrap();
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("`{from}` in libhello.so"));
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        let dir = self.path(&format!("build-{}", to.replace(['=', '\0', '.'], "_")));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libhello.so");
        std::fs::write(&lib, bytes).unwrap();
        lib
    }

    /// `plugin pack LIB -s KEY.key EXTRA…` (`--out packages` unless EXTRA has one): the package's
    /// path.
    fn pack(&self, lib: &Path, key: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec![
            "plugin".to_owned(),
            "pack".into(),
            lib.display().to_string(),
            "-s".into(),
            self.s(&format!("{key}.key")),
        ];
        if !extra.contains(&"--out") {
            args.extend(["--out".into(), self.s("packages")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shown = ok(&args);
        let line = shown.lines().next().unwrap();
        PathBuf::from(line.split(": plugin").next().unwrap())
    }

    /// A config trusting `keys`, installing into `plugins/`, with `rest` appended.
    fn config(&self, keys: &[&str], rest: &str) -> PathBuf {
        let keys: String = keys.iter().map(|k| format!("    - {k}\n")).collect();
        let yaml = format!("plugin_dirs: [plugins]\ntrust:\n  keys:\n{keys}{rest}");
        let path = self.path("backworks.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn lock(&self) -> Value {
        let text = std::fs::read_to_string(self.path("backworks.lock")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every name in `plugins/` (hidden ones included).
    fn installed(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path("plugins")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A package's files.
fn unpack(package: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(package).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(&bytes[..]));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.insert(name, content);
    }
    files
}

/// Writes a package from `files`, after `raw` entries written with their names as given (so
/// `../x` or `/x` can be written), each `(name, type, content)`.
fn repack(
    out: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    raw: &[(&str, EntryType, &[u8])],
) -> PathBuf {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (name, kind, content) in raw {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(content.len() as u64);
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if matches!(kind, EntryType::Symlink | EntryType::Link) {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, content.as_slice())
            .unwrap();
    }
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    std::fs::write(out, bytes).unwrap();
    out.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_publish_install_over_http_serve_then_update_with_a_reload_under_load() {
    let ws = Workspace::new();
    let key = ws.keygen("publisher");
    let index = ws.path("index");
    let url = serve_dir(&index);

    // Pack and publish hello 0.1.0 (the index holds relative URLs).
    let v1 = ws.pack(&rust_plugin("hello"), "publisher", &[]);
    let files = unpack(&v1);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "backworks-package.json",
            "backworks-package.json.minisig",
            "libhello.so",
            "libhello.so.minisig",
            "schema.json"
        ]
    );
    // The config schema hello declares, read from the library without starting it.
    let schema: Value = serde_json::from_slice(&files["schema.json"]).unwrap();
    assert!(schema["properties"]["greeting"].is_object(), "{schema}");
    let manifest: Value = serde_json::from_slice(&files["backworks-package.json"]).unwrap();
    assert_eq!(
        (&manifest["name"], &manifest["version"], &manifest["kind"]),
        (
            &Value::from("hello"),
            &Value::from("0.1.0"),
            &Value::from("library")
        )
    );
    let published = ok(&[
        "plugin",
        "publish",
        &v1.display().to_string(),
        "--index",
        &ws.s("index"),
    ]);
    assert!(published.contains("published `hello` 0.1.0"), "{published}");
    let line: Value =
        serde_json::from_str(&std::fs::read_to_string(index.join("he/ll/hello")).unwrap()).unwrap();
    assert_eq!(
        line["url"],
        format!("packages/{}", v1.file_name().unwrap().to_str().unwrap())
    );
    // Publishing the same version again is refused.
    let again = refused(&[
        "plugin",
        "publish",
        &v1.display().to_string(),
        "--index",
        &ws.s("index"),
    ]);
    assert!(again.contains("already published"), "{again}");

    // A server, at first without the plugin; the lock file goes beside its config.
    let base = format!(
        "plugin_dirs: [plugins]\ntrust:\n  keys:\n    - {key}\nmarketplace:\n  index: {url}\n"
    );
    let server = Arc::new(Server::start(&base));
    let config = server.config_path().display().to_string();
    let dir = server.config_path().parent().unwrap().to_path_buf();

    // `type: marketplace` before the install: a config error that says what to run.
    let with_hello = format!(
        "{base}plugins:\n  hello:\n    type: marketplace\n    version: \"^0.1\"\n\
         endpoints:\n  hi: {{ path: \"/hello/{{name}}\", plugin: hello }}\n"
    );
    server.rewrite_config(&with_hello);
    let not_installed = refused(&["validate", "-c", &config]);
    assert!(
        not_installed.contains(
            ":10:14: plugin `hello` (`type: marketplace`, version `^0.1`) is not installed"
        ) && not_installed.contains("run `backworks plugin install hello@^0.1`"),
        "{not_installed}"
    );

    // Install every marketplace plugin of the config from the index, over HTTP.
    let installed = ok(&["plugin", "install", "-c", &config]);
    assert!(installed.contains("installed `hello` 0.1.0"), "{installed}");
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backworks.lock")).unwrap())
            .unwrap();
    let entry = &lock["plugins"][0];
    assert_eq!(entry["name"], "hello");
    assert_eq!(entry["version"], "0.1.0");
    assert_eq!(entry["source"], format!("index {url}"));
    assert_eq!(entry["sha256"], line["sha256"]);
    assert_eq!(entry["key_id"].as_str().unwrap().len(), 16);
    let folder = entry["path"].as_str().unwrap().to_owned();
    let sha = line["sha256"].as_str().unwrap();
    assert_eq!(folder, format!("plugins/hello-0.1.0-{}", &sha[..16]));
    assert!(dir.join(&folder).join("libhello.so").is_file());
    ok(&["validate", "-c", &config]);

    // The running server picks it up with a reload and serves through it.
    let reload = || async {
        let res = client()
            .post(server.admin_url("/_backworks/reload"))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, report) = reload().await;
    assert_eq!(status, 200, "{report}");
    let answer = get_json(server.url("/hello/ana")).await;
    assert!(
        answer["message"].as_str().unwrap().contains("ana"),
        "{answer}"
    );
    let about = get_json(server.admin_url("/_backworks/plugins/hello")).await;
    assert_eq!(about["version"], "0.1.0", "{about}");

    // Under constant load: publish 0.1.1 (another build), `plugin update`, reload.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = match http.get(server.url("/hello/ana")).send().await {
                        Ok(res) => res.status().as_u16(),
                        Err(_) => 0,
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let v2_lib = ws.hello_patched("version=0.1.0\0", "version=0.1.1\0");
    let v2 = ws.pack(&v2_lib, "publisher", &[]);
    ok(&[
        "plugin",
        "publish",
        &v2.display().to_string(),
        "--index",
        &ws.s("index"),
    ]);
    let updated = tokio::task::spawn_blocking({
        let config = config.clone();
        move || ok(&["plugin", "update", "hello", "-c", &config])
    })
    .await
    .unwrap();
    assert!(updated.contains("installed `hello` 0.1.1"), "{updated}");
    let (status, report) = reload().await;
    assert_eq!(status, 200, "{report}");
    let about = get_json(server.admin_url("/_backworks/plugins/hello")).await;
    assert_eq!(about["version"], "0.1.1", "{about}");
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for client in load {
        statuses.extend(client.await.unwrap());
    }
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed: {statuses:?}"
    );
    // The replaced version's folder is gone; a second update finds nothing newer.
    assert!(!dir.join(&folder).exists());
    let again = ok(&["plugin", "update", "-c", &config]);
    assert!(again.contains("`hello` 0.1.1 is up to date"), "{again}");

    // `remove` is refused while the config names the plugin, then works.
    let named = refused(&["plugin", "remove", "hello", "-c", &config]);
    assert!(named.contains("still names plugin `hello`"), "{named}");
    server.rewrite_config(&base);
    let removed = ok(&["plugin", "remove", "hello", "-c", &config]);
    assert!(removed.contains("removed `hello` 0.1.1"), "{removed}");
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backworks.lock")).unwrap())
            .unwrap();
    assert_eq!(lock["plugins"], serde_json::json!([]));
    let left: Vec<_> = std::fs::read_dir(dir.join("plugins")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn install_from_a_file_and_from_a_url() {
    let ws = Workspace::new();
    let key = ws.keygen("publisher");
    let package = ws.pack(&rust_plugin("hello"), "publisher", &[]);
    let url = serve_dir(&ws.path("packages"));
    let config = ws.config(
        &[&key],
        "plugins:\n  hello:\n    type: marketplace\n    version: \"=0.1.0\"\n",
    );
    let config = config.display().to_string();

    let from_file = ok(&[
        "plugin",
        "install",
        &package.display().to_string(),
        "-c",
        &config,
    ]);
    assert!(from_file.contains("installed `hello` 0.1.0"), "{from_file}");
    let lock = ws.lock();
    assert_eq!(lock["plugins"][0]["source"], package.display().to_string());
    ok(&["validate", "-c", &config]);
    ok(&["plugin", "remove", "hello", "-c", &config, "--force"]);
    assert!(ws.installed().is_empty());

    let file = package.file_name().unwrap().to_str().unwrap();
    let package_url = format!("{url}/{file}");
    let sha = backworks_plugin_host::sha256_hex(&std::fs::read(&package).unwrap());
    let from_url = ok(&[
        "plugin",
        "install",
        &package_url,
        "--sha256",
        &sha,
        "-c",
        &config,
    ]);
    assert!(from_url.contains("installed `hello` 0.1.0"), "{from_url}");
    assert_eq!(ws.lock()["plugins"][0]["source"], package_url);

    // A lock entry outside the config's requirement is a config error naming the fix.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("=0.1.0", "^2"),
    )
    .unwrap();
    let outside = refused(&["validate", "-c", &config]);
    assert!(
        outside.contains("plugin `hello` requires version `^2`, but")
            && outside.contains("has 0.1.0 installed; run `backworks plugin update hello`"),
        "{outside}"
    );
    // A missing URL is an error naming it.
    let missing = refused(&[
        "plugin",
        "install",
        &format!("{url}/nope.bwpkg"),
        "-c",
        &config,
    ]);
    assert!(
        missing.contains(&format!("{url}/nope.bwpkg: not found")),
        "{missing}"
    );
}

#[test]
fn every_refusal_names_its_reason_and_leaves_nothing_behind() {
    let ws = Workspace::new();
    let key = ws.keygen("trusted");
    ws.keygen("stranger");
    let good = ws.pack(&rust_plugin("hello"), "trusted", &[]);
    let config = ws.config(&[&key], "");
    let config = config.display().to_string();
    let files = unpack(&good);
    let bad = |name: &str| ws.path(name);

    let mut cases: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
    // Bad hash of the whole package.
    cases.push((
        "bad hash".into(),
        good.clone(),
        vec!["--sha256".into(), "0".repeat(64)],
    ));
    // A tampered manifest: its signature no longer verifies.
    let mut tampered = files.clone();
    let manifest = String::from_utf8(tampered["backworks-package.json"].clone()).unwrap();
    tampered.insert(
        "backworks-package.json".into(),
        manifest
            .replace("\"format\": 1", "\"format\":  1")
            .into_bytes(),
    );
    cases.push((
        "backworks-package.json: signature of another file".into(),
        repack(&bad("manifest.bwpkg"), &tampered, &[]),
        vec![],
    ));
    // A tampered signature (its trusted comment): it no longer verifies.
    let mut tampered = files.clone();
    let signature = String::from_utf8(tampered["backworks-package.json.minisig"].clone()).unwrap();
    let signature: Vec<String> = signature
        .lines()
        .map(|l| match l.starts_with("trusted comment:") {
            true => format!("{l} timestamp=0"),
            false => l.to_owned(),
        })
        .collect();
    tampered.insert(
        "backworks-package.json.minisig".into(),
        (signature.join("\n") + "\n").into_bytes(),
    );
    cases.push((
        "backworks-package.json: bad signature".into(),
        repack(&bad("signature.bwpkg"), &tampered, &[]),
        vec![],
    ));
    // No signature at all.
    let mut unsigned = files.clone();
    unsigned.remove("backworks-package.json.minisig");
    cases.push((
        "signature missing".into(),
        repack(&bad("unsigned.bwpkg"), &unsigned, &[]),
        vec![],
    ));
    // A tampered library: the manifest's hash of it no longer matches.
    let mut tampered = files.clone();
    tampered.get_mut("libhello.so").unwrap().push(0);
    cases.push((
        "libhello.so: bad hash".into(),
        repack(&bad("library.bwpkg"), &tampered, &[]),
        vec![],
    ));
    // An extra file the manifest does not list.
    let mut extra = files.clone();
    extra.insert("evil.sh".into(), b"#!/bin/sh".to_vec());
    cases.push((
        "holds `evil.sh`, which its manifest does not list".into(),
        repack(&bad("extra.bwpkg"), &extra, &[]),
        vec![],
    ));
    // Signed by a key the config does not trust.
    let stranger = ws.pack(
        &ws.hello_patched("version=0.1.0\0", "version=0.3.0\0"),
        "stranger",
        &[],
    );
    cases.push(("signed by untrusted key".into(), stranger, vec![]));
    // Built for another target.
    let other = ws.pack(
        &rust_plugin("hello"),
        "trusted",
        &["--target", "riscv64gc-unknown-none-elf"],
    );
    cases.push((
        "built for target `riscv64gc-unknown-none-elf`, this host is".into(),
        other,
        vec![],
    ));
    // An incompatible ABI.
    let minor = backworks_plugin_sdk::abi::ABI_MINOR;
    let abi = ws.pack(
        &ws.hello_patched(&format!("abi=1.{minor}\0"), &format!("abi=9.{minor}\0")),
        "trusted",
        &["--out", &ws.s("abi")],
    );
    cases.push((
        format!("incompatible with this host: ABI 9.{minor}"),
        abi,
        vec![],
    ));
    // Archives that try to write outside their folder, or hold special files.
    for (name, kind, reason) in [
        (
            "../x",
            EntryType::Regular,
            "entry path `../x` holds a `..` component",
        ),
        (
            "a/../../x",
            EntryType::Regular,
            "entry path `a/../../x` holds a `..`",
        ),
        (
            "/tmp/x",
            EntryType::Regular,
            "entry path `/tmp/x` is an absolute path",
        ),
        (
            "link",
            EntryType::Symlink,
            "entry `link` is a symbolic link",
        ),
        ("hard", EntryType::Link, "entry `hard` is a hard link"),
        ("fifo", EntryType::Fifo, "entry `fifo` is a fifo"),
        ("tty", EntryType::Char, "entry `tty` is a character device"),
        ("disk", EntryType::Block, "entry `disk` is a block device"),
    ] {
        let file = bad(&format!("raw-{}.bwpkg", name.replace('/', "_")));
        let data: &[u8] = if kind == EntryType::Regular {
            b"x"
        } else {
            b""
        };
        cases.push((
            format!("refused archive: {reason}"),
            repack(&file, &files, &[(name, kind, data)]),
            vec![],
        ));
    }
    // A duplicate entry.
    let libhello = files["libhello.so"].clone();
    cases.push((
        "refused archive: entry `libhello.so` appears twice".into(),
        repack(
            &bad("dup.bwpkg"),
            &files,
            &[("libhello.so", EntryType::Regular, &libhello)],
        ),
        vec![],
    ));

    for (reason, package, extra) in &cases {
        let mut args = vec![
            "plugin",
            "install",
            package.to_str().unwrap(),
            "-c",
            &config,
        ];
        args.extend(extra.iter().map(String::as_str));
        let out = refused(&args);
        assert!(out.contains(reason), "expected `{reason}`:\n{out}");
        assert!(
            out.contains(package.file_name().unwrap().to_str().unwrap()),
            "the package is named:\n{out}"
        );
        assert!(
            ws.installed().is_empty(),
            "{reason}: left {:?}",
            ws.installed()
        );
        assert!(!ws.path("backworks.lock").exists(), "{reason}: a lock file");
    }
    // Nothing was refused for the wrong reason: the good package installs.
    ok(&["plugin", "install", good.to_str().unwrap(), "-c", &config]);
}

#[test]
fn versions_the_index_does_not_have_are_refused() {
    let ws = Workspace::new();
    let key = ws.keygen("publisher");
    let package = ws.pack(&rust_plugin("hello"), "publisher", &[]);
    ok(&[
        "plugin",
        "publish",
        package.to_str().unwrap(),
        "--index",
        &ws.s("index"),
    ]);
    let config = ws.config(
        &[&key],
        &format!("marketplace: {{index: {}}}\n", ws.s("index")),
    );
    let config = config.display().to_string();

    let none = refused(&["plugin", "install", "hello@^9", "-c", &config]);
    assert!(
        none.contains("no version ^9 of plugin `hello` in the index can be installed")
            && none.contains("the index has: 0.1.0"),
        "{none}"
    );
    let unknown = refused(&["plugin", "install", "nope", "-c", &config]);
    assert!(
        unknown.contains("plugin `nope` is not in the index"),
        "{unknown}"
    );
    let update = refused(&["plugin", "update", "hello", "-c", &config]);
    assert!(update.contains("`hello` is not installed"), "{update}");
    assert!(ws.installed().is_empty());
    // From the config's index, `hello` (any version) installs.
    let installed = ok(&["plugin", "install", "hello", "-c", &config]);
    assert!(installed.contains("installed `hello` 0.1.0"), "{installed}");
}

#[test]
fn install_needs_trusted_keys() {
    let ws = Workspace::new();
    ws.keygen("publisher");
    let package = ws.pack(&rust_plugin("hello"), "publisher", &[]);
    let path = ws.path("backworks.yaml");
    std::fs::write(&path, "plugin_dirs: [plugins]\n").unwrap();
    let out = refused(&[
        "plugin",
        "install",
        package.to_str().unwrap(),
        "-c",
        path.to_str().unwrap(),
    ]);
    assert!(out.contains("`trust.keys` is empty"), "{out}");
    assert!(ws.installed().is_empty());
}

/// A Python plugin with the SDK's helper module beside it, packed as a script.
const SCRIPT: &str = r#"
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backworks_plugin import Plugin, Response

plugin = Plugin(name="greeter", version="1.0.0", description="a packed script")

@plugin.endpoint
def handle(request):
    return Response.json({"packed": True, "path": request.path})

if __name__ == "__main__":
    plugin.run()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_package_installs_and_serves_as_a_process_plugin() {
    let ws = Workspace::new();
    let key = ws.keygen("publisher");
    let script = ws.path("greeter.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let helper = crate::support::root().join("sdk/python/backworks_plugin.py");
    let package = ws.pack(
        &script,
        "publisher",
        &[
            "--name",
            "greeter",
            "--version",
            "1.0.0",
            "--include",
            helper.to_str().unwrap(),
        ],
    );
    assert!(
        package.ends_with("greeter-1.0.0-any.bwpkg"),
        "{}",
        package.display()
    );
    let manifest: Value =
        serde_json::from_slice(&unpack(&package)["backworks-package.json"]).unwrap();
    assert_eq!(manifest["kind"], "command");
    assert_eq!(
        manifest["command"],
        serde_json::json!(["python3", "greeter.py"])
    );

    let base = format!("plugin_dirs: [plugins]\ntrust:\n  keys:\n    - {key}\n");
    let server = Server::start(&base);
    let config = server.config_path().display().to_string();
    ok(&[
        "plugin",
        "install",
        package.to_str().unwrap(),
        "-c",
        &config,
    ]);
    server.rewrite_config(&format!(
        "{base}plugins:\n  greeter: {{ type: marketplace, version: \"^1\" }}\n\
         endpoints:\n  g: {{ path: /greet, plugin: greeter }}\n"
    ));
    let res = client()
        .post(server.admin_url("/_backworks/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    let answer = get_json(server.url("/greet")).await;
    assert_eq!(
        answer,
        serde_json::json!({"packed": true, "path": "/greet"})
    );
    let about = get_json(server.admin_url("/_backworks/plugins/greeter")).await;
    assert_eq!(about["isolation"], "process", "{about}");
}

/// With `reload.watch`, `plugin update` alone is enough: the lock file now resolves the plugin to
/// the new version's file, whose content differs, so the watcher reloads.
#[tokio::test(flavor = "multi_thread")]
async fn the_file_watcher_serves_an_update_without_an_explicit_reload() {
    let ws = Workspace::new();
    let key = ws.keygen("publisher");
    let index = ws.path("index");
    let v1 = ws.pack(&rust_plugin("hello"), "publisher", &[]);
    ok(&[
        "plugin",
        "publish",
        &v1.display().to_string(),
        "--index",
        &ws.s("index"),
    ]);
    let url = serve_dir(&index);
    let yaml = format!(
        "plugin_dirs: [plugins]\ntrust:\n  keys:\n    - {key}\nmarketplace:\n  index: {url}\n\
         reload:\n  watch: true\n  watch_interval_ms: 100\n"
    );
    let server = Server::start(&yaml);
    let config = server.config_path().display().to_string();
    server.rewrite_config(&format!(
        "{yaml}plugins:\n  hello:\n    type: marketplace\n    version: \"^0.1\"\n\
         endpoints:\n  hi: {{ path: \"/hello/{{name}}\", plugin: hello }}\n"
    ));
    // Installing before the watcher reads the new config: the config and the file arrive together.
    let installed = tokio::task::spawn_blocking({
        let config = config.clone();
        move || ok(&["plugin", "install", "-c", &config])
    })
    .await
    .unwrap();
    assert!(installed.contains("installed `hello` 0.1.0"), "{installed}");
    let version = || async {
        let res = client()
            .get(server.admin_url("/_backworks/plugins/hello"))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap_or(Value::Null)["version"].clone()
    };
    wait_for_version(&version, "0.1.0").await;

    let v2 = ws.pack(
        &ws.hello_patched("version=0.1.0\0", "version=0.1.1\0"),
        "publisher",
        &[],
    );
    ok(&[
        "plugin",
        "publish",
        &v2.display().to_string(),
        "--index",
        &ws.s("index"),
    ]);
    let updated = tokio::task::spawn_blocking(move || ok(&["plugin", "update", "-c", &config]))
        .await
        .unwrap();
    assert!(updated.contains("installed `hello` 0.1.1"), "{updated}");
    wait_for_version(&version, "0.1.1").await;
    let answer = get_json(server.url("/hello/ana")).await;
    assert_eq!(answer["message"], "Hello, ana!", "{answer}");
}

/// Polls `version()` until it is `want` (the watcher's interval is 100 ms; a minute of slack
/// for a loaded machine: this is a condition, not a timing).
async fn wait_for_version<F, Fut>(version: &F, want: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = version().await;
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never served {want}; the plugin reports {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

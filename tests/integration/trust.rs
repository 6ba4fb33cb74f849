//! Plugin signatures: `plugin keygen/sign/verify`, the signature fault catalogue through
//! `validate` and `plugin verify`, interoperability with the real `minisign` command in both
//! directions, and key rotation.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{backworks, rust_plugin};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A folder with copies of the `hello` and `kv-store` plugins and key pairs made on demand.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for lib in ["hello", "kv_store"] {
            let from = rust_plugin(lib);
            std::fs::copy(
                &from,
                dir.path().join("plugins").join(from.file_name().unwrap()),
            )
            .unwrap();
        }
        Workspace { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lib(&self, lib: &str) -> PathBuf {
        self.path("plugins")
            .join(rust_plugin(lib).file_name().unwrap())
    }

    /// `backworks plugin keygen -W`: returns the key id and the public key line.
    fn keygen(&self, name: &str) -> (String, String) {
        let public = self.path(&format!("{name}.pub"));
        let secret = self.path(&format!("{name}.key"));
        let out = backworks(&[
            "plugin",
            "keygen",
            "-W",
            "-p",
            public.to_str().unwrap(),
            "-s",
            secret.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        key_of(&public)
    }

    fn sign(&self, lib: &Path, key: &str) {
        let secret = self.path(&format!("{key}.key"));
        let out = backworks(&[
            "plugin",
            "sign",
            lib.to_str().unwrap(),
            "-s",
            secret.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("signed as `backworks-plugin name="),
            "{}",
            text(&out.stdout)
        );
    }

    /// A config serving `hello` (and `kv-store`) from the copies, trusting `keys`.
    fn config(&self, keys: &[&str], require: bool, extra: &str) -> PathBuf {
        let keys: String = keys.iter().map(|k| format!("    - {k}\n")).collect();
        let yaml = format!(
            "plugin_dirs: []\ntrust:\n  require_signatures: {require}\n  keys:\n{keys}\
             plugins:\n  hello:\n    path: {}\n{extra}\
             endpoints:\n  hi:\n    path: /hello/{{name}}\n    plugin: hello\n",
            self.lib("hello").display()
        );
        let path = self.path("backworks.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn validate(&self, config: &Path) -> (i32, String) {
        let out = backworks(&["validate", "-c", config.to_str().unwrap()]);
        (
            out.status.code().unwrap(),
            text(&out.stdout) + &text(&out.stderr),
        )
    }

    fn verify(&self, lib: &Path, public: &str) -> (i32, String) {
        let out = backworks(&[
            "plugin",
            "verify",
            lib.to_str().unwrap(),
            "-p",
            self.path(&format!("{public}.pub")).to_str().unwrap(),
        ]);
        (
            out.status.code().unwrap(),
            text(&out.stdout) + &text(&out.stderr),
        )
    }
}

/// The key id and base64 line of a `.pub` file.
fn key_of(public: &Path) -> (String, String) {
    let content = std::fs::read_to_string(public).unwrap();
    let mut lines = content.lines();
    let comment = lines.next().unwrap();
    // As backworks prints key ids: 16 digits (minisign may leave out leading zeros).
    let id = u64::from_str_radix(comment.rsplit(' ').next().unwrap(), 16).unwrap();
    (format!("{id:016X}"), lines.next().unwrap().to_owned())
}

fn sha256(path: &Path) -> String {
    backworks_plugin_host::sha256_hex(&std::fs::read(path).unwrap())
}

fn minisign(args: &[&str]) -> std::process::Output {
    Command::new("minisign")
        .args(args)
        .output()
        .expect("the minisign command (Debian package `minisign`; .ci/run installs it)")
}

fn assert_has(output: &(i32, String), code: i32, wanted: &[&str]) {
    assert_eq!(output.0, code, "{}", output.1);
    for w in wanted {
        assert!(output.1.contains(w), "missing `{w}` in:\n{}", output.1);
    }
}

#[test]
fn signed_plugin_validates_and_verifies() {
    let ws = Workspace::new();
    let (id, key) = ws.keygen("release");
    let hello = ws.lib("hello");
    ws.sign(&hello, "release");
    let config = ws.config(&[&key], true, "");
    assert_has(&ws.validate(&config), 0, &["ok (1 plugins"]);
    assert_has(
        &ws.verify(&hello, "release"),
        0,
        &[&format!(
            "signature valid (key id {id}): plugin `hello` 0.1.0"
        )],
    );
    // `plugin list` (on disk) and `plugin inspect` show the verdict without loading.
    let out = backworks(&[
        "plugin",
        "list",
        "-c",
        config.to_str().unwrap(),
        "--json",
        "--admin-url",
        "http://127.0.0.1:9",
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["plugins"][0]["signature"],
        format!("valid (key id {id})")
    );
    let out = backworks(&[
        "plugin",
        "inspect",
        hello.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).contains(&format!("signature:   valid (key id {id})")),
        "{}",
        text(&out.stdout)
    );
    // Without `require_signatures`, an unsigned library is "not required".
    std::fs::remove_file(backworks_plugin_host::signature_path(&hello)).unwrap();
    let config = ws.config(&[&key], false, "");
    assert_has(&ws.validate(&config), 0, &["ok"]);
    let out = backworks(&[
        "plugin",
        "inspect",
        hello.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
    ]);
    assert!(text(&out.stdout).contains("signature:   not required"));
}

#[test]
fn fault_catalogue_each_with_its_own_error() {
    let ws = Workspace::new();
    let (id, key) = ws.keygen("release");
    let (stranger_id, _) = ws.keygen("stranger");
    let hello = ws.lib("hello");
    let kv = ws.lib("kv_store");
    let config = ws.config(&[&key], true, "");
    let sig = backworks_plugin_host::signature_path(&hello);
    let trusted = format!("keys trusted: {id}");
    let file = hello.display().to_string();

    // Missing signature when required.
    let missing = [
        file.as_str(),
        "signature missing: no",
        ".so.minisig",
        "key id found: none",
        trusted.as_str(),
    ];
    assert_has(&ws.validate(&config), 1, &missing);
    assert_has(&ws.verify(&hello, "release"), 1, &missing);

    // Untrusted key.
    ws.sign(&hello, "stranger");
    let untrusted = format!("{file}: signed by untrusted key {stranger_id} ({trusted})");
    assert_has(&ws.validate(&config), 1, &[&untrusted]);
    let out = backworks(&["plugin", "verify", &file, "-c", config.to_str().unwrap()]);
    assert_has(
        &(out.status.code().unwrap(), text(&out.stderr)),
        1,
        &[&untrusted],
    );

    // Bad signature: the trusted comment edited after signing.
    ws.sign(&hello, "release");
    let good = std::fs::read_to_string(&sig).unwrap();
    std::fs::write(&sig, good.replace("version=0.1.0", "version=9.9.9")).unwrap();
    let bad = format!("{file}: bad signature: key {id} did not sign these bytes");
    assert_has(&ws.validate(&config), 1, &[&bad, &trusted]);
    assert_has(&ws.verify(&hello, "release"), 1, &[&bad]);

    // Signature of another file: kv-store's signature beside hello.
    ws.sign(&kv, "release");
    std::fs::copy(backworks_plugin_host::signature_path(&kv), &sig).unwrap();
    let other = format!(
        "{file}: signature of another file: it was made for sha256 {}, this file's sha256 is {} \
         (key id found: {id}; {trusted})",
        sha256(&kv),
        sha256(&hello)
    );
    assert_has(&ws.validate(&config), 1, &[&other]);
    assert_has(&ws.verify(&hello, "release"), 1, &[&other]);

    // Renamed plugin: kv-store's validly signed library put in hello's place.
    std::fs::copy(&kv, &hello).unwrap();
    std::fs::copy(backworks_plugin_host::signature_path(&kv), &sig).unwrap();
    let renamed = format!(
        "{file}: signed as plugin `kv-store` 0.1.0, but the config loads it as plugin `hello` \
         (key id found: {id}; {trusted})"
    );
    assert_has(&ws.validate(&config), 1, &[&renamed]);
    let out = backworks(&["plugin", "verify", &file, "-c", config.to_str().unwrap()]);
    assert_has(
        &(out.status.code().unwrap(), text(&out.stderr)),
        1,
        &[&renamed],
    );
    // Alone, with only the key, the file is a validly signed kv-store.
    assert_has(
        &ws.verify(&hello, "release"),
        0,
        &["signature valid", "plugin `kv-store` 0.1.0"],
    );
}

#[test]
fn minisign_signs_and_backworks_verifies() {
    let ws = Workspace::new();
    let (public, secret) = (ws.path("m.pub"), ws.path("m.key"));
    let out = minisign(&[
        "-G",
        "-W",
        "-p",
        public.to_str().unwrap(),
        "-s",
        secret.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (id, key) = key_of(&public);
    let hello = ws.lib("hello");
    let config = ws.config(&[&key], true, "");
    let sign = |comment: Option<&str>| {
        let mut args = vec![
            "-S",
            "-s",
            secret.to_str().unwrap(),
            "-m",
            hello.to_str().unwrap(),
        ];
        if let Some(comment) = comment {
            args.extend(["-t", comment]);
        }
        let out = minisign(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    // A plain `minisign -S` signature is valid but binds nothing: refused, and said so.
    sign(None);
    assert_has(
        &ws.validate(&config),
        1,
        &[
            &format!("signature by key {id} is valid but does not bind the plugin"),
            "its trusted comment is `timestamp:",
            "`minisign -S -t 'backworks-plugin name=hello version=0.1.0 sha256=",
        ],
    );
    // With the binding as trusted comment it is accepted.
    let comment = format!(
        "backworks-plugin name=hello version=0.1.0 sha256={}",
        sha256(&hello)
    );
    sign(Some(&comment));
    assert_has(&ws.validate(&config), 0, &["ok"]);
    assert_has(
        &ws.verify(&hello, "m"),
        0,
        &["signature valid", "plugin `hello` 0.1.0"],
    );
}

#[test]
fn backworks_signs_and_minisign_verifies() {
    let ws = Workspace::new();
    ws.keygen("release");
    let hello = ws.lib("hello");
    ws.sign(&hello, "release");
    let out = minisign(&[
        "-V",
        "-p",
        ws.path("release.pub").to_str().unwrap(),
        "-m",
        hello.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!(
            "Trusted comment: backworks-plugin name=hello version=0.1.0 sha256={}",
            sha256(&hello)
        )),
        "{shown}"
    );
    // A changed byte fails minisign too.
    let mut bytes = std::fs::read(&hello).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&hello, bytes).unwrap();
    let out = minisign(&[
        "-V",
        "-p",
        ws.path("release.pub").to_str().unwrap(),
        "-m",
        hello.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn key_rotation_trusts_either_key() {
    let ws = Workspace::new();
    let (old_id, old) = ws.keygen("old");
    let (new_id, new) = ws.keygen("new");
    let hello = ws.lib("hello");
    let kv = ws.lib("kv_store");
    ws.sign(&hello, "old");
    ws.sign(&kv, "new");
    let both = format!("{{id: {old_id}, public_key: {old}}}");
    let extra = format!("  kv-store:\n    path: {}\n", kv.display());
    let config = ws.config(&[&both, &new], true, &extra);
    assert_has(&ws.validate(&config), 0, &["ok (2 plugins"]);
    // The old key retired: hello (signed by it) is refused, naming the key it found.
    let config = ws.config(&[&new], true, &extra);
    assert_has(
        &ws.validate(&config),
        1,
        &[&format!(
            "plugin `hello`: {}: signed by untrusted key {old_id} (keys trusted: {new_id})",
            hello.display()
        )],
    );
}

/// At `serve`, with `require_signatures: true`: the signed plugin serves, the unsigned one is
/// refused before any of its code runs (its endpoint answers 503, its state names the file and
/// the key situation), and a control (the `static` built-in) answers 200.
#[tokio::test]
async fn serve_refuses_an_unsigned_library_and_serves_the_rest() {
    let ws = Workspace::new();
    let (id, key) = ws.keygen("release");
    ws.sign(&ws.lib("hello"), "release");
    let yaml = format!(
        "trust:\n  require_signatures: true\n  keys: [\"{key}\"]\n\
         plugins:\n  \
         hello: {{ path: \"{}\" }}\n  \
         kv-store: {{ path: \"{}\" }}\n  \
         static: {{ type: builtin, config: {{ body: {{ ok: true }} }} }}\n\
         endpoints:\n  \
         hi: {{ path: \"/hello/{{name}}\", plugin: hello }}\n  \
         kv: {{ path: \"/kv/{{key}}\", plugin: kv-store }}\n  \
         control: {{ path: /control, plugin: static }}\n",
        ws.lib("hello").display(),
        ws.lib("kv_store").display()
    );
    let server = crate::support::Server::start(&yaml);
    let http = crate::support::client();
    let hello = http.get(server.url("/hello/ana")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    let kv = http.get(server.url("/kv/x")).send().await.unwrap();
    assert_eq!(kv.status(), 503);
    let control = http.get(server.url("/control")).send().await.unwrap();
    assert_eq!(control.status(), 200);
    let entry: Value =
        crate::support::get_json(server.admin_url("/_backworks/plugins/kv-store")).await;
    assert_eq!(entry["state"], "error", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("libkv_store")
            && reason.contains("signature missing")
            && reason.contains(&id),
        "names the file, what is missing and the keys trusted: {reason}"
    );
}

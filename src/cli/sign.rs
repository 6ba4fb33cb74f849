//! `plugin keygen`, `plugin sign` and `plugin verify`: minisign keys and signatures whose trusted
//! comment binds a plugin's name, version and SHA-256. Files are read once; nothing is loaded.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use backworks_plugin_host::{
    Binding, TrustPolicy, TrustedKey, TrustedKeys, Verdict, check_signature, metadata_from_bytes,
    signature_path,
};

/// The default public key file, as `minisign -G` writes it.
pub const DEFAULT_PUBLIC_KEY: &str = "minisign.pub";

/// The default secret key file: `~/.minisign/minisign.key`, as `minisign` uses.
pub fn default_secret_key() -> PathBuf {
    std::env::var_os("MINISIGN_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".minisign")))
        .unwrap_or_else(|| PathBuf::from(".minisign"))
        .join("minisign.key")
}

/// Creates `path` for writing, refusing to replace a file unless `force`; 0600 on Unix.
fn create(path: &Path, force: bool, secret: bool) -> anyhow::Result<fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} already exists (use -f to overwrite it)", path.display())
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })
}

/// `plugin keygen`: a new key pair, the secret key password-protected unless `unencrypted`.
pub fn keygen(public: &Path, secret: &Path, unencrypted: bool, force: bool) -> anyhow::Result<i32> {
    let pair = if unencrypted {
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        minisign::KeyPair::generate_encrypted_keypair(None)
    }
    .map_err(|e| anyhow::anyhow!("cannot generate a key pair: {e}"))?;
    let pk_box = pair.pk.to_box().map_err(anyhow::Error::msg)?;
    let sk_box = pair
        .sk
        .to_box(Some(if unencrypted {
            "minisign secret key (unencrypted)"
        } else {
            "minisign encrypted secret key"
        }))
        .map_err(anyhow::Error::msg)?;
    let mut sk_file = create(secret, force, true)?;
    let mut pk_file = create(public, force, false)?;
    sk_file.write_all(&sk_box.to_bytes())?;
    pk_file.write_all(&pk_box.to_bytes())?;
    let key = TrustedKey::parse(&pk_box.to_string()).map_err(anyhow::Error::msg)?;
    println!(
        "The secret key was saved as {} - keep it secret!",
        secret.display()
    );
    println!("The public key was saved as {}.", public.display());
    println!("Key id {}. Trust it in backworks.yaml:", key.id());
    println!();
    println!("trust:");
    println!("  require_signatures: true");
    println!("  keys:");
    println!(
        "    - {{id: {}, public_key: {}}}",
        key.id(),
        key.as_base64()
    );
    Ok(0)
}

/// `plugin sign LIB`: writes `LIB.minisig`, its trusted comment binding the plugin's name and
/// version (read from the file's metadata) and the file's SHA-256.
pub fn sign(library: &Path, secret: &Path, output: Option<&Path>) -> anyhow::Result<i32> {
    let bytes = fs::read(library).with_context(|| format!("cannot read {}", library.display()))?;
    let metadata = metadata_from_bytes(library, &bytes)?;
    for (what, value) in [("name", &metadata.name), ("version", &metadata.version)] {
        if value.is_empty() || value.contains(char::is_whitespace) {
            bail!(
                "{}: the plugin's {what} `{value}` cannot be bound into a signature (empty or with spaces)",
                library.display()
            );
        }
    }
    let binding = Binding {
        name: metadata.name,
        version: metadata.version,
        configured_as: None,
    };
    let comment = binding.comment(&bytes);
    let key = secret_key(secret)?;
    let untrusted = format!("signature of {} by backworks plugin sign", binding.name);
    let signature = minisign::sign(None, &key, &bytes[..], Some(&comment), Some(&untrusted))
        .map_err(|e| anyhow::anyhow!("cannot sign {}: {e}", library.display()))?;
    let out = output.map_or_else(|| signature_path(library), Path::to_path_buf);
    fs::write(&out, signature.to_string())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}: signed as `{comment}`", out.display());
    Ok(0)
}

/// Reads the minisign secret key at `path`; an encrypted one asks for its password on the
/// terminal.
pub fn secret_key(path: &Path) -> anyhow::Result<minisign::SecretKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key {}", path.display()))?;
    let key_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a minisign secret key: {e}", path.display()))?;
    // An unencrypted key (`keygen -W`) needs no password; an encrypted one asks for it.
    minisign::SecretKey::from_unencrypted_box(key_box.clone())
        .or_else(|_| minisign::SecretKey::from_box(key_box, None))
        .map_err(|e| anyhow::anyhow!("{}: cannot use the secret key: {e}", path.display()))
}

/// Where `plugin verify` takes its trusted keys from.
#[derive(Debug)]
pub enum KeySource<'a> {
    /// One public key file (`-p`).
    File(&'a Path),
    /// One public key, base64 (`-P`).
    Base64(&'a str),
    /// `trust:` of a config file; the entry whose file this is gives the name expected.
    Config(&'a Path),
}

/// `plugin verify LIB`: exit 0 when its signature is valid for the keys given, 1 otherwise, with
/// the reason.
pub fn verify(library: &Path, keys: KeySource<'_>) -> anyhow::Result<i32> {
    let (policy, configured_as) = match keys {
        KeySource::File(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read the public key {}", path.display()))?;
            (single(&text, path.display())?, None)
        }
        KeySource::Base64(text) => (single(text, "-P")?, None),
        KeySource::Config(path) => {
            let config = crate::config::load(path)?;
            let entry = config.plugins.iter().find(|p| {
                config
                    .resolve_plugin_path(p)
                    .is_ok_and(|found| same_file(&found, library))
            });
            let policy = TrustPolicy {
                require_signatures: true,
                ..config.trust.signatures
            };
            (policy, entry.map(|p| p.name.clone()))
        }
    };
    let bytes = fs::read(library).with_context(|| format!("cannot read {}", library.display()))?;
    match check_signature(library, &bytes, &policy, configured_as.as_deref()) {
        Verdict::Valid(v) => {
            println!(
                "{}: signature valid (key id {}): plugin `{}` {}, sha256 {}",
                library.display(),
                v.key_id,
                v.name,
                v.version,
                v.sha256
            );
            Ok(0)
        }
        Verdict::NotRequired => unreachable!("verify always requires a signature"),
        Verdict::Invalid(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

fn single(text: &str, from: impl std::fmt::Display) -> anyhow::Result<TrustPolicy> {
    let key = TrustedKey::parse(text).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
    Ok(TrustPolicy {
        keys: TrustedKeys::new([key]),
        require_signatures: true,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

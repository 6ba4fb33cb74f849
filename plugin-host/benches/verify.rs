//! Verifying the signatures of 100 plugin files: [`check_signature`] on each (read the
//! `.minisig`, parse the metadata of the bytes, SHA-256, the minisign Ed25519 check), the bytes
//! already in memory, as the loader has them. The files are copies of the `hello` example plugin
//! (`cargo build -p hello` first), each with its own signature.

use std::path::PathBuf;

use backworks_plugin_host::{TrustPolicy, TrustedKey, TrustedKeys, Verdict, check_signature};
use criterion::{Criterion, criterion_group, criterion_main};

fn hello() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("libhello.so"))
        .find(|p| p.exists())
        .expect("build the hello example plugin first: cargo build -p hello")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let key = TrustedKey::parse(&pair.pk.to_base64()).unwrap();
    let policy = TrustPolicy {
        keys: TrustedKeys::new([key]),
        require_signatures: true,
    };
    let original = std::fs::read(hello()).unwrap();
    let meta = backworks_plugin_host::metadata_from_bytes(&hello(), &original).unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> = (0..100)
        .map(|i| {
            let path = dir.path().join(format!("lib{i}.so"));
            std::fs::write(&path, &original).unwrap();
            let comment = format!(
                "backworks-plugin name={} version={} sha256={}",
                meta.name,
                meta.version,
                backworks_plugin_host::sha256_hex(&original)
            );
            let sig = minisign::sign(None, &pair.sk, &original[..], Some(&comment), None).unwrap();
            std::fs::write(
                backworks_plugin_host::signature_path(&path),
                sig.to_string(),
            )
            .unwrap();
            (path, original.clone())
        })
        .collect();
    println!("file size: {} bytes", original.len());
    c.bench_function("verify_100_files", |b| {
        b.iter(|| {
            for (path, bytes) in &files {
                let verdict = check_signature(path, bytes, &policy, None);
                assert!(matches!(verdict, Verdict::Valid(_)), "{verdict:?}");
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

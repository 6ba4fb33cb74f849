//! Checks of `trust:`: the public keys plugin signatures are checked against (each key parsed, an
//! `id` given must be the key's own), and `require_signatures`.

use backworks_plugin_host::{KeyError, KeyId, TrustPolicy, TrustedKey, TrustedKeys};
use serde_saphyr::Spanned;

use super::{INVALID, boolean};
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::{RawTrust, RawTrustKey};

pub(super) fn policy(
    ip: &Interpolator<'_>,
    raw: Option<&RawTrust>,
) -> Result<TrustPolicy, ConfigError> {
    let Some(raw) = raw else {
        return Ok(TrustPolicy::default());
    };
    let mut keys: Vec<TrustedKey> = Vec::new();
    for entry in raw.keys.iter().flatten() {
        let key = key(ip, entry)?;
        if let Some(first) = keys.iter().find(|k| k.id() == key.id()) {
            let message = format!(
                "`trust.keys` lists key id {} twice (`{}`)",
                key.id(),
                first.as_base64()
            );
            return Err(ip.error(INVALID, entry.referenced, message));
        }
        keys.push(key);
    }
    let mut require_signatures = false;
    if let Some(flag) = &raw.require_signatures {
        require_signatures = boolean(ip, flag, "`trust.require_signatures`")?;
    }
    if let Some(flag) = raw
        .require_signatures
        .as_ref()
        .filter(|_| require_signatures)
        && keys.is_empty()
    {
        return Err(ip.error(
            INVALID,
            flag.referenced,
            "`trust.require_signatures` is true but `trust.keys` is empty: no plugin library \
             could load (add the public key of whoever signs them, see `backworks plugin keygen`)",
        ));
    }
    Ok(TrustPolicy {
        keys: TrustedKeys::new(keys),
        require_signatures,
    })
}

fn key(ip: &Interpolator<'_>, entry: &Spanned<RawTrustKey>) -> Result<TrustedKey, ConfigError> {
    let (text, id) = match &entry.value {
        RawTrustKey::Key(text) => (
            ip.text(&Spanned::new(text.clone(), entry.referenced, entry.defined))?,
            None,
        ),
        RawTrustKey::Table(table) => (
            ip.text(&table.public_key)?,
            table.id.as_ref().map(|id| ip.text(id)).transpose()?,
        ),
    };
    let key = TrustedKey::parse(&text.value).map_err(|e| {
        ip.error(
            INVALID,
            text.at,
            format!("`trust.keys` entry {}: {e}", text.quoted()),
        )
    })?;
    if let Some(id) = id {
        let written: KeyId = id
            .value
            .parse()
            .map_err(|e: KeyError| ip.error(INVALID, id.at, format!("`trust.keys` id: {e}")))?;
        if written != key.id() {
            let message = format!(
                "`trust.keys` id {} is not the id of its public key, which is {}",
                id.quoted(),
                key.id()
            );
            return Err(ip.error(INVALID, id.at, message));
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, parse};

    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    #[test]
    fn keys_are_read_in_both_forms() {
        let c = parse(&format!(
            "trust:\n  require_signatures: true\n  keys:\n    - {KEY}\n"
        ))
        .unwrap();
        assert!(c.trust.signatures.require_signatures);
        assert_eq!(c.trust.signatures.keys.ids(), "E7620F1842B4E81F");
        let c = parse(&format!(
            "trust:\n  keys:\n    - {{id: e7620f1842b4e81f, public_key: {KEY}}}\n"
        ))
        .unwrap();
        assert!(!c.trust.signatures.require_signatures);
        assert_eq!(c.trust.signatures.keys.ids(), "E7620F1842B4E81F");
        assert!(
            parse("plugins: {}\n")
                .unwrap()
                .trust
                .signatures
                .keys
                .is_empty()
        );
    }

    #[test]
    fn bad_keys_are_positioned() {
        assert_eq!(
            error("trust:\n  keys:\n    - RWQnotakey\n"),
            "3:7: `trust.keys` entry `RWQnotakey`: not a minisign public key (Invalid encoding in minisign data): \
             expected the `RWQ…` line of a .pub file"
        );
        assert_eq!(
            error(&format!(
                "trust:\n  keys:\n    - {{id: ABCD, public_key: {KEY}}}\n"
            )),
            "3:12: `trust.keys` id `ABCD` is not the id of its public key, which is E7620F1842B4E81F"
        );
        assert_eq!(
            error(&format!("trust:\n  keys:\n    - {KEY}\n    - {KEY}\n")),
            format!("4:7: `trust.keys` lists key id E7620F1842B4E81F twice (`{KEY}`)")
        );
        assert_eq!(
            error("trust:\n  require_signatures: true\n"),
            "2:23: `trust.require_signatures` is true but `trust.keys` is empty: no plugin \
             library could load (add the public key of whoever signs them, see `backworks plugin \
             keygen`)"
        );
    }
}

//! Secrets the host must never print or serve: values that came from the environment.
//!
//! The process keeps one set of secrets. The `backworks` binary registers every value that
//! `${VAR}` interpolation put into a plugin's `config:`; its log writer and every public error body
//! pass their text through [`redact`]. An embedder registers its own with [`add_secrets`].
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are not registered: redacting every `1` or `on`
//! would garble the output while protecting nothing a guess would not find.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not treated as secrets.
pub const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds values to the process's secrets. Longer values are replaced first, so a secret that
/// contains another is hidden whole.
pub fn add_secrets<I, S>(values: I)
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for value in values {
        let value = value.into();
        if value.len() < MIN_SECRET_LEN {
            continue;
        }
        // As `{:?}` (a log field, a JSON string) writes it, too: a secret with a quote, a
        // backslash or a line break is escaped there and would not match as it is.
        let escaped = value.escape_debug().to_string();
        for form in [value, escaped] {
            if !secrets.contains(&form) {
                secrets.push(form);
            }
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by `[redacted]`; borrowed when it holds none.
///
/// ```
/// use backworks_plugin_host::{add_secrets, redact};
/// add_secrets(["hunter22"]);
/// assert_eq!(redact("password hunter22 refused"), "password [redacted] refused");
/// assert_eq!(redact("nothing here"), "nothing here");
/// ```
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_first_and_short_values_ignored() {
        add_secrets(["tok-abc", "tok-abc-123", "ab"]);
        assert_eq!(
            redact("a tok-abc-123 b tok-abc"),
            "a [redacted] b [redacted]"
        );
        assert_eq!(redact("ab stays"), "ab stays");
    }

    #[test]
    fn escaped_forms_are_redacted_too() {
        add_secrets(["-----BEGIN KEY-----\nabc\"def"]);
        let logged = format!("{:?}", "-----BEGIN KEY-----\nabc\"def");
        assert_eq!(redact(&logged), "\"[redacted]\"");
    }
}

//! [`Text`]: the string type of requests and responses.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use smol_str::SmolStr;

/// An immutable string, as the fields of [`Request`](crate::Request) and the entries of
/// [`Headers`](crate::Headers) hold them. Use it as a `&str` (it derefs to one); make one from a
/// `&str` or a `String` with `.into()`.
///
/// Short text (methods, most paths, parameter values, header names and many header values: up to
/// 23 bytes) is kept inline, without an allocation, so copying a request into a plugin costs
/// almost nothing. Clones of longer text share one allocation.
///
/// ```
/// use backworks_plugin_sdk::{Request, Text};
///
/// let mut request = Request::new("GET", "/hello/ana");
/// request.params.push(("name".into(), "ana".into()));
/// assert_eq!(request.method, "GET");
/// assert_eq!(request.path.trim_start_matches('/'), "hello/ana");
/// let owned: String = request.path.to_string();
/// assert_eq!(Text::from(owned), "/hello/ana");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(SmolStr);

impl Text {
    /// Text with these contents.
    pub fn new(text: impl AsRef<str>) -> Text {
        Text::from(text.as_ref())
    }

    /// Text of a string literal; no copy, no allocation.
    pub const fn from_static(text: &'static str) -> Text {
        Text(SmolStr::new_static(text))
    }

    /// The contents.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text in lower case; no allocation when it already is, or when it is short.
    pub fn to_ascii_lowercase(&self) -> Text {
        if has_ascii_uppercase(self.as_bytes()) {
            Text::new(self.as_str().to_ascii_lowercase())
        } else {
            self.clone()
        }
    }

    /// This text in lower case, reusing it when it already is.
    pub(crate) fn into_ascii_lowercase(self) -> Text {
        if has_ascii_uppercase(self.as_bytes()) {
            Text::new(self.as_str().to_ascii_lowercase())
        } else {
            self
        }
    }
}

/// Whether `bytes` hold an ASCII upper-case letter, eight bytes at a time: header names are
/// checked on every request, and almost none has one.
fn has_ascii_uppercase(bytes: &[u8]) -> bool {
    const LOW: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Per byte, without carries between bytes (each is at most 0x7f before the additions): the
    // high bit of `x + (0x80 - b'A')` is set when the byte is `A` or above, that of
    // `x + (0x80 - b'Z' - 1)` when it is above `Z`; bytes of 0x80 and up are not letters.
    let upper_in = |word: u64| {
        let x = word & LOW;
        let at_least_a = x + u64::from_ne_bytes([0x80 - b'A'; 8]);
        let above_z = x + u64::from_ne_bytes([0x80 - b'Z' - 1; 8]);
        at_least_a & !above_z & !word & HIGH != 0
    };
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().expect("eight bytes"));
    if bytes.len() < 8 {
        return bytes.iter().any(u8::is_ascii_uppercase);
    }
    let mut chunks = bytes.chunks_exact(8);
    if chunks.by_ref().any(|chunk| upper_in(word(chunk))) {
        return true;
    }
    // The last eight bytes, overlapping the last whole chunk: no copy of the rest is needed.
    !chunks.remainder().is_empty() && upper_in(word(&bytes[bytes.len() - 8..]))
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

/// The longest text kept inline.
pub(crate) const INLINE: usize = 23;

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        if text.len() <= INLINE {
            // A byte loop, cheaper than a call to `memcpy` for text this short.
            Text(SmolStr::new_inline(text))
        } else {
            Text(SmolStr::new(text))
        }
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Text {
        Text(SmolStr::new(text))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(SmolStr::from(text))
    }
}

impl From<Box<str>> for Text {
    fn from(text: Box<str>) -> Text {
        Text(SmolStr::from(text))
    }
}

impl From<std::borrow::Cow<'_, str>> for Text {
    fn from(text: std::borrow::Cow<'_, str>) -> Text {
        Text(SmolStr::from(text))
    }
}

impl From<&Text> for Text {
    fn from(text: &Text) -> Text {
        text.clone()
    }
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        text.0.into()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text::from(v))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_is_found_at_every_position_and_nothing_else_counts() {
        // Every byte value at every position of every length up to 17 (two words and a rest).
        for len in 1..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(
                        has_ascii_uppercase(&bytes),
                        byte.is_ascii_uppercase(),
                        "{byte:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!has_ascii_uppercase(b""));
        assert!(!has_ascii_uppercase("żółw-x-api-key".as_bytes()));
        assert!(has_ascii_uppercase("żółw-X".as_bytes()));
    }

    #[test]
    fn text_compares_and_converts_like_a_string() {
        let short = Text::from("GET");
        assert_eq!(short, "GET");
        assert_eq!("GET", short);
        assert_eq!(short, String::from("GET"));
        assert_eq!(short.len(), 3);
        let long = Text::from("text/plain; charset=utf-8; and a bit more".to_owned());
        assert_eq!(long.clone(), long);
        assert_eq!(String::from(long.clone()), long.as_str());
        assert_eq!(
            format!("{short} {long:?}"),
            r#"GET "text/plain; charset=utf-8; and a bit more""#
        );
        assert_eq!(Text::from("X-Id").to_ascii_lowercase(), "x-id");
        assert_eq!(Text::from_static("x"), Text::new("x"));
    }

    #[test]
    fn text_is_a_json_string() {
        let text: Text = serde_json::from_str(r#""żółw""#).unwrap();
        assert_eq!(text, "żółw");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""żółw""#);
        assert!(serde_json::from_str::<Text>("1").is_err());
    }
}

//! Copying a call's input, the request and response views the host lends, into the owned
//! [`Request`] and [`Response`] a plugin method takes.
//!
//! The views are valid only for the duration of the call, so everything is copied before the
//! plugin's future is made. Text that is short and ASCII (most request text) goes straight into an
//! inline [`Text`], without a UTF-8 check or an allocation; header names arrive in lower case from
//! the host, which is checked while each name is copied rather than in a second pass. Invalid UTF-8
//! is replaced, never refused: the plugin gets what the client sent, as well as it can be read.
//!
//! The other direction, a plugin's answer into a [`BwOutput`](crate::abi::BwOutput), is
//! [`output`](super::output)'s job.

use crate::abi::{BwKvList, BwRequest, BwResponse, BwStr};
use crate::{Headers, Request, Response, Text};

/// Copies the request into an owned [`Request`].
///
/// # Safety
/// Every view of the request must be valid, as [`BwStr::as_bytes`], for the duration of the call.
pub(super) unsafe fn request(view: &BwRequest) -> Request {
    // SAFETY: the caller's contract.
    unsafe {
        Request {
            method: text(view.method),
            path: text(view.path),
            params: pairs(view.params),
            query: pairs(view.query),
            headers: headers(view.headers),
            body: view.body.as_bytes().to_vec(),
        }
    }
}

/// Copies the response into an owned [`Response`].
///
/// # Safety
/// Every view of the response must be valid, as [`BwStr::as_bytes`], for the duration of the
/// call.
pub(super) unsafe fn response(view: &BwResponse) -> Response {
    // SAFETY: the caller's contract.
    unsafe {
        Response {
            status: view.status,
            headers: headers(view.headers),
            body: view.body.as_bytes().to_vec(),
        }
    }
}

/// Copies the bytes into a [`Text`] (inline when short), replacing invalid UTF-8.
///
/// # Safety
/// As [`BwStr::as_bytes`], for the duration of the call.
unsafe fn text(view: BwStr) -> Text {
    // SAFETY: the caller's contract.
    text_lossy(unsafe { view.as_bytes() }, false)
}

/// Copies the pairs into owned text, replacing invalid UTF-8.
///
/// # Safety
/// As [`BwKvList::as_slice`], and every pair's strings as [`BwStr::as_bytes`], for the duration
/// of the call.
unsafe fn pairs(list: BwKvList) -> Vec<(Text, Text)> {
    // SAFETY: the caller's contract.
    unsafe { copy_pairs(list, false) }
}

/// Copies header pairs into [`Headers`], names in lower case (the host's already are: checked while
/// each name is copied, not in a second pass), replacing invalid UTF-8.
///
/// # Safety
/// As [`pairs`].
unsafe fn headers(list: BwKvList) -> Headers {
    // SAFETY: the caller's contract.
    Headers::from_lowercase_pairs(unsafe { copy_pairs(list, true) })
}

/// [`pairs`], with the names in lower case if `lower`.
///
/// # Safety
/// As [`pairs`].
#[inline(always)]
unsafe fn copy_pairs(list: BwKvList, lower: bool) -> Vec<(Text, Text)> {
    // SAFETY: the caller's contract.
    let pairs = unsafe { list.as_slice() };
    if pairs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(pairs.len());
    for kv in pairs {
        // SAFETY: the caller's contract covers the pairs' strings.
        let (key, value) = unsafe { (kv.key.as_bytes(), kv.value.as_bytes()) };
        out.push((text_lossy(key, lower), text_lossy(value, false)));
    }
    out
}

/// `bytes` as text, replacing invalid UTF-8, in lower case if `lower`.
#[inline(always)]
fn text_lossy(bytes: &[u8], lower: bool) -> Text {
    match short_ascii(bytes, lower) {
        Some(text) => text.into(),
        None => long_text_lossy(bytes, lower),
    }
}

/// `bytes` as a `str` if they are short enough for an inline [`Text`] and ASCII (and, with `lower`,
/// have no upper-case letter): the common case of request text.
#[inline(always)]
fn short_ascii(bytes: &[u8], lower: bool) -> Option<&str> {
    if bytes.len() > crate::text::INLINE
        || !bytes.is_ascii()
        || (lower && bytes.iter().any(u8::is_ascii_uppercase))
    {
        return None;
    }
    // SAFETY: ASCII is UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// [`text_lossy`] of text that is long, not ASCII, or (with `lower`) has upper-case letters.
#[inline(never)]
fn long_text_lossy(bytes: &[u8], lower: bool) -> Text {
    let text: Text = if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8. (Checked a word at a time.)
        unsafe { std::str::from_utf8_unchecked(bytes) }.into()
    } else {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.into(),
            Err(_) => String::from_utf8_lossy(bytes).into(),
        }
    };
    if lower {
        text.into_ascii_lowercase()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::BwKv;

    #[test]
    fn requests_are_copied_with_lower_case_header_names_and_lossy_text() {
        let long_name = "X-A-Header-Name-Longer-Than-Inline";
        let long_value = "a value longer than twenty-three bytes";
        let headers = [
            BwKv {
                key: BwStr::new(b"host"),
                value: BwStr::new(b"localhost"),
            },
            BwKv {
                key: BwStr::new(b"Accept"),
                value: BwStr::new("żółw".as_bytes()),
            },
            BwKv {
                key: BwStr::new(long_name.as_bytes()),
                value: BwStr::new(long_value.as_bytes()),
            },
            BwKv {
                key: BwStr::new(b"x-bad"),
                value: BwStr::new(b"a\xffb"),
            },
        ];
        let params = [BwKv {
            key: BwStr::new(b"Id"),
            value: BwStr::new(b"42"),
        }];
        let request = BwRequest {
            method: BwStr::new(b"GET"),
            path: BwStr::new(b"/noop/42"),
            params: BwKvList::new(&params),
            headers: BwKvList::new(&headers),
            ..BwRequest::EMPTY
        };
        // SAFETY: every view borrows a local that outlives the call.
        let copy = unsafe { super::request(&request) };
        assert_eq!(copy.method, "GET");
        assert_eq!(copy.path, "/noop/42");
        assert_eq!(copy.params, [("Id".into(), "42".into())]);
        assert!(copy.query.is_empty());
        assert_eq!(
            copy.headers.iter().collect::<Vec<_>>(),
            [
                ("host", "localhost"),
                ("accept", "żółw"),
                (long_name.to_ascii_lowercase().as_str(), long_value),
                ("x-bad", "a\u{fffd}b"),
            ]
        );
    }

    /// Text of every length around the word boundaries of the inline path, and past it.
    fn boundary_texts(fill: &str) -> Vec<String> {
        [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 22, 23, 24, 40]
            .into_iter()
            .map(|len| fill.repeat(len).chars().take(len).collect())
            .collect()
    }

    #[test]
    fn text_of_every_length_is_copied_exactly() {
        for fill in ["aZ-09/", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "@[`{~\x7f"] {
            for text in boundary_texts(fill) {
                let copied = text_lossy(text.as_bytes(), false);
                assert_eq!(copied, text.as_str(), "length {}", text.len());
                let lowered = text_lossy(text.as_bytes(), true);
                assert_eq!(lowered, text.to_ascii_lowercase(), "length {}", text.len());
            }
        }
    }

    #[test]
    fn only_ascii_letters_are_lower_cased() {
        let every_ascii: Vec<u8> = (0u8..0x80).collect();
        for chunk in every_ascii.chunks(23).chain(every_ascii.chunks(7)) {
            let text = std::str::from_utf8(chunk).unwrap();
            assert_eq!(text_lossy(chunk, true), text.to_ascii_lowercase());
            assert_eq!(text_lossy(chunk, false), text);
        }
    }

    #[test]
    fn short_text_that_is_not_ascii_takes_the_checked_path() {
        for text in ["ż", "Żółw", "naïve-Header", "abcdefghijklmnopqrstuvż"] {
            assert_eq!(text_lossy(text.as_bytes(), false), text);
            assert_eq!(text_lossy(text.as_bytes(), true), text.to_ascii_lowercase());
        }
        // Invalid UTF-8 at the start, the middle and the end of the fast path's words.
        for (bytes, expected) in [
            (&b"\xff"[..], "\u{fffd}"),
            (b"ab\xc3", "ab\u{fffd}"),
            (
                b"Abcdefg\x80hijklmnopqrstu",
                "abcdefg\u{fffd}hijklmnopqrstu",
            ),
            (
                b"ABCDEFGHIJKLMNOPQRSTUV\xfe",
                "abcdefghijklmnopqrstuv\u{fffd}",
            ),
        ] {
            assert_eq!(text_lossy(bytes, true), expected);
        }
        assert_eq!(text_lossy(b"A\xffB", false), "A\u{fffd}B");
    }
}

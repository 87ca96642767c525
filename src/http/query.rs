//! Query strings as `application/x-www-form-urlencoded` (the WHATWG URL Standard, §5.1 "parsing"):
//! `name=value` pairs split at `&`, `+` for a space, `%XX` for a byte.
//!
//! Owns: decoding a query (or a form body) into names and values, the way browsers and
//! `URLSearchParams` encode them.
//!
//! Invariants: decoding never fails. A `%` not followed by two hex digits stays as it is, and
//! bytes that do not form UTF-8 become U+FFFD, as the standard says; a pair without `=` has an
//! empty value. A component with nothing to decode is lent from the input, not copied.

use std::borrow::Cow;

/// The pairs of `query` in order, decoded; empty pieces (`a=1&&b=2`) are skipped.
pub fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            (decode(name), decode(value))
        })
}

/// The decoded value of the first pair named `name` (compared after decoding), if any.
pub fn value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    pairs(query).find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Decodes one component: `+` to a space, `%XX` to its byte, then UTF-8 (lossy).
pub fn decode(component: &str) -> Cow<'_, str> {
    if !component.contains(['+', '%']) {
        return Cow::Borrowed(component);
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = match bytes[at] {
            b'+' => b' ',
            b'%' => match (
                bytes.get(at + 1).and_then(hex),
                bytes.get(at + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    at += 2;
                    high << 4 | low
                }
                _ => b'%',
            },
            other => other,
        };
        out.push(byte);
        at += 1;
    }
    match String::from_utf8(out) {
        Ok(text) => Cow::Owned(text),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

/// The value of one hex digit.
fn hex(digit: &u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owned(query: &str) -> Vec<(String, String)> {
        pairs(query)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn pairs_in_order() {
        let got = owned("channel=news&limit=10&&flag&empty=&=anon&a=b=c");
        let want = [
            ("channel", "news"),
            ("limit", "10"),
            ("flag", ""),
            ("empty", ""),
            ("", "anon"),
            ("a", "b=c"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(owned("").is_empty());
        assert!(owned("&&").is_empty());
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("a+b%20c"), "a b c");
        assert_eq!(decode("%2B%2b%26%3D"), "++&=");
        assert_eq!(decode("caf%C3%A9"), "café");
        // Not two hex digits: the `%` stays.
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz%4g"), "%zz%4g");
        assert_eq!(decode("%%41"), "%A");
        // Not UTF-8: U+FFFD.
        assert_eq!(decode("%ff%C3"), "\u{fffd}\u{fffd}");
        // Nothing to decode: no copy.
        assert!(matches!(decode("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn first_value_by_decoded_name() {
        let query = "user%20id=7&user+id=8&tags=a%2Cb";
        assert_eq!(value(query, "user id").as_deref(), Some("7"));
        assert_eq!(value(query, "tags").as_deref(), Some("a,b"));
        assert_eq!(value(query, "missing"), None);
    }

    /// The encoder browsers use for forms: unreserved bytes as they are, space as `+`, every
    /// other byte as `%XX`.
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn prop_decode_inverts_encode(pairs_in in proptest::collection::vec((".*", ".*"), 0..5)) {
            let query: Vec<String> = pairs_in
                .iter()
                .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                .collect();
            let got = owned(&query.join("&"));
            // Every piece has its `=`, so none is empty and skipped.
            prop_assert_eq!(got, pairs_in);
        }

        #[test]
        fn prop_decode_never_panics(text in ".*") {
            let decoded = decode(&text);
            prop_assert!(decoded.len() <= text.len() * 3);
        }
    }
}

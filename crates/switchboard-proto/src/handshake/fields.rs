//! Reading header fields the handshake defines as lists or as single values.

use http::{HeaderMap, HeaderValue, header::AsHeaderName};

/// The elements of a comma-separated list, across every field line given, in order.
///
/// A list may arrive split over several lines: a recipient may combine them "by
/// appending each subsequent field line value to the initial field line value in order,
/// separated by a comma" (RFC 9110 §5.3), so splitting each line on commas reads both
/// forms alike. Elements are trimmed of whitespace, and empty ones skipped: "a recipient
/// MUST parse and ignore a reasonable number of empty list elements" (RFC 9110 §5.6.1).
pub(super) fn elements<'a>(
    lines: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> {
    lines
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// The [`elements`] of a list of tokens, such as `Upgrade`, `Connection` or
/// `Sec-WebSocket-Protocol`. Elements that are not ASCII are skipped: tokens are ASCII,
/// so such an element can never match anything.
pub(super) fn list<'a>(
    lines: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    elements(lines).filter_map(|element| {
        // ASCII is UTF-8, so this drops exactly the elements that are not ASCII.
        std::str::from_utf8(element).ok().filter(|s| s.is_ascii())
    })
}

/// Whether the list holds `token`, compared as ASCII case-insensitive, the way RFC 6455
/// compares `websocket` and `Upgrade` (§4.1, §4.2.1).
pub(super) fn contains<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>, token: &str) -> bool {
    list(lines).any(|element| element.eq_ignore_ascii_case(token))
}

/// A field that may appear at most once appeared more than once.
#[derive(Debug)]
pub(super) struct Repeated;

/// The single value of a field that may appear at most once: `Ok(None)` when it is
/// absent.
pub(super) fn at_most_once<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> Result<Option<&HeaderValue>, Repeated> {
    let mut values = headers.get_all(name).into_iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (_, Some(_)) => Err(Repeated),
    }
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2): what a subprotocol name must be,
/// "non-empty strings with characters in the range U+0021 to U+007E not including
/// separator characters as defined in \[RFC2616\]" (RFC 6455 §4.1, item 10).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONNECTION;

    fn lines(values: &[&'static str]) -> Vec<HeaderValue> {
        values.iter().map(|v| HeaderValue::from_static(v)).collect()
    }

    #[test]
    fn splits_trims_and_skips_empty_elements_across_lines() {
        let values = lines(&["keep-alive , ,Upgrade", "", "\tfoo\t,bar  "]);
        assert_eq!(
            list(&values).collect::<Vec<_>>(),
            ["keep-alive", "Upgrade", "foo", "bar"]
        );
        assert!(contains(&values, "upgrade"));
        assert!(contains(&values, "UPGRADE"));
        assert!(!contains(&values, "upgrad"));
        assert!(!contains(&lines(&["upgrade-not"]), "upgrade"));
    }

    #[test]
    fn skips_elements_that_are_not_ascii() {
        let values = vec![HeaderValue::from_bytes(b"\xffupgrade, upgrade\xe9, websocket").unwrap()];
        assert_eq!(elements(&values).count(), 3);
        assert_eq!(list(&values).collect::<Vec<_>>(), ["websocket"]);
    }

    #[test]
    fn tells_a_repeated_field_from_an_absent_one() {
        let mut headers = HeaderMap::new();
        assert!(matches!(at_most_once(&headers, CONNECTION), Ok(None)));
        headers.append(CONNECTION, HeaderValue::from_static("a"));
        assert!(matches!(at_most_once(&headers, CONNECTION), Ok(Some(v)) if v == "a"));
        headers.append(CONNECTION, HeaderValue::from_static("a"));
        assert!(matches!(at_most_once(&headers, CONNECTION), Err(Repeated)));
    }

    #[test]
    fn tokens_exclude_separators() {
        for ok in [
            "chat",
            "v1.chat",
            "graphql-transport-ws",
            "a!#$%&'*+-.^_`|~9",
        ] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a,b", "\"a\"", "a;b", "é", "a\tb", "(a)"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}

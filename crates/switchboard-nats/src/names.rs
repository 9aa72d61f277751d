//! Subjects and JetStream stream names: any room name becomes one valid subject token
//! and part of one valid stream name, and two rooms never share either.

use sha1::{Digest, Sha1};
use std::fmt::Write;

/// The longest stream name made whole: JetStream keeps a stream in a directory named
/// after it, and file names end at 255 bytes. Longer names are cut and end with a hash.
const MAX_STREAM_NAME: usize = 200;

/// The longest subject token made whole: NATS refuses a protocol line past 4 KB (and
/// closes the connection), and a subject sits in one. Longer tokens are cut and end
/// with a hash.
const MAX_TOKEN: usize = 200;

/// `text` as one subject token, also valid in a stream name: ASCII letters, digits
/// and `-` stay, every other byte is `_` and two uppercase hex digits (`.` → `_2E`,
/// space → `_20`, `_` → `_5F`), and the empty name is `_` alone; cut past
/// [`MAX_TOKEN`] bytes (see [`cut`]). Injective: no escape is a prefix of another,
/// `_` alone is no escape, and only a cut token holds `_H`.
pub(crate) fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "_{byte:02X}");
        }
    }
    cut(out, MAX_TOKEN)
}

/// The JetStream stream of `room` under `prefix`: `<prefix token>_S<room token>`
/// (`_S` is no escape, so the split is unambiguous), cut past [`MAX_STREAM_NAME`]
/// bytes (see [`cut`]).
pub(crate) fn stream_name(prefix: &str, room: &str) -> String {
    cut(
        format!("{}_S{}", token(prefix), token(room)),
        MAX_STREAM_NAME,
    )
}

/// `name` whole if it has at most `max` bytes (ASCII), else its first bytes, `_H`
/// (no escape: `H` is no hex digit) and the SHA-1 of the whole name, `max` bytes in all.
fn cut(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let digest = Sha1::digest(name.as_bytes());
    let mut short = name[..max - 42].to_owned();
    short.push_str("_H");
    for byte in digest {
        let _ = write!(short, "{byte:02x}");
    }
    short
}

/// Whether `prefix` can start subjects: tokens of visible characters without the
/// wildcards, none empty.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn any_room_name_is_one_token_and_names_do_not_collide() {
        let rooms = [
            "",
            "_",
            "a.b",
            "a b",
            "*",
            ">",
            "a_2E",
            "a.",
            "κόσμε",
            "a\tb",
            "x/y",
            "-",
            "_20",
        ];
        let tokens: HashSet<String> = rooms.iter().map(|room| token(room)).collect();
        assert_eq!(tokens.len(), rooms.len(), "{tokens:?}");
        for t in &tokens {
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
        }
        assert_eq!(token("a.b c"), "a_2Eb_20c");
    }

    #[test]
    fn stream_names_are_bounded_and_distinct() {
        let long_a = "a".repeat(300);
        let long_b = format!("{}b", "a".repeat(299));
        let (a, b) = (stream_name("sb", &long_a), stream_name("sb", &long_b));
        assert_ne!(a, b);
        assert!(a.len() <= MAX_STREAM_NAME && b.len() <= MAX_STREAM_NAME);
        assert_eq!(stream_name("sb.x", "r.1"), "sb_2Ex_Sr_2E1");
        assert_ne!(stream_name("a_S", "b"), stream_name("a", "S_b"));
    }

    #[test]
    fn long_room_names_make_bounded_distinct_tokens() {
        let long_a = ".".repeat(10_000);
        let long_b = format!("{}!", ".".repeat(9_999));
        let (a, b) = (token(&long_a), token(&long_b));
        assert_ne!(a, b);
        assert!(a.len() <= MAX_TOKEN && b.len() <= MAX_TOKEN, "{}", a.len());
        // A name just past the bound is cut; one whose token fits is whole.
        assert_ne!(
            token(&"a".repeat(MAX_TOKEN + 1)),
            token(&"a".repeat(MAX_TOKEN))
        );
        assert_eq!(token(&"a".repeat(MAX_TOKEN)), "a".repeat(MAX_TOKEN));
    }

    #[test]
    fn prefixes_must_make_subjects() {
        assert!(valid_prefix("switchboard"));
        assert!(valid_prefix("app.chat"));
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", ">", "a\n"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}

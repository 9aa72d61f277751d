//! Incremental UTF-8 validation and the validated byte string text messages carry.
//!
//! "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
//! stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
//! Connection_" (RFC 6455 §8.1). Validating bytes as they arrive, even inside a partly
//! received frame, lets an invalid sequence fail the connection at once instead of after
//! the rest of a large message.

use bytes::Bytes;
use std::{fmt, ops::Deref};

/// The bytes are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

/// Validates UTF-8 fed in arbitrary pieces.
///
/// The only state carried between pieces is an incomplete code point (at most 3 bytes);
/// everything else goes through `simdutf8` in bulk.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Validates the next piece. Fails as soon as the bytes seen so far cannot be the
    /// start of valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            input = self.complete_pending(input)?;
            if self.pending_len > 0 {
                return Ok(());
            }
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the input ends inside a code point that may
            // still be completed by the next piece.
            Err(e) if e.error_len().is_none() => {
                let tail = input.get(e.valid_up_to()..).unwrap_or_default();
                self.stash(tail);
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Ends the text: fails if it stopped inside a code point.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.pending_len == 0;
        *self = Self::new();
        if complete { Ok(()) } else { Err(Utf8Error) }
    }

    /// Adds bytes to the pending code point; returns the input left after it.
    fn complete_pending<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let have = usize::from(self.pending_len);
        let width = sequence_width(self.pending[0]);
        let take = (width - have).min(input.len());
        let (head, rest) = input.split_at(take);
        for (slot, &byte) in self.pending.iter_mut().skip(have).zip(head) {
            *slot = byte;
        }
        let filled = have + take;
        // `filled` is at most the code point's width, at most 4: the error cannot happen.
        let seen = self.pending.get(..filled).ok_or(Utf8Error)?;
        match simdutf8::compat::from_utf8(seen) {
            Ok(_) => self.pending_len = 0,
            Err(e) if e.error_len().is_none() => self.pending_len = filled as u8,
            Err(_) => return Err(Utf8Error),
        }
        Ok(rest)
    }

    fn stash(&mut self, tail: &[u8]) {
        // `simdutf8` reports an incomplete tail only when it is 1 to 3 bytes long.
        let tail = tail.get(..3).unwrap_or(tail);
        for (slot, &byte) in self.pending.iter_mut().zip(tail) {
            *slot = byte;
        }
        self.pending_len = tail.len() as u8;
    }
}

/// The length of the code point a lead byte starts; only called on a valid lead byte
/// (the validator stashes nothing else), with 4 as the safe answer otherwise.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// A `Bytes` that holds valid UTF-8: a text message's payload, shared without copying.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// A string that lives for the whole program, without copying it.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Validates `bytes` as UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, Utf8Error> {
        simdutf8::basic::from_utf8(&bytes).map_err(|_| Utf8Error)?;
        Ok(Self(bytes))
    }

    /// Wraps bytes the caller has already validated as a whole.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        #[allow(unsafe_code)]
        // SAFETY: every constructor validates the bytes. from_validated is called only
        // after Utf8Validator::finish succeeded over exactly these bytes, which between
        // validation and that call stayed in buffers that only the decoder can write
        // (its own read buffer, then its reassembly buffer: no caller can reach them),
        // or with a close reason cut at a character boundary of a validated one. `Bytes`
        // are immutable afterwards.
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives back the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(s: &String) -> Self {
        s.as_str().into()
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(s: Utf8Bytes) -> Self {
        s.0
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = Utf8Error;
    fn try_from(bytes: Bytes) -> Result<Self, Utf8Error> {
        Self::try_from_bytes(bytes)
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(bytes: &[u8], step: usize) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for piece in bytes.chunks(step.max(1)) {
            v.feed(piece)?;
        }
        v.finish()
    }

    #[test]
    fn agrees_with_std_whatever_the_split() {
        let samples: Vec<Vec<u8>> = vec![
            "".into(),
            "hello".into(),
            "κόσμε".into(),
            "\u{10FFFF}\u{0800}\u{FFFD}a\u{7F}\u{80}".into(),
            vec![
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
            ],
            vec![0xF4, 0x90, 0x80, 0x80],
            vec![0xC0, 0xAF],
            vec![0xE0, 0x80, 0xAF],
            vec![0xF0, 0x9F, 0x98],
            vec![0x80],
            vec![0xFF],
            vec![b'a', 0xE2, 0x82],
        ];
        for sample in &samples {
            let expected = std::str::from_utf8(sample).is_ok();
            for step in 1..=sample.len().max(1) {
                assert_eq!(
                    feed_in_pieces(sample, step).is_ok(),
                    expected,
                    "{sample:x?} step {step}"
                );
            }
        }
    }

    #[test]
    fn fails_as_soon_as_a_prefix_cannot_be_utf8() {
        // Autobahn 6.4.x: the invalid byte arrives in the middle of a long message.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        v.feed(&[0xCE, 0xBA, 0xE1]).unwrap();
        assert_eq!(
            v.feed(&[0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xF4, 0x90]),
            Err(Utf8Error)
        );
        let mut v = Utf8Validator::new();
        v.feed(&[0xF4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
    }

    #[test]
    fn utf8_bytes_checks_on_the_way_in() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(b"\xff")).is_err());
        let s = Utf8Bytes::try_from(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(s, "héllo");
        assert_eq!(s.len(), 6);
    }
}

//! `Sec-WebSocket-Key` and `Sec-WebSocket-Accept` (RFC 6455 §4.1, §4.2.2).

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderValue;
use sha1::{Digest, Sha1};

/// The GUID every endpoint appends to the key: "a globally unique identifier (GUID,
/// see \[RFC4122\]) in string form", fixed by §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value that answers the key `key`.
///
/// "The value of this header field is constructed by concatenating /key/ ... with the
/// string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", taking the SHA-1 hash of this
/// concatenated value to obtain a 20-byte value and base64-encoding ... this 20-byte
/// hash" (§4.2.2). `key` is the header value as sent, not its base64 decoding.
///
/// ```
/// use switchboard_proto::handshake::accept_key;
///
/// // The example of RFC 6455 §1.3.
/// let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> HeaderValue {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    base64_value(&digest)
}

/// The `Sec-WebSocket-Key` value for 16 random bytes from the caller.
///
/// "The value of this header field MUST be a nonce consisting of a randomly selected
/// 16-byte value that has been base64-encoded" and "MUST be selected randomly for each
/// connection" (§4.1, item 7). This crate has no randomness of its own, so the bytes are
/// an argument.
///
/// ```
/// use switchboard_proto::handshake::generate_key;
///
/// assert_eq!(generate_key([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
/// ```
pub fn generate_key(random: [u8; 16]) -> HeaderValue {
    base64_value(&random)
}

/// Base64 of `bytes` as a header value.
#[allow(clippy::expect_used)]
fn base64_value(bytes: &[u8]) -> HeaderValue {
    // The base64 alphabet (letters, digits, `+`, `/`, `=`) is all visible ASCII, so the
    // conversion cannot fail whatever bytes went in.
    HeaderValue::try_from(STANDARD.encode(bytes)).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generated_keys_decode_to_the_random_bytes() {
        let random = *b"the sample nonce";
        let key = generate_key(random);
        // The RFC's example key is the base64 of exactly these 16 bytes.
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(STANDARD.decode(key.as_bytes()).unwrap(), random);
    }
}

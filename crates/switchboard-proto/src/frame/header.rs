//! The frame header: parse and encode (RFC 6455 §5.2).

use super::OpCode;

/// The longest header: 2 fixed bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Why a header cannot be parsed. Each of these fails the connection with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
    /// Connection_" (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// "the most significant bit MUST be 0" for the 64-bit length (§5.2).
    #[error("64-bit payload length has its most significant bit set")]
    LengthTooLong,
    /// "the minimal number of bytes MUST be used to encode the length" (§5.2).
    #[error("payload length {0} is not minimally encoded")]
    NonMinimalLength(u64),
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last fragment of a message.
    pub fin: bool,
    /// Reserved bit 1: "Per-Message Compressed" under permessage-deflate (RFC 7692 §6).
    pub rsv1: bool,
    /// Reserved bit 2: no extension here defines it.
    pub rsv2: bool,
    /// Reserved bit 3: no extension here defines it.
    pub rsv3: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key; every client-to-server frame has one (§5.3).
    pub mask: Option<[u8; 4]>,
    /// Length of the payload that follows the header.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final, unmasked header with no reserved bits: what a server sends.
    pub const fn new(opcode: OpCode, payload_len: u64) -> Self {
        Self {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a header; nothing is consumed
    /// either way, so the caller retries with more bytes. On success it returns the header
    /// and how many bytes of `buf` it occupied.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, HeaderError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(HeaderError::ReservedOpCode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, rest) = match b1 & 0x7F {
            126 => {
                let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes(*len));
                if len < 126 {
                    return Err(HeaderError::NonMinimalLength(len));
                }
                (len, rest)
            }
            127 => {
                let Some((len, rest)) = rest.split_first_chunk::<8>() else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(*len);
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthTooLong);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(HeaderError::NonMinimalLength(len));
                }
                (len, rest)
            }
            short => (u64::from(short), rest),
        };
        let mask = if masked {
            let Some((key, _)) = rest.split_first_chunk::<4>() else {
                return Ok(None);
            };
            Some(*key)
        } else {
            None
        };
        let header = Self {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header.encoded_len())))
    }

    /// How many bytes [`FrameHeader::encode`] writes.
    pub const fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        let mask_bytes = if self.mask.is_some() { 4 } else { 0 };
        2 + len_bytes + mask_bytes
    }

    /// Encodes the header with the minimal length encoding.
    pub fn encode(&self) -> EncodedHeader {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let [b0, b1, ext @ ..] = &mut bytes;
        *b0 = u8::from(self.fin) << 7
            | u8::from(self.rsv1) << 6
            | u8::from(self.rsv2) << 5
            | u8::from(self.rsv3) << 4
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let ext_len = match self.payload_len {
            // Each arm's cast is bounded by the arm's range.
            len @ 0..=125 => {
                *b1 = mask_bit | len as u8;
                0
            }
            len @ 126..=0xFFFF => {
                *b1 = mask_bit | 126;
                ext[..2].copy_from_slice(&(len as u16).to_be_bytes());
                2
            }
            len => {
                *b1 = mask_bit | 127;
                ext[..8].copy_from_slice(&len.to_be_bytes());
                8
            }
        };
        if let Some(key) = self.mask {
            // The key follows the length; `ext` has room for the longest length and it.
            for (slot, byte) in ext.iter_mut().skip(ext_len).zip(key) {
                *slot = byte;
            }
        }
        EncodedHeader {
            bytes,
            len: self.encoded_len() as u8,
        }
    }
}

/// An encoded header kept inline, so a queued frame needs no allocation for it.
#[derive(Clone, Copy)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl EncodedHeader {
    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl std::fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EncodedHeader")
            .field(&self.as_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            mask,
            ..FrameHeader::new(OpCode::Binary, len)
        }
    }

    #[test]
    fn encodes_lengths_minimally_and_parses_them_back() {
        for (len, size) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (0xFFFF, 4),
            (0x1_0000, 10),
            (i64::MAX as u64, 10),
        ] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(len, mask);
                let bytes = h.encode();
                let expected = size + if mask.is_some() { 4 } else { 0 };
                assert_eq!(bytes.as_bytes().len(), expected);
                assert_eq!(
                    FrameHeader::parse(bytes.as_bytes()),
                    Ok(Some((h, expected)))
                );
            }
        }
    }

    #[test]
    fn every_strict_prefix_asks_for_more_bytes() {
        let h = FrameHeader {
            fin: false,
            rsv1: true,
            ..header(70_000, Some([9, 8, 7, 6]))
        };
        let bytes = h.encode();
        for cut in 0..bytes.as_bytes().len() {
            assert_eq!(FrameHeader::parse(&bytes.as_bytes()[..cut]), Ok(None));
        }
    }

    #[test]
    fn rejects_what_the_rfc_forbids() {
        assert_eq!(
            FrameHeader::parse(&[0x83, 0]),
            Err(HeaderError::ReservedOpCode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x8F, 0]),
            Err(HeaderError::ReservedOpCode(0xF))
        );
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&long), Err(HeaderError::LengthTooLong));
        assert_eq!(
            FrameHeader::parse(&[0x82, 126, 0, 5]),
            Err(HeaderError::NonMinimalLength(5))
        );
        let mut wide = vec![0x82, 127];
        wide.extend_from_slice(&300u64.to_be_bytes());
        assert_eq!(
            FrameHeader::parse(&wide),
            Err(HeaderError::NonMinimalLength(300))
        );
    }

    #[test]
    fn reads_flag_bits() {
        let (h, n) = FrameHeader::parse(&[0x71, 0x80, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!(n, 6);
        assert!(!h.fin && h.rsv1 && h.rsv2 && h.rsv3);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
    }
}

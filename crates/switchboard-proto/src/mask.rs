//! Payload masking (RFC 6455 §5.3).
//!
//! "Octet i of the transformed data is the XOR of octet i of the original data with
//! octet at index i modulo 4 of the masking key." Masking and unmasking are the same
//! operation, done in place.

/// How many bytes one vectorisable step covers: LLVM turns the fixed-size XOR below into
/// a few SIMD instructions on every target with 128-bit vectors.
const LANES: usize = 64;

/// XORs `buf` with `key`, as if `buf` started `offset` bytes into the frame's payload.
///
/// `offset` lets a caller unmask a payload in pieces as its bytes arrive.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    if buf.len() < LANES {
        return apply_mask_short(buf, key);
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU was just seen to have AVX2, the one feature the function
        // is compiled for.
        return unsafe { apply_mask_avx2(buf, key) };
    }
    apply_mask_lanes(buf, key);
}

/// [`apply_mask_lanes`] compiled for AVX2: twice the bytes per instruction of the
/// baseline x86-64 build (SSE2), which is what a 16 KiB payload spends most of its
/// unmasking in. The feature is detected at run time, as distributions build for the
/// baseline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4]) {
    apply_mask_lanes(buf, key);
}

/// The XOR, [`LANES`] bytes per step, for payloads of at least one step.
#[inline(always)]
fn apply_mask_lanes(buf: &mut [u8], key: [u8; 4]) {
    let pattern = [key; LANES / 4];
    let pattern = pattern.as_flattened();
    let mut chunks = buf.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (byte, k) in chunk.iter_mut().zip(pattern) {
            *byte ^= k;
        }
    }
    // The remainder starts at a multiple of LANES, so it is in phase with `pattern`.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(pattern) {
        *byte ^= k;
    }
}

/// [`apply_mask`] eight bytes at a time, for payloads shorter than one SIMD step (most
/// messages): building the 64-byte pattern would cost more than the XOR itself.
fn apply_mask_short(buf: &mut [u8], key: [u8; 4]) {
    let [a, b, c, d] = key;
    let word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so it is in phase with `key`.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// The key as seen from `offset` bytes into the payload.
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    // Big-endian, the first key byte is the most significant: rotating the word left by
    // one byte moves it to the end.
    let bits = 8 * (offset % 4) as u32;
    u32::from_be_bytes(key).rotate_left(bits).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_the_definition_at_every_alignment_length_and_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let backing: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..16 {
            for len in 0..=64 {
                for offset in 0..4 {
                    let mut fast = backing.clone();
                    let mut slow = backing.clone();
                    apply_mask(&mut fast[align..align + len], key, offset);
                    naive(&mut slow[align..align + len], key, offset);
                    assert_eq!(fast, slow, "align {align} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn the_baseline_steps_match_the_definition() {
        // `apply_mask` takes the AVX2 build where the CPU has it; this checks the build
        // every other CPU runs.
        let key = [0x9a, 0x01, 0xfe, 0x42];
        for len in LANES..LANES * 4 + 3 {
            let mut fast: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let mut slow = fast.clone();
            apply_mask_lanes(&mut fast, key);
            naive(&mut slow, key, 0);
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn large_buffers_round_trip_and_split_anywhere() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let original: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        let mut expected = original.clone();
        naive(&mut expected, key, 0);
        assert_eq!(whole, expected);

        // Unmasking in uneven pieces gives the same bytes as unmasking at once.
        let mut pieces = whole.clone();
        let mut at = 0;
        for step in [1, 3, 64, 65, 1000, 7, 12345].iter().cycle() {
            let end = (at + step).min(pieces.len());
            apply_mask(&mut pieces[at..end], key, at);
            at = end;
            if at == pieces.len() {
                break;
            }
        }
        assert_eq!(pieces, original);
    }
}

//! Compressing and inflating message payloads (RFC 7692 §6, §7.2).
//!
//! Both sides keep their zlib state only while the agreement needs it: with context
//! takeover it lives as long as the connection; without it, nothing carries from one
//! message to the next, so a connection holds no state at all and borrows one of its
//! thread's for the length of a call (see [`SCRATCH_DEFLATERS`]).

use super::negotiate::DeflateParams;
use crate::{
    config::Role,
    frame::{Frame, OpCode},
};
use bytes::Bytes;
use std::cell::RefCell;
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status};

/// What every compressed message ends with before it is sent, and what the receiver
/// appends again: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end"
/// (RFC 7692 §7.2.1), and "Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of the
/// payload of the message" (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib cannot compress with a 256-byte window ("until 256-byte window bug fixed", it
/// turns 8 into 9 for zlib streams and refuses it for raw ones). A 9-bit zlib window
/// never emits a distance beyond 250 bytes, so where 8 was agreed, compressing with 9
/// stays within what the peer inflates, as other implementations do.
const MIN_ZLIB_WINDOW_BITS: u8 = 9;

/// zlib's default compression level.
const DEFAULT_LEVEL: u32 = 6;

/// The settings a zlib compressor is made with: window bits, level, memory level.
type DeflateKey = (u8, i32, i32);

/// How many compressors a thread keeps for messages without context takeover: one per
/// setting in use, and an application uses one or two.
const SCRATCH_DEFLATERS: usize = 4;

thread_local! {
    /// Compressors for messages without context takeover, reset after each use. Making
    /// one allocates and clears some 300 KiB (window, hash chains, buffers), more than
    /// compressing a small message costs; keeping one per connection would cost that
    /// memory on every idle connection. A thread's message is compressed in one call,
    /// so one state per thread serves all its connections.
    static DEFLATERS: RefCell<Vec<(DeflateKey, Deflate)>> = const { RefCell::new(Vec::new()) };
    /// The same for inflating whole messages without context takeover. Its window is the
    /// largest, which inflates any smaller one.
    static INFLATER: RefCell<Option<Inflate>> = const { RefCell::new(None) };
}

/// Compression failed inside zlib (it cannot, short of running out of memory); the
/// message can be sent uncompressed instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deflate failed")]
pub struct DeflateError;

/// Compresses messages for permessage-deflate: each into the payload of one frame with
/// RSV1 set.
///
/// One `Deflater` per connection when contexts are taken over; with no context takeover
/// one can serve many connections, so that a broadcast is compressed once.
pub struct Deflater {
    /// Created on the first message; dropped after each one without context takeover.
    stream: Option<Deflate>,
    window_bits: u8,
    no_context_takeover: bool,
    level: i32,
    mem_level: i32,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("level", &self.level)
            .field("allocated", &self.stream.is_some())
            .finish()
    }
}

impl Deflater {
    /// A compressor for what `role` sends under `params`, at `level` (0 stores, 1 is the
    /// fastest, 9 the smallest; above 9 counts as 9).
    pub fn new(params: &DeflateParams, role: Role, level: u32) -> Self {
        let (window_bits, no_context_takeover) = params.sent_by(role);
        Self::with_window(window_bits, no_context_takeover, level)
    }

    /// A compressor with a given window (8 to 15) and context rule, for frames that are
    /// not tied to one connection: with `no_context_takeover`, its output suits every
    /// peer that agreed to a window at least as large.
    pub fn with_window(window_bits: u8, no_context_takeover: bool, level: u32) -> Self {
        let window_bits = window_bits.clamp(MIN_ZLIB_WINDOW_BITS, 15);
        Self {
            stream: None,
            window_bits,
            no_context_takeover,
            level: level.min(9) as i32,
            // zlib's memory level sizes the pending buffers (4 << (mem_level + 6) bytes);
            // matching it to the window keeps small windows small, as Python's
            // `websockets` does (window 12, memory level 5), with zlib's default of 8 at
            // the largest window.
            mem_level: i32::from(window_bits.saturating_sub(7).clamp(1, 8)),
        }
    }

    /// The compression level for messages of applications that name none.
    pub const DEFAULT_LEVEL: u32 = DEFAULT_LEVEL;

    /// Compresses one whole message payload, as the payload of a frame with RSV1 set.
    ///
    /// "1. Compress all the octets of the payload of the message using DEFLATE. 2. If the
    /// resulting data does not end with an empty DEFLATE block with no compression ...,
    /// append an empty DEFLATE block with no compression to the tail end. 3. Remove 4
    /// octets (that are 0x00 0x00 0xff 0xff) from the tail end" (RFC 7692 §7.2.1).
    pub fn compress(&mut self, payload: &[u8]) -> Result<Bytes, DeflateError> {
        if self.no_context_takeover {
            // Nothing of this message may carry over (§7.1.1.1): a reset stream of the
            // thread's serves, and goes back for the next message of any connection.
            let key = (self.window_bits, self.level, self.mem_level);
            let cached = DEFLATERS.with(|cache| {
                let mut cache = cache.borrow_mut();
                let found = cache.iter().position(|(k, _)| *k == key)?;
                Some(cache.swap_remove(found).1)
            });
            let mut stream = cached.unwrap_or_else(|| self.new_stream());
            let result = compress_with(&mut stream, payload);
            if result.is_ok() {
                stream.reset();
                DEFLATERS.with(|cache| {
                    let mut cache = cache.borrow_mut();
                    if cache.len() >= SCRATCH_DEFLATERS {
                        cache.remove(0);
                    }
                    cache.push((key, stream));
                });
            }
            return result;
        }
        let (level, window_bits, mem_level) = (self.level, self.window_bits, self.mem_level);
        let stream = self
            .stream
            .get_or_insert_with(|| new_deflate(level, window_bits, mem_level));
        let result = compress_with(stream, payload);
        // After a failure the state is unknown; a fresh stream refers to nothing the
        // peer has not seen.
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn new_stream(&self) -> Deflate {
        new_deflate(self.level, self.window_bits, self.mem_level)
    }

    /// A final frame of `opcode` carrying `payload` compressed, with RSV1 set: "the
    /// "Per-Message Compressed" bit ... is set on the first frame of the message"
    /// (RFC 7692 §6).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Frame, DeflateError> {
        let compressed = self.compress(payload)?;
        Ok(Frame::new(opcode, compressed).with_rsv1(true))
    }
}

/// A raw deflate compressor.
fn new_deflate(level: i32, window_bits: u8, mem_level: i32) -> Deflate {
    Deflate::new_with_config(DeflateConfig {
        level,
        // Negative: a raw deflate stream, without zlib's header and checksum.
        window_bits: -i32::from(window_bits),
        mem_level,
        ..DeflateConfig::default()
    })
}

/// Compresses one message with `stream` and applies RFC 7692 §7.2.1's steps 2 and 3.
fn compress_with(stream: &mut Deflate, mut input: &[u8]) -> Result<Bytes, DeflateError> {
    // Stored blocks bound the output: 5 bytes per 16 KiB block beyond the input,
    // plus the flush's empty block.
    let mut out = vec![0; input.len() + input.len() / 1024 + 64];
    let mut len = 0;
    loop {
        let Some(space) = out.get_mut(len..) else {
            return Err(DeflateError);
        };
        let room = space.len();
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        // A sync flush ends the output on a byte boundary with the empty stored
        // block that step 3 removes.
        stream
            .compress(input, space, DeflateFlush::SyncFlush)
            .map_err(|_| DeflateError)?;
        let consumed = usize::try_from(stream.total_in() - before_in).map_err(|_| DeflateError)?;
        let produced =
            usize::try_from(stream.total_out() - before_out).map_err(|_| DeflateError)?;
        input = input.get(consumed..).ok_or(DeflateError)?;
        len += produced;
        // "If deflate returns with avail_out == 0, this function must be called
        // again with the same value of the flush parameter and more output space."
        if input.is_empty() && produced < room {
            break;
        }
        out.resize(out.len() * 2, 0);
    }
    out.truncate(len);
    if out.ends_with(&TAIL) {
        out.truncate(len - TAIL.len());
    } else {
        // Step 2 then step 3: an empty stored block is one zero byte before the tail.
        out.push(0);
    }
    Ok(Bytes::from(out))
}

/// Why a compressed message cannot be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// The inflated message would exceed the limit.
    TooLarge,
    /// The payload is not a raw deflate stream.
    Corrupt,
}

/// Inflates the compressed messages of one connection.
pub(crate) struct Inflater {
    /// The context kept between messages; `None` until the first compressed message,
    /// and always without context takeover, where each message borrows the thread's.
    stream: Option<Inflate>,
    window_bits: u8,
    no_context_takeover: bool,
    /// The peer ended its stream with a final block (§7.2.3.4 shows one): the rest of
    /// the message is ignored and the next starts afresh.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.stream.is_some())
            .finish()
    }
}

impl Inflater {
    /// An inflater for what `role` receives under `params`.
    pub(crate) fn new(params: &DeflateParams, role: Role) -> Self {
        let (window_bits, no_context_takeover) = params.received_by(role);
        Self {
            stream: None,
            // A peer that agreed to 8 compresses with zlib's 9 (see MIN_ZLIB_WINDOW_BITS).
            window_bits: window_bits.clamp(MIN_ZLIB_WINDOW_BITS, 15),
            no_context_takeover,
            ended: false,
        }
    }

    /// Inflates a message that came in one frame, appending to `out`, which must not
    /// grow beyond `limit` bytes. Without context takeover it borrows the thread's
    /// inflater, so the connection keeps none.
    pub(crate) fn inflate_message(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        if !self.no_context_takeover || self.stream.is_some() {
            self.inflate(input, out, limit)?;
            return self.finish(out, limit);
        }
        let cached = INFLATER.with(|cache| cache.borrow_mut().take());
        let mut stream = cached.unwrap_or_else(|| Inflate::new(false, 15));
        let mut ended = false;
        let result = inflate_with(&mut stream, &mut ended, input, out, limit)
            .and_then(|()| inflate_with(&mut stream, &mut ended, &TAIL, out, limit));
        stream.reset(false);
        INFLATER.with(|cache| *cache.borrow_mut() = Some(stream));
        result
    }

    /// Inflates the payload of one frame of a compressed message, appending to `out`,
    /// which must not grow beyond `limit` bytes: the limit is enforced as the bytes come
    /// out, so a small frame that would inflate to gigabytes fails after `limit + 1`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        let window_bits = self.window_bits;
        let stream = self
            .stream
            .get_or_insert_with(|| Inflate::new(false, window_bits));
        let result = inflate_with(stream, &mut self.ended, input, out, limit);
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Ends the message: inflates the tail the sender removed, and drops the context if
    /// the agreement says so.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let result = self.inflate(&TAIL, out, limit);
        if self.no_context_takeover || self.ended {
            self.reset();
        }
        result
    }

    fn reset(&mut self) {
        self.stream = None;
        self.ended = false;
    }
}

/// Inflates `input` with `stream`, appending to `out` up to `limit` bytes.
fn inflate_with(
    stream: &mut Inflate,
    ended: &mut bool,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), InflateError> {
    while !*ended {
        let len = out.len();
        let room = limit.saturating_add(1).saturating_sub(len);
        if room == 0 {
            return Err(InflateError::TooLarge);
        }
        // Deflate rarely inflates by more than 4:1 on real data; a larger output takes
        // a few more rounds, each doubling, never past the limit.
        let chunk = input
            .len()
            .saturating_mul(4)
            .max(len)
            .clamp(1024, 4 << 20)
            .min(room);
        out.resize(len + chunk, 0);
        let space = out.get_mut(len..).unwrap_or_default();
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        let status = stream.decompress(input, space, InflateFlush::SyncFlush);
        let consumed = (stream.total_in() - before_in) as usize;
        let produced = (stream.total_out() - before_out) as usize;
        out.truncate(len + produced);
        input = input.get(consumed..).unwrap_or_default();
        match status {
            Ok(Status::StreamEnd) => *ended = true,
            Ok(Status::Ok | Status::BufError) => {}
            Err(_) => return Err(InflateError::Corrupt),
        }
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        // Everything consumed and the output not filled: nothing is pending. No progress
        // at all: the rest needs the next frame's bytes.
        if (input.is_empty() && produced < chunk) || (consumed == 0 && produced == 0) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(no_context_takeover: bool, bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: no_context_takeover,
            client_no_context_takeover: no_context_takeover,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        }
    }

    fn inflate_message(
        inflater: &mut Inflater,
        payload: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        inflater.inflate(payload, &mut out, limit)?;
        inflater.finish(&mut out, limit)?;
        Ok(out)
    }

    #[test]
    fn compresses_the_rfc_example() {
        // RFC 7692 §7.2.3.1: "Hello" compressed is 0xf2 0x48 0xcd 0xc9 0xc9 0x07 0x00.
        let mut deflater = Deflater::new(&params(true, 15), Role::Server, 6);
        assert_eq!(
            &deflater.compress(b"Hello").unwrap()[..],
            [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
        // §7.2.3.2: with context takeover the second "Hello" refers back to the first.
        let mut deflater = Deflater::new(&params(false, 15), Role::Server, 6);
        let first = deflater.compress(b"Hello").unwrap();
        let second = deflater.compress(b"Hello").unwrap();
        assert_eq!(&first[..], [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        assert_eq!(&second[..], [0xf2, 0x00, 0x11, 0x00, 0x00]);
        let mut inflater = Inflater::new(&params(false, 15), Role::Client);
        assert_eq!(
            inflate_message(&mut inflater, &first, 100).unwrap(),
            b"Hello"
        );
        assert_eq!(
            inflate_message(&mut inflater, &second, 100).unwrap(),
            b"Hello"
        );
    }

    #[test]
    fn inflates_what_the_rfc_shows() {
        let mut inflater = Inflater::new(&params(true, 15), Role::Server);
        // §7.2.3.3: a DEFLATE block with no compression.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(
            inflate_message(&mut inflater, &stored, 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.4: a block with BFINAL set; the appended tail is ignored.
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            inflate_message(&mut inflater, &last, 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.6: an empty message as a single 0x00 octet.
        assert_eq!(inflate_message(&mut inflater, &[0x00], 100).unwrap(), b"");
        // And the same, split byte by byte across frames.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut out = Vec::new();
        for byte in hello {
            inflater.inflate(&[byte], &mut out, 100).unwrap();
        }
        inflater.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn round_trips_every_window_and_size() {
        let text: Vec<u8> = (0..300_000u32)
            .map(|i| {
                b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize]
                    ^ (i / 7919) as u8
            })
            .collect();
        for bits in 8..=15 {
            for takeover in [false, true] {
                let p = params(!takeover, bits);
                let mut deflater = Deflater::new(&p, Role::Client, 6);
                let mut inflater = Inflater::new(&p, Role::Server);
                for len in [0, 1, 100, 5_000, 70_000, 300_000] {
                    let message = &text[..len];
                    let compressed = deflater.compress(message).unwrap();
                    let inflated = inflate_message(&mut inflater, &compressed, 1 << 20).unwrap();
                    assert!(inflated == message, "bits {bits} len {len}");
                }
            }
        }
        // An empty message compresses to the single 0x00 octet of §7.2.3.6.
        let mut deflater = Deflater::new(&params(true, 15), Role::Server, 6);
        assert_eq!(&deflater.compress(b"").unwrap()[..], [0x00]);
    }

    #[test]
    fn no_context_takeover_drops_the_state_between_messages() {
        let mut deflater = Deflater::new(&params(true, 15), Role::Server, 6);
        deflater.compress(b"Hello").unwrap();
        assert!(deflater.stream.is_none());
        let mut kept = Deflater::new(&params(false, 15), Role::Server, 6);
        kept.compress(b"Hello").unwrap();
        assert!(kept.stream.is_some());
        let mut inflater = Inflater::new(&params(true, 15), Role::Server);
        inflate_message(
            &mut inflater,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            100,
        )
        .unwrap();
        assert!(inflater.stream.is_none());
    }

    #[test]
    fn the_limit_holds_while_inflating() {
        // A megabyte of zeros compresses to about a kilobyte.
        let mut deflater = Deflater::new(&params(true, 15), Role::Client, 9);
        let bomb = deflater.compress(&vec![0u8; 1 << 20]).unwrap();
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let mut inflater = Inflater::new(&params(true, 15), Role::Server);
        let mut out = Vec::new();
        assert_eq!(
            inflater.inflate(&bomb, &mut out, 4096),
            Err(InflateError::TooLarge)
        );
        assert!(out.capacity() <= 2 * 4097, "{}", out.capacity());
        // Exactly at the limit is fine.
        let mut inflater = Inflater::new(&params(true, 15), Role::Server);
        assert_eq!(
            inflate_message(&mut inflater, &bomb, 1 << 20).map(|v| v.len()),
            Ok(1 << 20)
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut inflater = Inflater::new(&params(false, 15), Role::Server);
        let mut out = Vec::new();
        // BTYPE 11 is reserved.
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff], &mut out, 100),
            Err(InflateError::Corrupt)
        );
        // The inflater starts afresh after an error.
        assert_eq!(
            inflate_message(
                &mut inflater,
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                100
            )
            .unwrap(),
            b"Hello"
        );
    }
}

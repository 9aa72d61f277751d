//! Hostile input for the decoder: a million and more random and mutated frames, in both
//! roles, checked against a reference model of RFC 6455 §5 written independently of the
//! decoder.
//!
//! Every case runs from its own seed, printed when the case fails; replay one with
//! `HOSTILE_CASE=<seed> cargo test -p switchboard-proto --test hostile replay`.
//! `HOSTILE_SEED=<n>` moves every stress test to other seeds, to explore beyond the
//! committed ones.
//!
//! What is checked:
//! - frames built from a structure the model reads (valid ones, and ones mutated at the
//!   structure: reserved bits and opcodes, FIN, mask mismatches, non-minimal and huge
//!   lengths, invalid UTF-8 in text and close reasons, fragmented control frames,
//!   continuation misuse) give exactly the model's messages and error;
//! - truncated streams give a prefix of those messages and then ask for more bytes;
//! - bytes mutated below the structure (bit flips, corrupted lengths, random bytes) never
//!   panic, keep the invariants, and give the same outcome whole or split anywhere.
//!
//! The invariants: text is UTF-8, control payloads fit 125 bytes, a close code received
//! is one that may be sent, messages respect the limits, an error closes with 1002, 1007
//! or 1009, and a decoder that returned an error is never called again.

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{
    cell::RefCell,
    collections::BTreeMap,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Instant,
};
use switchboard_proto::{
    CloseCode, CloseFrame, Decoder, Limits, Message, OpCode, ProtocolError, Role,
    close::CloseError, frame::HeaderError, utf8::Utf8Error,
};

/// Small limits, so that the size checks are reached by frames cheap to build.
fn small() -> Limits {
    Limits::default().max_frame_size(256).max_message_size(1024)
}

// ---------------------------------------------------------------------------------------
// Frames as the generator builds them, and their bytes.
// ---------------------------------------------------------------------------------------

/// How a frame's length is written; the non-minimal ones break "the minimal number of
/// bytes MUST be used to encode the length" (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    Minimal,
    Two,
    Eight,
}

/// One frame, described at the level the protocol rules talk about.
#[derive(Clone, Debug)]
struct Spec {
    fin: bool,
    /// The three reserved bits, RSV1 highest.
    rsv: u8,
    /// The raw four opcode bits, reserved values included.
    opcode: u8,
    mask: Option<[u8; 4]>,
    width: Width,
    /// A length the header claims instead of the payload's; only the header is sent, so
    /// such a frame ends the stream.
    claimed: Option<u64>,
    /// The unmasked payload.
    payload: Vec<u8>,
}

impl Spec {
    fn new(opcode: OpCode, payload: Vec<u8>, role: Role, rng: &mut StdRng) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode: opcode.as_u8(),
            mask: (role == Role::Server).then(|| rng.random()),
            width: Width::Minimal,
            claimed: None,
            payload,
        }
    }

    fn len(&self) -> u64 {
        self.claimed.unwrap_or(self.payload.len() as u64)
    }

    /// Bytes of extended length: 0, 2 or 8.
    fn ext_len(&self) -> usize {
        let len = self.len();
        match self.width {
            Width::Minimal if len <= 125 => 0,
            Width::Minimal | Width::Two if len <= 0xFFFF => 2,
            _ => 8,
        }
    }

    fn header_len(&self) -> usize {
        2 + self.ext_len() + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Appends the frame's bytes. Written here rather than with `Frame::encode`, so that
    /// an encoder bug cannot hide a decoder bug.
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.len();
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xF));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.ext_len() {
            0 => out.push(mask_bit | len as u8),
            2 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        if self.claimed.is_none() {
            let key = self.mask.unwrap_or([0; 4]);
            out.extend(
                self.payload
                    .iter()
                    .zip(key.iter().cycle())
                    .map(|(b, k)| b ^ k),
            );
        }
    }
}

/// The frames' bytes, and where each frame starts.
fn encode_all(specs: &[Spec]) -> (Vec<u8>, Vec<usize>) {
    let mut wire = Vec::new();
    let mut starts = Vec::with_capacity(specs.len());
    for spec in specs {
        starts.push(wire.len());
        spec.encode(&mut wire);
    }
    (wire, starts)
}

// ---------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------

/// How the model expects a stream to end.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Every byte consumed, nothing pending.
    Clean,
    /// The stream stops inside a frame (or inside a fragmented message).
    NeedMore,
    /// The frame at this index fails the connection.
    Error(usize, ProtocolError),
}

#[derive(Debug)]
struct Expected {
    /// Each message, with the index of the frame that completed it.
    messages: Vec<(usize, Message)>,
    end: End,
}

/// "Status codes in the range 0-999 are not used", 1004-1006 and 1015 are reserved or
/// local-only, 1016-2999 are for future RFCs, 3000-4999 for libraries and applications
/// (RFC 6455 §7.4.1, §7.4.2, and the IANA registry up to 1014).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Whether `bytes` can still be the start of UTF-8.
fn utf8_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// What RFC 6455 makes of `specs`, read by a receiver in `role` with `limits`.
fn model(specs: &[Spec], role: Role, limits: Limits) -> Expected {
    let mut messages = Vec::new();
    // The fragmented message in progress: whether it is text, and its bytes so far.
    let mut fragments: Option<(bool, Vec<u8>)> = None;
    macro_rules! fail {
        ($i:expr, $error:expr) => {
            return Expected {
                messages,
                end: End::Error($i, ProtocolError::from($error)),
            }
        };
    }
    for (i, spec) in specs.iter().enumerate() {
        let len = spec.len();
        // The header, in the order it is read (§5.2).
        let Some(opcode) = OpCode::from_u8(spec.opcode) else {
            let error = HeaderError::ReservedOpCode(spec.opcode);
            fail!(i, error);
        };
        match spec.ext_len() {
            2 if len < 126 => fail!(i, HeaderError::NonMinimalLength(len)),
            8 if len >> 63 != 0 => fail!(i, HeaderError::LengthTooLong),
            8 if len <= 0xFFFF => {
                fail!(i, HeaderError::NonMinimalLength(len));
            }
            _ => {}
        }
        // The rules that need only the header.
        if spec.rsv != 0 {
            fail!(i, ProtocolError::NonZeroReservedBits);
        }
        match (role, spec.mask.is_some()) {
            (Role::Server, false) => fail!(i, ProtocolError::UnmaskedFrame),
            (Role::Client, true) => fail!(i, ProtocolError::MaskedFrame),
            _ => {}
        }
        let buffered = fragments.as_ref().map_or(0, |(_, data)| data.len());
        let text = match opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                if !spec.fin {
                    fail!(i, ProtocolError::FragmentedControlFrame);
                }
                if len > 125 {
                    fail!(i, ProtocolError::ControlFrameTooLong(len));
                }
                false
            }
            OpCode::Continuation => match &fragments {
                None => fail!(i, ProtocolError::UnexpectedContinuation),
                Some((text, _)) => *text,
            },
            OpCode::Text | OpCode::Binary => {
                if fragments.is_some() {
                    fail!(i, ProtocolError::ExpectedContinuation);
                }
                opcode == OpCode::Text
            }
        };
        if len > limits.max_frame_size as u64 {
            let error = ProtocolError::FrameTooLarge {
                len,
                max: limits.max_frame_size,
            };
            fail!(i, error);
        }
        let too_big = ProtocolError::MessageTooLarge {
            max: limits.max_message_size,
        };
        // A control frame is not part of the message around it (§5.4).
        if !opcode.is_control() && buffered as u64 + len > limits.max_message_size as u64 {
            fail!(i, too_big);
        }
        if spec.claimed.is_some() {
            return Expected {
                messages,
                end: End::NeedMore,
            };
        }
        // The payload.
        let payload = &spec.payload;
        if text {
            let mut so_far = fragments.as_ref().map_or(Vec::new(), |(_, d)| d.clone());
            so_far.extend_from_slice(payload);
            if !utf8_prefix(&so_far) {
                fail!(i, ProtocolError::InvalidUtf8);
            }
        }
        let message = match opcode {
            OpCode::Ping => Some(Message::Ping(Bytes::copy_from_slice(payload))),
            OpCode::Pong => Some(Message::Pong(Bytes::copy_from_slice(payload))),
            OpCode::Close => match payload.as_slice() {
                [] => Some(Message::Close(None)),
                [_] => {
                    fail!(i, CloseError::Truncated);
                }
                [hi, lo, reason @ ..] => {
                    let code = u16::from_be_bytes([*hi, *lo]);
                    if !sendable(code) {
                        let error = CloseError::InvalidCode(CloseCode(code));
                        fail!(i, error);
                    }
                    let Ok(reason) = std::str::from_utf8(reason) else {
                        let error = CloseError::InvalidReason(Utf8Error);
                        fail!(i, error);
                    };
                    Some(Message::Close(Some(CloseFrame::new(
                        CloseCode(code),
                        reason,
                    ))))
                }
            },
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let (text, mut data) = fragments.take().unwrap_or((text, Vec::new()));
                data.extend_from_slice(payload);
                if spec.fin {
                    if text {
                        match String::from_utf8(data) {
                            Ok(s) => Some(Message::text(s)),
                            Err(_) => fail!(i, ProtocolError::InvalidUtf8),
                        }
                    } else {
                        Some(Message::binary(data))
                    }
                } else {
                    fragments = Some((text, data));
                    None
                }
            }
        };
        messages.extend(message.map(|m| (i, m)));
    }
    Expected {
        messages,
        end: if fragments.is_some() {
            End::NeedMore
        } else {
            End::Clean
        },
    }
}

// ---------------------------------------------------------------------------------------
// Driving the decoder.
// ---------------------------------------------------------------------------------------

/// A decoder that may not be called again once it has returned an error.
struct Guarded {
    decoder: Decoder,
    failed: bool,
}

impl Guarded {
    fn new(role: Role, limits: Limits) -> Self {
        Self {
            decoder: Decoder::new(role, limits),
            failed: false,
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, ProtocolError> {
        assert!(!self.failed, "decoder used after it returned an error");
        let result = self.decoder.decode();
        self.failed = result.is_err();
        result
    }
}

/// Everything a decoder made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Message>,
    /// The error that ended decoding, if any.
    error: Option<ProtocolError>,
    /// How many bytes the decoder held, and its read hint, when no error came.
    buffered: usize,
    wanted: usize,
}

/// Feeds `wire` to a fresh decoder in pieces of the given sizes (the rest as a last piece).
fn decode_in_pieces(wire: &[u8], pieces: &[usize], role: Role, limits: Limits) -> Outcome {
    let mut decoder = Guarded::new(role, limits);
    let mut messages = Vec::new();
    let mut at = 0;
    let ends = pieces
        .iter()
        .map(|&n| n.min(wire.len()))
        .chain([wire.len()]);
    for end in ends {
        let end = end.max(at);
        decoder.decoder.feed(BytesMut::from(&wire[at..end]));
        at = end;
        loop {
            match decoder.decode() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {
                    // Asking again with nothing new changes nothing.
                    let held = decoder.decoder.buffered();
                    assert_eq!(decoder.decode(), Ok(None), "a second call");
                    assert_eq!(decoder.decoder.buffered(), held);
                    break;
                }
                Err(error) => {
                    return Outcome {
                        messages,
                        error: Some(error),
                        buffered: 0,
                        wanted: 0,
                    };
                }
            }
        }
    }
    Outcome {
        wanted: decoder.decoder.bytes_wanted(),
        buffered: decoder.decoder.buffered(),
        messages,
        error: None,
    }
}

/// Cumulative split points: mostly small pieces, with single bytes and long runs mixed in.
fn random_pieces(len: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut points = Vec::new();
    let mut at = 0;
    while at < len {
        at += match rng.random_range(0..8) {
            0 => 1,
            1..=5 => rng.random_range(1..16),
            _ => rng.random_range(1..200),
        };
        points.push(at);
    }
    points
}

/// The invariants that hold whatever the input.
fn check_invariants(outcome: &Outcome, limits: Limits) -> Result<(), String> {
    for message in &outcome.messages {
        match message {
            Message::Text(text) => {
                if std::str::from_utf8(text.as_bytes()).is_err() {
                    return Err(format!("text that is not UTF-8: {text:?}"));
                }
                if text.len() > limits.max_message_size {
                    return Err(format!("text of {} bytes past the limit", text.len()));
                }
            }
            Message::Binary(data) if data.len() > limits.max_message_size => {
                return Err(format!("binary of {} bytes past the limit", data.len()));
            }
            Message::Ping(data) | Message::Pong(data) if data.len() > 125 => {
                return Err(format!("control payload of {} bytes", data.len()));
            }
            Message::Close(Some(close)) => {
                if !sendable(close.code.0) {
                    return Err(format!("close code {} may not be sent", close.code));
                }
                if std::str::from_utf8(close.reason.as_bytes()).is_err() || close.reason.len() > 123
                {
                    return Err(format!("close reason {:?}", close.reason));
                }
            }
            _ => {}
        }
    }
    if let Some(error) = &outcome.error {
        let code = error.close_code().0;
        if !matches!(code, 1002 | 1007 | 1009) {
            return Err(format!("{error} closes with {code}"));
        }
    }
    Ok(())
}

/// Decodes `wire` whole and in random pieces: both must agree and keep the invariants.
fn decode_both_ways(
    wire: &[u8],
    role: Role,
    limits: Limits,
    rng: &mut StdRng,
) -> Result<Outcome, String> {
    let whole = decode_in_pieces(wire, &[], role, limits);
    tally(&whole);
    check_invariants(&whole, limits)?;
    let pieces = random_pieces(wire.len(), rng);
    let split = decode_in_pieces(wire, &pieces, role, limits);
    if split != whole {
        return Err(format!(
            "split at {pieces:?} gives\n{split:?}\nwhole gives\n{whole:?}"
        ));
    }
    Ok(whole)
}

/// Compares what the decoder made of the first `cut` bytes with the model.
fn check_against_model(
    outcome: &Outcome,
    expected: &Expected,
    starts: &[usize],
    wire_len: usize,
    cut: usize,
) -> Result<(), String> {
    // The frame the cut falls in; `starts.len()` when the whole stream is there.
    let cut_frame = if cut >= wire_len {
        starts.len()
    } else {
        starts.partition_point(|&start| start <= cut) - 1
    };
    let before = |frame: usize| -> Vec<Message> {
        expected
            .messages
            .iter()
            .filter(|(i, _)| *i < frame)
            .map(|(_, m)| m.clone())
            .collect()
    };
    let mismatch = || format!("got {outcome:?}\nexpected {expected:?}\ncut at frame {cut_frame}");
    let ok = match &expected.end {
        End::Error(at, error) if *at < cut_frame => {
            outcome.error.as_ref() == Some(error) && outcome.messages == before(*at)
        }
        // The failing frame is cut: its error may or may not show in the bytes that came.
        End::Error(at, error) if *at == cut_frame => {
            outcome.messages == before(*at)
                && (outcome.error.is_none() || outcome.error.as_ref() == Some(error))
        }
        End::Clean if cut_frame == starts.len() => {
            outcome.error.is_none()
                && outcome.buffered == 0
                && outcome.messages == before(cut_frame)
        }
        _ => outcome.error.is_none() && outcome.messages == before(cut_frame),
    };
    if ok { Ok(()) } else { Err(mismatch()) }
}

thread_local! {
    /// How the streams of the running stress test ended, by error variant: evidence that
    /// the cases reach every rule.
    static ENDINGS: RefCell<BTreeMap<String, usize>> = const { RefCell::new(BTreeMap::new()) };
}

fn tally(outcome: &Outcome) {
    let ending = match &outcome.error {
        None if outcome.buffered == 0 => "clean".to_owned(),
        None => "needs more".to_owned(),
        Some(error) => {
            let name = format!("{error:?}");
            let end = name.find([' ', '(']).unwrap_or(name.len());
            let (variant, inner) = (&name[..end], name.get(end + 1..).unwrap_or(""));
            match variant {
                // The inner variant says which rule.
                "Header" | "InvalidClose" => {
                    let inner = &inner[..inner.find([' ', '(', ')']).unwrap_or(inner.len())];
                    format!("{variant}({inner})")
                }
                _ => variant.to_owned(),
            }
        }
    };
    ENDINGS.with(|e| *e.borrow_mut().entry(ending).or_default() += 1);
}

/// Runs one case, turning a panic anywhere (the decoder's included) into a report that
/// names the seed.
fn run_case(seed: u64, case: fn(&mut StdRng) -> Result<usize, String>) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    match catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
        Ok(Ok(frames)) => frames,
        Ok(Err(report)) => panic!("case {seed:#x} failed: {report}"),
        Err(_) => panic!("case {seed:#x} panicked (see the message above)"),
    }
}

/// Runs cases until `min_frames` frames went through; returns how many did.
fn stress(stream: u64, min_frames: usize, case: fn(&mut StdRng) -> Result<usize, String>) -> usize {
    let base = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5EED_CAFE_F00D);
    let started = Instant::now();
    ENDINGS.with(|e| e.borrow_mut().clear());
    let mut frames = 0;
    let mut index = 0u64;
    while frames < min_frames {
        // Each case's seed names it alone, for `replay`.
        let seed = (base ^ (stream << 48)).wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        frames += run_case(seed, case);
        index += 1;
    }
    let endings = ENDINGS.with(|e| e.take());
    println!(
        "{frames} frames in {index} cases, {:.2?}; streams ended: {endings:?}",
        started.elapsed()
    );
    frames
}

// ---------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------

/// Random text: ASCII mostly, with two-, three- and four-byte characters.
fn random_text(len: usize, rng: &mut StdRng) -> String {
    let mut text = String::with_capacity(len);
    while text.len() < len {
        let c = match rng.random_range(0..10) {
            0..=5 => char::from(rng.random_range(0x20u8..0x7F)),
            6 => rng.random_range('\u{80}'..='\u{7FF}'),
            7 | 8 => rng.random_range('\u{800}'..='\u{FFFF}'),
            _ => rng.random_range('\u{10000}'..='\u{10FFFF}'),
        };
        text.push(c);
    }
    text
}

fn random_bytes(len: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes[..]);
    bytes
}

/// A payload length: mostly a few bytes, at times past 125 (a 16-bit length), rarely
/// past 65535 (a 64-bit length).
fn random_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..1000) {
        0 => rng.random_range(0x1_0000..0x1_0100),
        1..=60 => rng.random_range(126..400),
        _ => rng.random_range(0..24),
    }
}

fn control_payload(rng: &mut StdRng) -> Vec<u8> {
    let max = if rng.random_range(0..10) == 0 { 125 } else { 8 };
    let len = rng.random_range(0..=max);
    random_bytes(len, rng)
}

fn random_control(role: Role, rng: &mut StdRng) -> Spec {
    match rng.random_range(0..10) {
        0..=3 => Spec::new(OpCode::Ping, control_payload(rng), role, rng),
        4..=7 => Spec::new(OpCode::Pong, control_payload(rng), role, rng),
        8 => Spec::new(OpCode::Close, Vec::new(), role, rng),
        _ => {
            let codes = [1000, 1001, 1003, 1008, 1011, 1014, 3000, 4999];
            let code: u16 = codes[rng.random_range(0..codes.len())];
            let reason = random_text(rng.random_range(0..40), rng);
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            payload.truncate(125 - 3);
            // Cut back to a whole character.
            while std::str::from_utf8(&payload[2..]).is_err() {
                payload.pop();
            }
            Spec::new(OpCode::Close, payload, role, rng)
        }
    }
}

/// A valid stream of about `frames` frames: messages, some fragmented at random bytes
/// (inside characters too), with control frames between the fragments.
fn valid_stream(frames: usize, role: Role, rng: &mut StdRng) -> Vec<Spec> {
    let mut specs = Vec::with_capacity(frames + 4);
    while specs.len() < frames {
        let kind = rng.random_range(0..10);
        if kind >= 8 {
            specs.push(random_control(role, rng));
            continue;
        }
        let text = kind < 5;
        let len = random_len(rng);
        let payload = if text {
            random_text(len, rng).into_bytes()
        } else {
            random_bytes(len, rng)
        };
        let pieces = match rng.random_range(0..4) {
            0 | 1 => 1,
            2 => 2,
            _ => rng.random_range(3..8),
        };
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| rng.random_range(0..=payload.len()))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut from = 0;
        for (n, &to) in cuts.iter().enumerate() {
            let opcode = match (n, text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let mut spec = Spec::new(opcode, payload[from..to].to_vec(), role, rng);
            spec.fin = n + 1 == cuts.len();
            specs.push(spec);
            if n + 1 < cuts.len() && rng.random_bool(0.3) {
                specs.push(random_control(role, rng));
            }
            from = to;
        }
    }
    specs
}

/// Breaks one rule (or, at times, a rule the peer is free to break harmlessly) in one
/// frame of `specs`.
fn mutate(specs: &mut Vec<Spec>, role: Role, limits: Limits, rng: &mut StdRng) {
    let at = rng.random_range(0..specs.len());
    let spec = &mut specs[at];
    match rng.random_range(0..17) {
        0 => spec.rsv = rng.random_range(1..8),
        1 => spec.opcode = rng.random_range(0..16),
        2 => spec.fin = !spec.fin,
        3 => {
            spec.mask = match spec.mask {
                Some(_) => None,
                None => Some(rng.random()),
            }
        }
        4 => {
            spec.width = if rng.random() {
                Width::Two
            } else {
                Width::Eight
            }
        }
        // Invalid UTF-8 where text is expected (or binary bytes that stay harmless).
        5 | 6 => {
            let bad = [0xFF, 0xC0, 0x80, 0xED, 0xF4, 0xF8, 0xC1];
            let byte = bad[rng.random_range(0..bad.len())];
            if spec.payload.is_empty() {
                spec.payload.push(byte);
            } else {
                let i = rng.random_range(0..spec.payload.len());
                spec.payload[i] = byte;
            }
        }
        // A text frame that stops inside a character.
        7 => {
            let mut spec = Spec::new(OpCode::Text, "é€😀".as_bytes().to_vec(), role, rng);
            spec.payload.truncate(rng.random_range(0..9));
            specs.insert(at, spec);
        }
        // Close payloads: one byte, a code that may not be sent, a reason that is not UTF-8.
        8 => {
            let payload = match rng.random_range(0..3) {
                0 => vec![rng.random()],
                1 => {
                    let codes = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX];
                    codes[rng.random_range(0..codes.len())]
                        .to_be_bytes()
                        .to_vec()
                }
                _ => vec![0x03, 0xE8, b'o', 0xC3, b'k'],
            };
            *spec = Spec::new(OpCode::Close, payload, role, rng);
        }
        // A control frame too long, or fragmented.
        9 => {
            let len = rng.random_range(126..200);
            *spec = Spec::new(OpCode::Ping, random_bytes(len, rng), role, rng);
        }
        10 => {
            *spec = random_control(role, rng);
            spec.fin = false;
        }
        // Continuation misuse: one out of nowhere, or a new message inside another.
        11 => {
            let mut spec = Spec::new(OpCode::Continuation, random_bytes(3, rng), role, rng);
            spec.fin = rng.random();
            specs.insert(at, spec);
        }
        12 => {
            let opcode = if rng.random() {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            let mut spec = Spec::new(opcode, b"interloper".to_vec(), role, rng);
            spec.fin = rng.random();
            specs.insert(at, spec);
        }
        // A header claiming a huge length, or one past the limits; the stream ends there.
        13 | 14 => {
            let claims = [
                limits.max_frame_size as u64 + 1,
                limits.max_message_size as u64 + 1,
                1 << 62,
                (1 << 63) - 1,
                1 << 63,
                u64::MAX,
                rng.random_range(0x1_0000..u64::MAX),
            ];
            let mut spec = specs[at].clone();
            spec.claimed = Some(claims[rng.random_range(0..claims.len())]);
            specs.truncate(at);
            specs.push(spec);
        }
        // A long fragmented message, past the message limit when the limits are small,
        // with control frames between its fragments.
        15 => {
            let mut long = Vec::new();
            let fragments = rng.random_range(3..9);
            for n in 0..fragments {
                let opcode = if n == 0 {
                    OpCode::Binary
                } else {
                    OpCode::Continuation
                };
                let len = rng.random_range(150..=250);
                let mut spec = Spec::new(opcode, random_bytes(len, rng), role, rng);
                spec.fin = n + 1 == fragments;
                long.push(spec);
                if n + 1 < fragments && rng.random_bool(0.5) {
                    long.push(random_control(role, rng));
                }
            }
            specs.splice(at..at, long);
        }
        // A frame lost from the middle.
        _ => {
            specs.remove(at);
            if specs.is_empty() {
                specs.push(random_control(role, rng));
            }
        }
    }
}

fn random_role(rng: &mut StdRng) -> Role {
    if rng.random() {
        Role::Server
    } else {
        Role::Client
    }
}

fn random_limits(rng: &mut StdRng) -> Limits {
    if rng.random_range(0..4) == 0 {
        Limits::default()
    } else {
        small()
    }
}

// ---------------------------------------------------------------------------------------
// Cases: each returns how many frames it fed the decoder.
// ---------------------------------------------------------------------------------------

/// Valid frames, maybe broken at the structure, compared with the model whole, split and
/// truncated.
fn structured_case(rng: &mut StdRng, role: Role) -> Result<usize, String> {
    let limits = random_limits(rng);
    let mut specs = valid_stream(rng.random_range(1..24), role, rng);
    let mutations = match rng.random_range(0..10) {
        0..=2 => 0,
        3..=7 => 1,
        _ => rng.random_range(2..4),
    };
    for _ in 0..mutations {
        mutate(&mut specs, role, limits, rng);
    }
    let expected = model(&specs, role, limits);
    let (wire, starts) = encode_all(&specs);
    let whole = decode_both_ways(&wire, role, limits, rng)?;
    check_against_model(&whole, &expected, &starts, wire.len(), wire.len())?;
    if mutations == 0 && expected.end != End::Clean {
        // Valid frames within the limits must come out exactly; only the limits may stop
        // them.
        let limit_hit = matches!(
            expected.end,
            End::Error(
                _,
                ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. }
            )
        );
        if !limit_hit {
            return Err(format!("the model rejects a valid stream: {expected:?}"));
        }
    }
    // The same stream cut short.
    let cut = rng.random_range(0..=wire.len());
    let truncated = decode_both_ways(&wire[..cut], role, limits, rng)?;
    check_against_model(&truncated, &expected, &starts, wire.len(), cut)?;
    // The frames of the whole stream, and those the cut stream has a byte of.
    Ok(specs.len() + starts.partition_point(|&start| start < cut))
}

fn structured_server(rng: &mut StdRng) -> Result<usize, String> {
    structured_case(rng, Role::Server)
}

fn structured_client(rng: &mut StdRng) -> Result<usize, String> {
    structured_case(rng, Role::Client)
}

/// Valid frames with their bytes damaged: bits flipped (mostly in headers), lengths
/// overwritten, bytes spliced in or cut out.
fn byte_mutated(rng: &mut StdRng) -> Result<usize, String> {
    let role = random_role(rng);
    let limits = random_limits(rng);
    let specs = valid_stream(rng.random_range(1..12), role, rng);
    let (mut wire, starts) = encode_all(&specs);
    for _ in 0..rng.random_range(1..4) {
        let frame = rng.random_range(0..specs.len());
        // Earlier splices move bytes about: stay inside the wire.
        let Some(start) = starts.get(frame).copied().filter(|&s| s < wire.len()) else {
            continue;
        };
        let header_end = (start + specs[frame].header_len()).min(wire.len());
        match rng.random_range(0..5) {
            0 | 1 => {
                let i = rng.random_range(start..header_end);
                wire[i] ^= 1 << rng.random_range(0..8);
            }
            2 => {
                // The length byte and what follows it, with random bytes.
                for byte in &mut wire[start + 1..header_end.min(start + 10)] {
                    *byte = rng.random();
                }
            }
            3 if !wire.is_empty() => {
                let i = rng.random_range(0..wire.len());
                wire[i] ^= 1 << rng.random_range(0..8);
            }
            _ => {
                let i = rng.random_range(0..=wire.len());
                if rng.random() {
                    let junk = random_bytes(rng.random_range(1..6), rng);
                    wire.splice(i..i, junk);
                } else {
                    wire.drain(i..(i + rng.random_range(1..6)).min(wire.len()));
                }
            }
        }
    }
    decode_both_ways(&wire, role, limits, rng)?;
    Ok(specs.len())
}

/// Bytes from nowhere: uniformly random, or random headers with a plausible shape.
fn random_input(rng: &mut StdRng) -> Result<usize, String> {
    let role = random_role(rng);
    let limits = random_limits(rng);
    let mut wire = Vec::new();
    let frames = rng.random_range(1..6);
    for _ in 0..frames {
        if rng.random() {
            wire.extend(random_bytes(rng.random_range(0..32), rng));
        } else {
            // FIN and opcode random, RSV mostly clear, mask bit mostly right.
            let b0 = rng.random::<u8>() & if rng.random_bool(0.8) { 0x8F } else { 0xFF };
            let masked = (role == Role::Server) != rng.random_bool(0.1);
            let len = rng.random_range(0..20u8);
            wire.push(b0);
            wire.push(if masked { 0x80 } else { 0 } | len);
            if masked {
                wire.extend(random_bytes(4, rng));
            }
            wire.extend(random_bytes(usize::from(len), rng));
        }
    }
    decode_both_ways(&wire, role, limits, rng)?;
    Ok(frames)
}

// ---------------------------------------------------------------------------------------
// The stress tests: together well over a million frames.
// ---------------------------------------------------------------------------------------

#[test]
fn structured_frames_in_the_server_role_match_the_model() {
    let frames = stress(1, 400_000, structured_server);
    assert!(frames >= 400_000);
}

#[test]
fn structured_frames_in_the_client_role_match_the_model() {
    let frames = stress(2, 400_000, structured_client);
    assert!(frames >= 400_000);
}

#[test]
fn damaged_bytes_never_panic_and_decode_alike_whole_or_split() {
    let frames = stress(3, 300_000, byte_mutated);
    assert!(frames >= 300_000);
}

/// Counted in pieces of random bytes or random frames, not in frames: random bytes have
/// no frames to count.
#[test]
fn random_bytes_never_panic_and_decode_alike_whole_or_split() {
    let pieces = stress(4, 250_000, random_input);
    assert!(pieces >= 250_000);
}

/// Replays one case by its seed (from a failure report, `HOSTILE_CASE=<hex>`), in every
/// kind of case; without one, replays a few fixed seeds so the replay path stays working.
#[test]
fn replay() {
    let seeds: Vec<u64> = match std::env::var("HOSTILE_CASE") {
        Ok(s) => vec![u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("a hex seed")],
        Err(_) => vec![0, 1, 0xdead_beef],
    };
    for seed in seeds {
        replay_seed(seed);
    }
}

fn replay_seed(seed: u64) {
    for case in [
        structured_server,
        structured_client,
        byte_mutated,
        random_input,
    ] {
        run_case(seed, case);
    }
}

// ---------------------------------------------------------------------------------------
// Targeted tests.
// ---------------------------------------------------------------------------------------

/// A header for a binary frame claiming `len` bytes, masked.
fn huge_header(len: u64) -> BytesMut {
    let mut buf = BytesMut::from(&[0x82, 0x80 | 127][..]);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[1, 2, 3, 4]);
    buf
}

#[test]
fn a_2_pow_62_length_is_rejected_at_the_header_without_allocating() {
    let len = 1u64 << 62;
    let mut decoder = Decoder::new(Role::Server, Limits::default());
    decoder.feed(huge_header(len));
    let error = decoder.decode().unwrap_err();
    assert_eq!(
        error,
        ProtocolError::FrameTooLarge {
            len,
            max: Limits::default().max_frame_size
        }
    );
    assert_eq!(error.close_code(), CloseCode::MESSAGE_TOO_BIG);
    assert_eq!(decoder.buffered(), 14, "the buffer was touched");

    // Even with no limit at all, the claim alone reserves nothing: allocating 2^62 bytes
    // would abort the process, and the buffer keeps the size the bytes that came gave it.
    let unlimited = Limits::default()
        .max_frame_size(usize::MAX)
        .max_message_size(usize::MAX);
    let mut decoder = Decoder::new(Role::Server, unlimited);
    decoder.feed(huge_header(len));
    assert_eq!(decoder.decode(), Ok(None));
    assert_eq!(decoder.buffered(), 0, "the header is consumed");
    assert_eq!(decoder.bytes_wanted(), 1 << 62);
    let mut buf = decoder.read_buf(4096);
    let capacity = buf.capacity();
    buf.extend_from_slice(&[0; 4096]);
    assert_eq!(
        buf.capacity(),
        capacity,
        "room for what came, not for the claim"
    );
    decoder.feed(buf);
    assert_eq!(decoder.decode(), Ok(None));
    assert_eq!(decoder.buffered(), 4096);
    assert_eq!(decoder.bytes_wanted(), (1 << 62) - 4096);
}

#[test]
fn lengths_with_the_top_bit_set_are_rejected_however_high_the_limit() {
    for len in [1 << 63, u64::MAX] {
        let unlimited = Limits::default()
            .max_frame_size(usize::MAX)
            .max_message_size(usize::MAX);
        let mut decoder = Decoder::new(Role::Server, unlimited);
        decoder.feed(huge_header(len));
        assert_eq!(
            decoder.decode(),
            Err(ProtocolError::Header(HeaderError::LengthTooLong))
        );
    }
}

/// About 1 KiB of frames of every kind: text fragmented inside characters, binary with a
/// 16-bit length, interleaved control frames, a close.
fn kilobyte_of_frames(role: Role) -> (Vec<u8>, Vec<Message>) {
    let mut rng = StdRng::seed_from_u64(1024);
    let mask = |rng: &mut StdRng| (role == Role::Server).then(|| rng.random::<[u8; 4]>());
    let text = "κόσμε 😀 ".repeat(20);
    let binary: Vec<u8> = (0..=255).collect();
    let frame = |opcode: OpCode, fin: bool, payload: &[u8], rng: &mut StdRng| Spec {
        fin,
        rsv: 0,
        opcode: opcode.as_u8(),
        mask: mask(rng),
        width: Width::Minimal,
        claimed: None,
        payload: payload.to_vec(),
    };
    let t = text.as_bytes();
    let specs = vec![
        frame(OpCode::Text, false, &t[..7], &mut rng),
        frame(OpCode::Ping, true, b"are you there", &mut rng),
        frame(OpCode::Continuation, false, &t[7..150], &mut rng),
        frame(OpCode::Pong, true, b"", &mut rng),
        frame(OpCode::Continuation, true, &t[150..], &mut rng),
        frame(OpCode::Binary, true, &binary, &mut rng),
        frame(OpCode::Text, true, "short".as_bytes(), &mut rng),
        frame(OpCode::Binary, false, &binary[..100], &mut rng),
        frame(OpCode::Continuation, true, &binary[100..], &mut rng),
        frame(OpCode::Close, true, b"\x03\xe8bye", &mut rng),
    ];
    let (mut wire, _) = encode_all(&specs);
    // Pad to 1 KiB with pings.
    while wire.len() < 1024 {
        let room = (1024 - wire.len()).saturating_sub(6).min(125);
        frame(OpCode::Ping, true, &vec![b'.'; room], &mut rng).encode(&mut wire);
    }
    let expected = model(&specs, role, Limits::default());
    assert_eq!(expected.end, End::Clean);
    let mut messages: Vec<Message> = expected.messages.into_iter().map(|(_, m)| m).collect();
    let padding = encode_all(&specs).0.len();
    let mut rest = &wire[padding..];
    while !rest.is_empty() {
        let (header, _) = switchboard_proto::FrameHeader::parse(rest)
            .unwrap()
            .unwrap();
        let total = header.encoded_len() + header.payload_len as usize;
        messages.push(Message::Ping(Bytes::from(vec![
            b'.';
            header.payload_len as usize
        ])));
        rest = &rest[total..];
    }
    (wire, messages)
}

#[test]
fn a_kilobyte_split_at_every_byte_gives_the_same_messages_as_whole() {
    for role in [Role::Server, Role::Client] {
        let (wire, expected) = kilobyte_of_frames(role);
        assert!(wire.len() >= 1024, "{} bytes", wire.len());
        let whole = decode_in_pieces(&wire, &[], role, Limits::default());
        assert_eq!(whole.error, None);
        assert_eq!(whole.messages, expected);
        assert_eq!(whole.buffered, 0);
        for at in 0..=wire.len() {
            let split = decode_in_pieces(&wire, &[at], role, Limits::default());
            assert_eq!(split, whole, "split at {at}");
        }
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(
            decode_in_pieces(&wire, &bytewise, role, Limits::default()),
            whole
        );
    }
}

/// Bug: a control frame between the fragments of a message counts toward
/// `max_message_size`, so a valid ping fails the connection with 1009 when the message
/// so far is within 125 bytes of the limit. "Control frames MAY be injected in the middle
/// of a fragmented message" (RFC 6455 §5.4), and a ping is not part of the message.
#[test]
fn control_frames_do_not_count_toward_the_message_limit() {
    let limits = Limits::default().max_frame_size(100).max_message_size(150);
    let mut rng = StdRng::seed_from_u64(5);
    let mut first = Spec::new(OpCode::Binary, vec![1; 100], Role::Server, &mut rng);
    first.fin = false;
    let specs = [
        first,
        Spec::new(OpCode::Ping, vec![2; 60], Role::Server, &mut rng),
        Spec::new(OpCode::Continuation, vec![3; 50], Role::Server, &mut rng),
    ];
    let (wire, _) = encode_all(&specs);
    let outcome = decode_in_pieces(&wire, &[], Role::Server, limits);
    let mut message = vec![1; 100];
    message.extend_from_slice(&[3; 50]);
    assert_eq!(
        outcome.error, None,
        "a 60-byte ping inside a 150-byte message"
    );
    assert_eq!(
        outcome.messages,
        [
            Message::Ping(Bytes::from(vec![2; 60])),
            Message::binary(message)
        ]
    );
}

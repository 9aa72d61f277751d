//! permessage-deflate throughput: compressing a message into a frame, and decoding a
//! compressed message (inflate, UTF-8 check) for each level and window size that the
//! `Compression` modes use, on JSON-like text.
//!
//! `cargo bench -p switchboard-proto --bench deflate`

// criterion_group! defines an undocumented function.
#![allow(missing_docs)]

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use switchboard_proto::{
    Decoder, Limits, OpCode, Role,
    deflate::{DeflateParams, Deflater},
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// How many distinct messages each benchmark cycles through: sending one message over
/// and over would let context takeover reduce each to a single back-reference.
const DISTINCT: u32 = 64;

/// Chat-like JSON, the `seed`th of a series: what a real-time application sends, similar
/// from one message to the next but never the same.
fn json(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = seed.wrapping_mul(7_919);
    while out.len() < len {
        out.extend_from_slice(
            format!(
                r#"{{"topic":"room:{}","event":"new_msg","ref":"{}","payload":{{"user":"user{}","body":"message number {} in the room"}}}},"#,
                i % 17,
                i,
                i % 101,
                i.wrapping_mul(2_654_435_761) % 1_000_003
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// (name, window bits, level, no context takeover): the modes' defaults and extremes.
const SETTINGS: [(&str, u8, u32, bool); 4] = [
    ("dedicated-w12-l6", 12, 6, false),
    ("dedicated-w15-l1", 15, 1, false),
    ("dedicated-w15-l6", 15, 6, false),
    ("shared-w15-l6", 15, 6, true),
];

fn params(bits: u8, no_context_takeover: bool) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    }
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_compress");
    for len in [1024usize, 16 << 10, 256 << 10] {
        let messages: Vec<Vec<u8>> = (0..DISTINCT).map(|seed| json(len, seed)).collect();
        group.throughput(Throughput::Bytes(len as u64));
        for (name, bits, level, reset) in SETTINGS {
            let mut deflater = Deflater::new(&params(bits, reset), Role::Server, level);
            let mut next = messages.iter().cycle();
            group.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    let message = next.next().expect("cycle");
                    deflater.frame(OpCode::Text, black_box(message))
                })
            });
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_decode");
    for len in [1024usize, 16 << 10, 256 << 10] {
        let messages: Vec<Vec<u8>> = (0..DISTINCT).map(|seed| json(len, seed)).collect();
        group.throughput(Throughput::Bytes(len as u64));
        for (name, bits, level, reset) in SETTINGS {
            let agreed = params(bits, reset);
            // Without context takeover every message is the same frame; with it, the
            // inflater must see the stream the deflater produced, so a long run of frames
            // is made once and decoded in order, wrapping with a fresh pair.
            let mut deflater = Deflater::new(&agreed, Role::Client, level);
            let frames: Vec<BytesMut> = messages
                .iter()
                .map(|message| {
                    let mut wire = BytesMut::new();
                    deflater
                        .frame(OpCode::Text, message)
                        .expect("compress")
                        .masked(KEY)
                        .write_to(&mut wire);
                    wire
                })
                .collect();
            let new_decoder =
                || Decoder::new(Role::Server, Limits::default()).with_deflate(&agreed);
            let mut decoder = new_decoder();
            let mut next = 0;
            group.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    if next == frames.len() {
                        next = 0;
                        decoder = new_decoder();
                    }
                    decoder.feed(black_box(frames[next].clone()));
                    next += 1;
                    decoder.decode().expect("decode")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compress, decode);
criterion_main!(benches);

//! Micro-benchmarks of the protocol's hot paths: header parsing, unmasking, UTF-8
//! validation, encoding and whole-message decoding.
//!
//! `cargo bench -p switchboard-proto`

// criterion_group! defines an undocumented function.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use switchboard_proto::{
    Decoder, Frame, FrameHeader, Limits, OpCode, Role, mask::apply_mask, utf8::Utf8Validator,
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn header_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("header_parse");
    for len in [20u64, 1024, 70_000] {
        let header = FrameHeader {
            mask: Some(KEY),
            ..FrameHeader::new(OpCode::Binary, len)
        }
        .encode();
        group.bench_with_input(
            BenchmarkId::from_parameter(len),
            header.as_bytes(),
            |b, bytes| b.iter(|| FrameHeader::parse(black_box(bytes))),
        );
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for len in [1024usize, 64 << 10, 16 << 20] {
        let mut buf = vec![0x5a_u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), KEY, 0))
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8_validate");
    let ascii = "a".repeat(64 << 10);
    let mixed = "κόσμε-hello-😀-".repeat((64 << 10) / 22);
    for (name, text) in [
        ("ascii_64k", ascii.as_bytes()),
        ("mixed_64k", mixed.as_bytes()),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(text)).and_then(|()| v.finish())
            })
        });
        // The same text arriving in 1 KiB pieces, as from partial reads.
        group.bench_function(format!("{name}_in_1k_pieces"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in black_box(text).chunks(1024) {
                    v.feed(piece).ok();
                }
                v.finish()
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for len in [20usize, 1024, 16 << 10] {
        let payload = Bytes::from(vec![b'x'; len]);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("server", len), &payload, |b, p| {
            b.iter(|| Frame::new(OpCode::Binary, p.clone()).encode())
        });
        group.bench_with_input(BenchmarkId::new("client_masked", len), &payload, |b, p| {
            b.iter(|| Frame::new(OpCode::Binary, p.clone()).masked(KEY).encode())
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_message");
    for len in [20usize, 1024, 16 << 10] {
        let mut wire = BytesMut::new();
        Frame::text("x".repeat(len)).masked(KEY).write_to(&mut wire);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("text", len), &wire, |b, wire| {
            let mut decoder = Decoder::new(Role::Server, Limits::default());
            b.iter(|| {
                decoder.feed(wire.clone());
                decoder.decode()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, header_parse, unmask, utf8, encode, decode);
criterion_main!(benches);

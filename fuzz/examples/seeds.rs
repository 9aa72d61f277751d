//! Writes a seed corpus for each target into `corpus/<target>/`: valid frame streams in
//! both roles (compressed ones too) and a few rule breakers, compressed messages, valid
//! handshakes both ways, and channels messages as phoenix.js sends them.
//!
//! Run from `fuzz/`: `cargo run --example seeds`.

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use std::{fs, path::Path};
use switchboard_fuzz::{
    COMPRESS, DEFLATE, DEFLATE_SMALL, TINY, decode_input, deflate_params, fixed_client,
    inflate_input,
};
use switchboard_proto::{
    CloseCode, Frame, OpCode, Role,
    deflate::Deflater,
    handshake::{ServerHandshake, http1},
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, masked) in [("decode_server", true), ("decode_client", false)] {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        let write = |frames: Vec<Frame>| {
            let mut wire = BytesMut::new();
            for frame in frames {
                let frame = if masked { frame.masked(KEY) } else { frame };
                frame.write_to(&mut wire);
            }
            wire
        };
        let seed = |name: String, flags: u8, pieces: &[u8], wire: &[u8]| {
            fs::write(dir.join(name), decode_input(flags, pieces, wire))
        };
        for (name, frames) in frame_seeds() {
            let wire = write(frames);
            seed(format!("{name}-whole"), 0, &[], &wire)?;
            seed(format!("{name}-split"), 0, &[1, 3, 7, 2], &wire)?;
            seed(format!("{name}-tiny"), TINY, &[5, 60], &wire)?;
        }
        // A header claiming 2^62 bytes.
        let mut huge = vec![0x82, if masked { 0xFF } else { 0x7F }];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        if masked {
            huge.extend_from_slice(&KEY);
        }
        seed("huge-claim".into(), 0, &[], &huge)?;

        // Compressed messages, as the peer sends them.
        let peer = if masked { Role::Client } else { Role::Server };
        for (name, small) in [("deflate", false), ("deflate-small", true)] {
            let flags = DEFLATE | if small { DEFLATE_SMALL } else { 0 };
            let mut deflater = Deflater::new(&deflate_params(small), peer, 6);
            let text = "κόσμε ".repeat(50);
            let mut compress =
                |opcode, payload: &[u8]| deflater.frame(opcode, payload).expect("zlib compresses");
            let frames = vec![
                compress(OpCode::Text, text.as_bytes()),
                Frame::ping("between"),
                compress(OpCode::Binary, &[0u8; 4000]),
                compress(OpCode::Text, text.as_bytes()),
                Frame::text("plain"),
            ];
            let wire = write(frames);
            seed(name.into(), flags, &[], &wire)?;
            seed(format!("{name}-split"), flags, &[9, 30, 2], &wire)?;
            // One compressed message sent as two fragments, RSV1 on the first only.
            let whole = compress(OpCode::Text, text.as_bytes()).payload().clone();
            let (a, b) = whole.split_at(whole.len() / 2);
            let first = Frame::new(OpCode::Text, Bytes::copy_from_slice(a))
                .with_fin(false)
                .with_rsv1(true);
            let rest = Frame::new(OpCode::Continuation, Bytes::copy_from_slice(b));
            seed(
                format!("{name}-fragmented"),
                flags,
                &[],
                &write(vec![first, rest]),
            )?;
        }
    }

    let dir = corpus.join("handshake");
    fs::create_dir_all(&dir)?;
    let client = fixed_client();
    let mut request = Vec::new();
    http1::write_request(&client.request(), &mut request);
    fs::write(dir.join("request"), &request)?;
    let (parsed, _) = http1::parse_request(&request)
        .ok()
        .flatten()
        .expect("our own request parses");
    let mut server =
        ServerHandshake::from_request(&parsed).expect("our own request is a handshake");
    server.select_protocol(&["superchat"]);
    server.set_extensions(HeaderValue::from_static("permessage-deflate"));
    let mut response = Vec::new();
    http1::write_response(&server.response(), &mut response);
    fs::write(dir.join("response-101"), &response)?;
    fs::write(dir.join("browser-request"), BROWSER)?;
    fs::write(
        dir.join("response-426"),
        b"HTTP/1.1 426 Upgrade Required\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-version: 13\r\ncontent-length: 0\r\n\r\n",
    )?;
    // A response of exactly as many headers as a reader takes, and no length: written
    // back, it has one line more (the case that once failed the handshake target).
    let mut full = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..http1::MAX_HEADERS {
        full.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    full.extend_from_slice(b"\r\n");
    fs::write(dir.join("response-max-headers"), &full)?;

    let dir = corpus.join("inflate");
    fs::create_dir_all(&dir)?;
    let text = "κόσμε ".repeat(40);
    let messages: [&[u8]; 3] = [text.as_bytes(), b"", &[0u8; 200]];
    for (name, flags) in [
        ("compressed", COMPRESS | 6),
        ("compressed-small", COMPRESS | DEFLATE_SMALL | 1),
        ("compressed-tiny", COMPRESS | TINY | 9),
    ] {
        fs::write(dir.join(name), inflate_input(flags, &messages))?;
    }
    // Compressed bytes as they are on the wire, for the fuzzer to break: a stored block,
    // and a run of zeros deflated.
    let mut deflater = Deflater::new(&deflate_params(false), Role::Server, 9);
    let zeros = deflater.compress(&[0u8; 4000]).expect("zlib compresses");
    let stored = [0x01, 0x03, 0x00, 0xFC, 0xFF, b'a', b'b', b'c'];
    fs::write(dir.join("raw"), inflate_input(0, &[&stored, &zeros]))?;
    fs::write(dir.join("raw-tiny"), inflate_input(TINY, &[&zeros]))?;

    let dir = corpus.join("channels");
    fs::create_dir_all(&dir)?;
    for (name, message) in [
        ("join", &br#"["1","1","room:lobby","phx_join",{}]"#[..]),
        (
            "push",
            br#"["1","2","room:lobby","new_msg",{"body":"hi \u00e9","n":[1,2.5,null]}]"#,
        ),
        ("heartbeat", br#"[null,"3","phoenix","heartbeat",{}]"#),
        (
            "binary-push",
            b"\x00\x01\x01\x0a\x07\x31\x32room:lobbynew_msg\x01\x02\x03",
        ),
        ("binary-no-refs", b"\x00\x00\x00\x01\x01te"),
    ] {
        fs::write(dir.join(name), message)?;
    }
    println!("seeds written to {}", corpus.display());
    Ok(())
}

/// What Chromium sends.
const BROWSER: &[u8] = b"GET /chat?room=7 HTTP/1.1\r\n\
    Host: localhost:9001\r\n\
    Connection: Upgrade\r\n\
    Upgrade: websocket\r\n\
    Origin: http://localhost:9001\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    \r\n";

fn frame_seeds() -> Vec<(&'static str, Vec<Frame>)> {
    let continuation = |data: &'static [u8], fin: bool| {
        Frame::new(OpCode::Continuation, Bytes::from_static(data)).with_fin(fin)
    };
    vec![
        ("hello", vec![Frame::text("Hello")]),
        (
            "fragments",
            vec![
                Frame::new(OpCode::Text, Bytes::from_static(&[b'a', 0xF0, 0x9F])).with_fin(false),
                Frame::ping("p"),
                continuation(&[0x98, 0x80, b'b'], false),
                Frame::pong(""),
                continuation("κόσμε".as_bytes(), true),
            ],
        ),
        (
            "binary-16",
            vec![
                Frame::binary(vec![7u8; 300]),
                Frame::close(CloseCode::NORMAL, "bye"),
            ],
        ),
        (
            "controls",
            vec![
                Frame::ping(vec![1u8; 125]),
                Frame::close_with(None),
                Frame::close(CloseCode(4000), "app"),
            ],
        ),
        (
            "bad-utf8",
            vec![Frame::new(
                OpCode::Text,
                Bytes::from_static(&[b'o', 0xC3, b'k']),
            )],
        ),
        (
            "bad-close",
            vec![Frame::new(OpCode::Close, Bytes::from_static(&[0x03, 0xED]))],
        ),
    ]
}

//! Echoes every text and binary message, on any path. The server that the conformance
//! suite (Autobahn) and the benchmarks run against.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:9001 [--threads N]
//!     [--deflate dedicated|shared] [--window-bits 9..15] [--level 0..9] [--threshold BYTES]
//! ```
//!
//! `--deflate` negotiates permessage-deflate with clients that offer it (see
//! `switchboard::Compression`); the other three tune it.

use std::{error::Error, net::SocketAddr};
use switchboard::{
    Compression, Message,
    upgrade::{AcceptConfig, accept_with},
    ws::WebSocketConfig,
};
use tokio::net::{TcpListener, TcpStream};

/// Autobahn's largest cases send 16 MiB messages; allow four times that.
const MAX_MESSAGE_SIZE: usize = 64 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:9001".parse()?;
    let mut threads = 1;
    let mut deflate = None;
    let (mut window_bits, mut level, mut threshold) = (15, 6, 0);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            ("--threads", Some(value)) => threads = value.parse()?,
            ("--deflate", Some(mode)) if mode == "dedicated" || mode == "shared" => {
                deflate = Some(mode);
            }
            ("--window-bits", Some(value)) => window_bits = value.parse()?,
            ("--level", Some(value)) => level = value.parse()?,
            ("--threshold", Some(value)) => threshold = value.parse()?,
            _ => {
                return Err(format!(
                    "usage: echo [--addr HOST:PORT] [--threads N] [--deflate dedicated|shared] \
                     [--window-bits N] [--level N] [--threshold BYTES] (got {arg})"
                )
                .into());
            }
        }
    }
    let compression = match deflate.as_deref() {
        Some("dedicated") => Compression::Dedicated {
            window_bits,
            level,
            threshold,
        },
        Some(_) => Compression::Shared { level, threshold },
        None => Compression::Disabled,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(addr, compression))
}

async fn serve(addr: SocketAddr, compression: Compression) -> Result<(), Box<dyn Error>> {
    let listener = TcpListener::bind(addr).await?;
    println!("echo server listening on ws://{}", listener.local_addr()?);
    let config = AcceptConfig::default().websocket(
        WebSocketConfig::default()
            .max_frame_size(MAX_MESSAGE_SIZE)
            .max_message_size(MAX_MESSAGE_SIZE)
            .compression(compression),
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let config = config.clone();
        tokio::spawn(async move { echo(stream, &config).await });
    }
}

async fn echo(stream: TcpStream, config: &AcceptConfig) {
    let _ = stream.set_nodelay(true);
    let Ok((mut ws, _request)) = accept_with(stream, config).await else {
        return;
    };
    while let Some(Ok(message)) = ws.recv().await {
        if let Message::Text(_) | Message::Binary(_) = message {
            if ws.send(message).await.is_err() {
                return;
            }
        }
    }
}

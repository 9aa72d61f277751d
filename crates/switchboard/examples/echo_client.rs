//! Sends text and binary messages of the given sizes to an echo server and checks that
//! each comes back unchanged: the client side of the interop tests.
//!
//! ```text
//! cargo run --release --example echo_client -- ws://127.0.0.1:9001/ \
//!     [--deflate dedicated|shared|off] [--sizes 0,1,125,65536,16777216]
//! # wss:// (feature `tls`), trusting the CA certificates of a PEM file only:
//! cargo run --release --features tls --example echo_client -- wss://localhost:9443/ --ca ca.pem
//! ```
//!
//! Prints the `Sec-WebSocket-Extensions` answer on its first line (empty when none), and
//! exits non-zero on the first message that does not come back as sent.

use std::error::Error;
use switchboard::{
    CloseCode, Compression, Message, WebSocketConfig,
    client::{ClientConfig, connect_with},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: echo_client URL [--deflate MODE] [--sizes N,..]")?;
    let mut compression = Compression::Dedicated {
        window_bits: 15,
        level: 6,
        threshold: 0,
    };
    let mut sizes = vec![0, 1, 125, 126, 65_535, 65_536, 1 << 20, 16 << 20];
    let mut ca = None;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--deflate", Some(mode)) => {
                compression = match mode.as_str() {
                    "dedicated" => compression,
                    "shared" => Compression::Shared {
                        level: 6,
                        threshold: 0,
                    },
                    "off" => Compression::Disabled,
                    _ => return Err(format!("unknown mode {mode}").into()),
                }
            }
            ("--sizes", Some(list)) => {
                sizes = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            ("--ca", Some(path)) => ca = Some(path),
            _ => return Err(format!("unexpected argument {arg}").into()),
        }
    }
    let config = ClientConfig::default().websocket(
        WebSocketConfig::default()
            .max_frame_size(64 << 20)
            .max_message_size(64 << 20)
            .compression(compression),
    );
    let config = match ca {
        Some(path) => trust_only(config, &path)?,
        None => config,
    };
    let (mut ws, response) = connect_with(&url, &config).await?;
    let extensions = response
        .headers()
        .get("sec-websocket-extensions")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    println!("{extensions}");
    for len in sizes {
        let text: String = "ünïcödé, ascii; ".chars().cycle().take(len).collect();
        let text = text
            .get(..len)
            .map(str::to_owned)
            .unwrap_or_else(|| "x".repeat(len));
        let binary: Vec<u8> = (0..len).map(|i| (i % 13) as u8).collect();
        for message in [Message::text(text), Message::binary(binary)] {
            ws.send(message.clone()).await?;
            match ws.recv().await {
                Some(Ok(echo)) if echo == message => {}
                other => {
                    return Err(format!(
                        "{len}-byte {:?} message came back as {:?}",
                        message.opcode(),
                        other.map(|r| r.map(|m| (m.opcode(), m.len())))
                    )
                    .into());
                }
            }
        }
        println!("{len} ok");
    }
    ws.close(CloseCode::NORMAL, "done").await?;
    Ok(())
}

#[cfg(feature = "tls")]
fn trust_only(config: ClientConfig, ca: &str) -> Result<ClientConfig, Box<dyn Error>> {
    use switchboard::tls::{Certificate, Roots};
    Ok(config.roots(Roots::Only(Certificate::from_pem_file(ca)?)))
}

#[cfg(not(feature = "tls"))]
fn trust_only(_: ClientConfig, _: &str) -> Result<ClientConfig, Box<dyn Error>> {
    Err("--ca needs the `tls` feature: cargo run --features tls --example echo_client".into())
}

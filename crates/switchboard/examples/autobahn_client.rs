//! The client that Autobahn|Testsuite's fuzzingserver tests: it asks the server how many
//! cases there are, runs each one by echoing every text and binary message until the
//! server closes, then asks the server to write its reports.
//!
//! ```text
//! AUTOBAHN_URL=ws://127.0.0.1:9002 AUTOBAHN_AGENT=switchboard \
//!     cargo run --release --example autobahn_client -- [--deflate dedicated|shared|off] \
//!     [--window-bits 9..15] [--level 0..9] [--threshold BYTES]
//! ```
//!
//! Run by `autobahn/client.sh`, which starts the fuzzingserver and compares the results
//! with `autobahn/expected-client.json`. permessage-deflate is offered by default
//! (`dedicated`, 32 KiB window), as cases 12 and 13 need.

use std::error::Error;
use switchboard::{
    Compression, Message, WebSocketConfig,
    client::{ClientConfig, connect_with},
};

/// The fuzzingserver's largest messages are 16 MiB; allow four times that.
const MAX_MESSAGE_SIZE: usize = 64 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let base = std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9002".into());
    let agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "switchboard".into());
    let mut mode = String::from("dedicated");
    let (mut window_bits, mut level, mut threshold) = (15, 6, 0);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--deflate", Some(value)) => mode = value,
            ("--window-bits", Some(value)) => window_bits = value.parse()?,
            ("--level", Some(value)) => level = value.parse()?,
            ("--threshold", Some(value)) => threshold = value.parse()?,
            _ => return Err(format!("unexpected argument {arg}").into()),
        }
    }
    let compression = match mode.as_str() {
        "dedicated" => Compression::Dedicated {
            window_bits,
            level,
            threshold,
        },
        "shared" => Compression::Shared { level, threshold },
        "off" => Compression::Disabled,
        other => return Err(format!("unknown --deflate mode {other}").into()),
    };
    let config = ClientConfig::default().websocket(
        WebSocketConfig::default()
            .max_frame_size(MAX_MESSAGE_SIZE)
            .max_message_size(MAX_MESSAGE_SIZE)
            .compression(compression),
    );

    let count = case_count(&base, &config).await?;
    println!("{count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(error) = run_case(&url, &config).await {
            // A case may end the connection on purpose; the report says whether we
            // behaved, not this error.
            println!("case {case}: {error}");
        }
    }
    let url = format!("{base}/updateReports?agent={agent}");
    let (mut ws, _) = connect_with(&url, &config).await?;
    while let Some(Ok(_)) = ws.recv().await {}
    println!("reports updated");
    Ok(())
}

async fn case_count(base: &str, config: &ClientConfig) -> Result<u32, Box<dyn Error>> {
    let (mut ws, _) = connect_with(&format!("{base}/getCaseCount"), config).await?;
    let mut count = None;
    while let Some(message) = ws.recv().await {
        match message {
            Ok(Message::Text(text)) => count = Some(text.parse()?),
            Ok(_) => {}
            // How the server ends this connection does not matter once it has answered.
            Err(error) if count.is_some() => println!("getCaseCount: {error}"),
            Err(error) => return Err(error.into()),
        }
    }
    count.ok_or_else(|| "no case count".into())
}

async fn run_case(url: &str, config: &ClientConfig) -> Result<(), Box<dyn Error>> {
    let (mut ws, _) = connect_with(url, config).await?;
    while let Some(message) = ws.recv().await {
        let message = message?;
        if message.is_data() {
            ws.send(message).await?;
        }
    }
    Ok(())
}

//! Measures the server's memory per connection in each compression mode: starts the
//! echo example, opens 1,000 connections that each send one message and read its echo
//! (so both directions have compressed once), and reports the growth of the server's
//! resident set size divided by the connection count.
//!
//! ```text
//! cargo build --release --examples -p switchboard
//! target/release/examples/deflate_memory target/release/examples/echo [CONNECTIONS]
//! ```
//!
//! The clients offer permessage-deflate as browsers do (`client_max_window_bits`, 32 KiB
//! windows); the message is 2 KiB of JSON-like text, above the default threshold.

use std::{error::Error, process::Stdio, time::Duration};
use switchboard::{
    Compression, Message, WebSocketConfig,
    client::{ClientConfig, connect_with},
};
use tokio::{net::TcpStream, process::Command, time::sleep};

/// (label, echo arguments)
const MODES: [(&str, &[&str]); 5] = [
    ("disabled", &[]),
    (
        "dedicated w15 l6",
        &[
            "--deflate",
            "dedicated",
            "--window-bits",
            "15",
            "--threshold",
            "1024",
        ],
    ),
    (
        "dedicated w12 l6 (default)",
        &[
            "--deflate",
            "dedicated",
            "--window-bits",
            "12",
            "--threshold",
            "1024",
        ],
    ),
    (
        "dedicated w9 l6",
        &[
            "--deflate",
            "dedicated",
            "--window-bits",
            "9",
            "--threshold",
            "1024",
        ],
    ),
    ("shared l6", &["--deflate", "shared", "--threshold", "1024"]),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let echo = args
        .next()
        .ok_or("usage: deflate_memory ECHO_BINARY [CONNECTIONS]")?;
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);
    let message: String = (0..)
        .map(|i| {
            format!(
                r#"{{"event":"msg","ref":{i},"body":"hello from user {}"}},"#,
                i % 37
            )
        })
        .take_while({
            let mut len = 0;
            move |s: &String| {
                len += s.len();
                len <= 2048
            }
        })
        .collect();
    println!("| mode | RSS before | RSS after {count} connections | per connection |");
    println!("|---|---|---|---|");
    for (port, (label, flags)) in (19_301..).zip(MODES) {
        let addr = format!("127.0.0.1:{port}");
        let mut server = Command::new(&echo)
            .args(["--addr", &addr])
            .args(flags)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = server.id().ok_or("echo exited")?;
        while TcpStream::connect(&addr).await.is_err() {
            sleep(Duration::from_millis(20)).await;
        }
        sleep(Duration::from_millis(200)).await;
        let before = rss_kib(pid)?;
        let config = ClientConfig::default().websocket(WebSocketConfig::default().compression(
            Compression::Dedicated {
                window_bits: 15,
                level: 6,
                threshold: 1024,
            },
        ));
        let mut open = Vec::with_capacity(count);
        for _ in 0..count {
            let (mut ws, _) = connect_with(&format!("ws://{addr}/"), &config).await?;
            ws.send(Message::text(message.clone())).await?;
            match ws.recv().await {
                Some(Ok(Message::Text(echo))) if echo == message.as_str() => {}
                other => return Err(format!("bad echo: {other:?}").into()),
            }
            open.push(ws);
        }
        sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid)?;
        let per = (after.saturating_sub(before) as f64) * 1024.0 / count as f64;
        println!(
            "| {label} | {before} KiB | {after} KiB | {:.1} KiB |",
            per / 1024.0
        );
        drop(open);
        server.kill().await?;
    }
    Ok(())
}

/// The resident set size of a process, from `/proc/PID/status` (Linux).
fn rss_kib(pid: u32) -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("no VmRSS value")?
        .parse()?)
}

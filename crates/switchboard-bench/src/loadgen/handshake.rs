//! Opening handshakes per second: `concurrency` clients each connect, send the upgrade
//! request, read the whole 101 response (checking `Sec-WebSocket-Accept`), reset the
//! connection, and start over.

use super::{Common, Meter, Opts, Output, Timing, net};
use mio::{Events, Interest, Poll, Token, net::TcpStream};
use std::io::{self, Read};

struct Client {
    stream: TcpStream,
    sent: usize,
    buf: Vec<u8>,
}

/// Failed connections tolerated (a reset under a burst of connects is the kernel's, not
/// the server's); past this the run fails.
const MAX_FAILURES: u64 = 100;

pub(super) fn run(common: &mut Common, opts: &Opts, timing: Timing) -> Result<Output, String> {
    let concurrency: usize = opts.get("concurrency", 32)?;
    let request = net::request(common.addr, "/echo");
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients: Vec<Client> = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        clients.push(start(&mut poll, common, i, &request)?);
    }
    let mut meter = Meter::start(common.server_pid, timing);
    let mut events = Events::with_capacity(1024);
    let mut failures = 0u64;
    let mut chunk = [0u8; 1024];
    while !meter.tick()? {
        if std::time::Instant::now() > common.deadline {
            return Err("deadline passed".into());
        }
        poll.poll(&mut events, Some(meter.timeout()))
            .map_err(|e| e.to_string())?;
        for event in &events {
            let i = event.token().0;
            let Some(client) = clients.get_mut(i) else {
                continue;
            };
            let outcome = progress(client, &request, &mut chunk);
            match outcome {
                Ok(false) => continue,
                Ok(true) => meter.count += 1,
                Err(e) => {
                    failures += 1;
                    if failures > MAX_FAILURES {
                        return Err(format!("{failures} handshakes failed, the last: {e}"));
                    }
                }
            }
            // Done or failed: reset this one (linger 0; closing the socket also removes
            // it from the poll) and start the next in its place.
            *client = start(&mut poll, common, i, &request)?;
        }
    }
    Ok(Output::Handshake {
        rounds: meter.into_rounds(),
    })
}

/// Connects client `i` and sends its request at once: on loopback the connection is
/// usually established by the time `connect` returns, and waiting for the writable
/// event would cost a poll round per handshake.
fn start(poll: &mut Poll, common: &mut Common, i: usize, request: &[u8]) -> Result<Client, String> {
    let mut stream = net::open(common.addr, common.sources.next()).map_err(|e| e.to_string())?;
    poll.registry()
        .register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| e.to_string())?;
    let mut client = Client {
        stream,
        sent: 0,
        buf: Vec::with_capacity(256),
    };
    // An error shows again at the socket's next event.
    let _ = net::write_rest(&mut client.stream, request, &mut client.sent);
    Ok(client)
}

/// Moves a handshake forward; `true` once the 101 is in.
fn progress(client: &mut Client, request: &[u8], chunk: &mut [u8]) -> Result<bool, String> {
    if !net::write_rest(&mut client.stream, request, &mut client.sent)
        .map_err(|e| format!("write: {e}"))?
    {
        return Ok(false);
    }
    loop {
        match client.stream.read(chunk) {
            Ok(0) => return Err("closed before the 101".into()),
            Ok(n) => client
                .buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::NotConnected =>
            {
                return Ok(false);
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        if let Some(head) = net::parse_response(&client.buf) {
            return head.map(|_| true);
        }
    }
}

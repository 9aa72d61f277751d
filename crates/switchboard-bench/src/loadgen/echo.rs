//! Echo, with uWebSockets' `load_test` semantics: each connection sends one pre-masked
//! binary frame, waits for exactly the echoed bytes, checks them, and sends again.

use super::{
    Common, Meter, Opts, Output, Timing,
    net::{self, Established, OP_BINARY},
};
use mio::{Events, Poll, net::TcpStream};
use std::io::{self, Read, Write};

struct Conn {
    stream: TcpStream,
    /// Bytes of the request frame written.
    written: usize,
    /// The reply so far.
    reply: Box<[u8]>,
    received: usize,
}

pub(super) fn run(common: &mut Common, opts: &Opts, timing: Timing) -> Result<Output, String> {
    let conns: usize = opts.required("conns")?;
    let size: usize = opts.required("size")?;
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let request = net::client_frame(OP_BINARY, &payload);
    let expected = net::server_frame(OP_BINARY, &payload);

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let established = net::connect_all(
        &mut poll,
        common.addr,
        "/echo",
        conns,
        &mut common.sources,
        common.deadline,
    )?;
    let mut conns: Vec<Conn> = Vec::with_capacity(established.len());
    for Established { stream, extra } in established {
        if !extra.is_empty() {
            return Err("server sent data before any request".into());
        }
        conns.push(Conn {
            stream,
            written: 0,
            reply: vec![0; expected.len()].into_boxed_slice(),
            received: 0,
        });
    }
    for conn in &mut conns {
        send(conn, &request)?;
    }

    let mut meter = Meter::start(common.server_pid, timing);
    let mut events = Events::with_capacity(1024);
    while !meter.tick()? {
        if std::time::Instant::now() > common.deadline {
            return Err("deadline passed".into());
        }
        poll.poll(&mut events, Some(meter.timeout()))
            .map_err(|e| e.to_string())?;
        for event in &events {
            let Some(conn) = conns.get_mut(event.token().0) else {
                continue;
            };
            if conn.written < request.len() {
                send(conn, &request)?;
                continue;
            }
            if receive(conn)? {
                if *conn.reply != *expected {
                    return Err("echo mismatch: the reply differs from the message".into());
                }
                meter.count += 1;
                conn.received = 0;
                conn.written = 0;
                send(conn, &request)?;
            }
        }
    }
    Ok(Output::Echo {
        rounds: meter.into_rounds(),
    })
}

/// Writes what remains of the request; stops when the socket is full.
fn send(conn: &mut Conn, request: &[u8]) -> Result<(), String> {
    while conn.written < request.len() {
        match conn
            .stream
            .write(request.get(conn.written..).unwrap_or_default())
        {
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

/// Reads toward the complete reply; `true` once it is complete. A short read means the
/// socket is drained, and edge-triggered readiness reports the next arrival, so no
/// extra `read` is spent to see `WouldBlock`.
fn receive(conn: &mut Conn) -> Result<bool, String> {
    while conn.received < conn.reply.len() {
        let want = conn.reply.len() - conn.received;
        let buf = conn.reply.get_mut(conn.received..).unwrap_or_default();
        match conn.stream.read(buf) {
            Ok(0) => return Err("server closed a connection".into()),
            Ok(n) => {
                conn.received += n;
                if n < want {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(conn.received == conn.reply.len())
}

//! Sockets, the opening handshake and frames, by hand: the generator uses no WebSocket
//! library, so that it shares no bug with a server it measures.

use mio::{Events, Interest, Poll, Token, net::TcpStream};
use socket2::{Domain, Socket, Type};
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

/// Binary data frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// The masking key of every frame the generator sends. Servers do not (and cannot) check
/// that keys are unpredictable, and a fixed key lets the echo frame be masked once
/// ("one pre-masked frame per connection", as uWebSockets' `load_test`); it is not zero,
/// so that every server really unmasks.
pub(crate) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The handshake key, and the accept value RFC 6455 §1.3 derives from it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Handshakes in flight at once while a scenario connects its clients: enough to keep
/// the server busy, few enough never to overflow its accept queue.
const CONNECT_CONCURRENCY: usize = 256;

/// Source addresses 127.0.0.2, 127.0.0.3, …: each has its own ~28,000 ephemeral ports, so
/// that tens of thousands of connections to one server port do not run out of them.
#[derive(Debug)]
pub(crate) struct Sources {
    count: u8,
    next: u8,
}

impl Sources {
    pub(crate) fn new(count: u8) -> Self {
        Self {
            count: count.clamp(1, 250),
            next: 0,
        }
    }

    pub(crate) fn next(&mut self) -> Ipv4Addr {
        let ip = Ipv4Addr::new(127, 0, 0, 2 + self.next);
        self.next = (self.next + 1) % self.count;
        ip
    }
}

/// Starts a non-blocking connection from `source` to `addr`. `SO_LINGER` 0 makes
/// closing send a reset: the generator leaves no `TIME_WAIT` behind, which would
/// otherwise hold ephemeral ports across thousands of handshakes.
pub(crate) fn open(addr: SocketAddr, source: Ipv4Addr) -> io::Result<TcpStream> {
    open_with(addr, source, None)
}

/// [`open`], with a fixed receive buffer: set before connecting, so that the window the
/// client advertises stays that small (a client that stops reading then holds only this
/// much in the kernel, and the rest piles up in the server).
pub(crate) fn open_with(
    addr: SocketAddr,
    source: Ipv4Addr,
    recv_buffer: Option<usize>,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// The upgrade request for `path` on `addr`.
pub(crate) fn request(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Checks a response head: `None` while incomplete, else the head's length or why it is
/// not a valid 101 for our key.
pub(crate) fn parse_response(buf: &[u8]) -> Option<Result<usize, String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = buf.get(..end).unwrap_or_default();
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Some(Err(format!(
            "handshake refused: {}",
            String::from_utf8_lossy(line)
        )));
    }
    if !head.windows(ACCEPT.len()).any(|w| w == ACCEPT) {
        return Some(Err("handshake: wrong Sec-WebSocket-Accept".into()));
    }
    Some(Ok(end))
}

/// A connection whose handshake is complete, registered with the scenario's poll under
/// its index.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    /// Bytes read past the 101 response: the start of the frame stream.
    pub(crate) extra: Vec<u8>,
}

/// Opens `n` WebSocket connections to `path`, registered with `poll` as tokens `0..n`,
/// each handshake complete, before `deadline`.
pub(crate) fn connect_all(
    poll: &mut Poll,
    addr: SocketAddr,
    path: &str,
    n: usize,
    sources: &mut Sources,
    deadline: Instant,
) -> Result<Vec<Established>, String> {
    connect_all_with(poll, addr, path, n, sources, deadline, None)
}

/// [`connect_all`], the first connection (token 0) with a fixed receive buffer of
/// `first_recv_buffer` bytes, if given.
pub(crate) fn connect_all_with(
    poll: &mut Poll,
    addr: SocketAddr,
    path: &str,
    n: usize,
    sources: &mut Sources,
    deadline: Instant,
    first_recv_buffer: Option<usize>,
) -> Result<Vec<Established>, String> {
    struct Pending {
        stream: TcpStream,
        sent: usize,
        buf: Vec<u8>,
    }
    let request = request(addr, path);
    let mut pending: Vec<Option<Pending>> = Vec::with_capacity(n);
    let mut done: Vec<Option<Established>> = Vec::with_capacity(n);
    let (mut in_flight, mut complete) = (0, 0);
    let mut events = Events::with_capacity(1024);
    while complete < n {
        while in_flight < CONNECT_CONCURRENCY && pending.len() < n {
            let token = Token(pending.len());
            let recv_buffer = first_recv_buffer.filter(|_| token.0 == 0);
            let mut stream = open_with(addr, sources.next(), recv_buffer)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            poll.registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| e.to_string())?;
            pending.push(Some(Pending {
                stream,
                sent: 0,
                buf: Vec::with_capacity(256),
            }));
            done.push(None);
            in_flight += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("handshakes timed out: {complete} of {n} complete"));
        }
        poll.poll(
            &mut events,
            Some((deadline - now).min(Duration::from_millis(100))),
        )
        .map_err(|e| e.to_string())?;
        for event in &events {
            let i = event.token().0;
            let Some(Some(conn)) = pending.get_mut(i) else {
                continue;
            };
            // Write the request once the connection is up (the first writable event).
            if !write_rest(&mut conn.stream, &request, &mut conn.sent)
                .map_err(|e| format!("handshake write: {e}"))?
            {
                continue;
            }
            let mut chunk = [0u8; 1024];
            let head = loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => return Err("server closed the connection in the handshake".into()),
                    Ok(k) => conn
                        .buf
                        .extend_from_slice(chunk.get(..k).unwrap_or_default()),
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::NotConnected =>
                    {
                        break None;
                    }
                    Err(e) => return Err(format!("handshake read: {e}")),
                }
                if let Some(head) = parse_response(&conn.buf) {
                    break Some(head?);
                }
            };
            if let Some(end) = head {
                if let Some(conn) = pending.get_mut(i).and_then(Option::take) {
                    let extra = conn.buf.get(end..).unwrap_or_default().to_vec();
                    if let Some(slot) = done.get_mut(i) {
                        *slot = Some(Established {
                            stream: conn.stream,
                            extra,
                        });
                    }
                    in_flight -= 1;
                    complete += 1;
                }
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// A frame as a client sends it: masked with [`MASK`].
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    push_client_frame(&mut frame, opcode, payload);
    frame
}

/// [`client_frame`], appended to `dst`.
pub(crate) fn push_client_frame(dst: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_head(dst, opcode, payload.len(), true);
    dst.extend_from_slice(&MASK);
    dst.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
}

/// A frame as a server sends it: unmasked, the length in its shortest form.
pub(crate) fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    push_head(&mut frame, opcode, payload.len(), false);
    frame.extend_from_slice(payload);
    frame
}

fn push_head(frame: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    let mask_bit = if masked { 0x80 } else { 0 };
    frame.push(0x80 | opcode);
    if len < 126 {
        frame.push(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(mask_bit | 126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(mask_bit | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// How much of each payload [`FrameReader`] keeps: all of a control frame, the head of a
/// data frame (where the broadcast scenarios put the sequence number and timestamp).
pub(crate) const KEEP: usize = 125;

/// Splits a server's byte stream into frames, across reads of any size.
#[derive(Debug)]
pub(crate) struct FrameReader {
    head: [u8; 10],
    head_len: usize,
    /// Payload bytes of the current frame still to come; `None` while in a header.
    remaining: Option<u64>,
    opcode: u8,
    kept: [u8; KEEP],
    kept_len: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            head: [0; 10],
            head_len: 0,
            remaining: None,
            opcode: 0,
            kept: [0; KEEP],
            kept_len: 0,
        }
    }
}

impl FrameReader {
    /// Consumes `data`; calls `on_frame(opcode, first bytes of the payload)` for each
    /// frame completed.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(u8, &[u8]),
    ) -> Result<(), String> {
        while !data.is_empty() || self.remaining == Some(0) {
            match self.remaining {
                None => {
                    // Two bytes tell how long the header is; then read the rest of it.
                    let want = if self.head_len < 2 {
                        2
                    } else {
                        header_len(self.head[1])
                    };
                    let take = (want - self.head_len).min(data.len());
                    let (bytes, rest) = data.split_at(take);
                    if let Some(dst) = self.head.get_mut(self.head_len..self.head_len + take) {
                        dst.copy_from_slice(bytes);
                    }
                    self.head_len += take;
                    data = rest;
                    if self.head_len < 2 || self.head_len < header_len(self.head[1]) {
                        continue;
                    }
                    if self.head[0] & 0x80 == 0 {
                        return Err("fragmented frame from the server".into());
                    }
                    if self.head[1] & 0x80 != 0 {
                        return Err("masked frame from the server".into());
                    }
                    let len = match self.head[1] & 0x7f {
                        126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                        127 => u64::from_be_bytes(
                            self.head
                                .get(2..10)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or_default(),
                        ),
                        short => u64::from(short),
                    };
                    self.opcode = self.head[0] & 0x0f;
                    self.remaining = Some(len);
                    self.kept_len = 0;
                    self.head_len = 0;
                }
                Some(0) => {
                    on_frame(
                        self.opcode,
                        self.kept.get(..self.kept_len).unwrap_or_default(),
                    );
                    self.remaining = None;
                }
                Some(remaining) => {
                    let take = remaining.min(data.len() as u64) as usize;
                    let (bytes, rest) = data.split_at(take);
                    let keep = take.min(KEEP - self.kept_len);
                    if let (Some(dst), Some(src)) = (
                        self.kept.get_mut(self.kept_len..self.kept_len + keep),
                        bytes.get(..keep),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    self.kept_len += keep;
                    self.remaining = Some(remaining - take as u64);
                    data = rest;
                }
            }
        }
        Ok(())
    }
}

/// The length of a server frame's header, from its second byte.
fn header_len(second: u8) -> usize {
    match second & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Writes a small control frame (a pong) at once, retrying briefly if the socket is
/// momentarily full; control frames are rare enough not to need a queue.
pub(crate) fn write_control(stream: &mut TcpStream, frame: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    let start = Instant::now();
    while sent < frame.len() {
        match stream.write(frame.get(sent..).unwrap_or_default()) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(1) {
                    return Err(e);
                }
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes what is left of `bytes` past `sent`, as far as the socket takes it; `true`
/// once all of it is written. A connection still being established (`NotConnected`)
/// takes nothing yet.
pub(crate) fn write_rest(
    stream: &mut TcpStream,
    bytes: &[u8],
    sent: &mut usize,
) -> io::Result<bool> {
    while *sent < bytes.len() {
        match stream.write(bytes.get(*sent..).unwrap_or_default()) {
            Ok(n) => *sent += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::NotConnected =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(reader: &mut FrameReader, bytes: &[u8], step: usize) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            reader
                .feed(chunk, |op, kept| out.push((op, kept.to_vec())))
                .unwrap();
        }
        out
    }

    #[test]
    fn reader_splits_frames_across_any_reads() {
        let mut stream = server_frame(OP_BINARY, b"hello");
        stream.extend(server_frame(OP_PING, b""));
        stream.extend(server_frame(OP_BINARY, &[7u8; 300]));
        stream.extend(server_frame(OP_BINARY, &vec![1u8; 70_000]));
        for step in [1, 2, 3, 7, 64, 1 << 20] {
            let got = frames(&mut FrameReader::default(), &stream, step);
            assert_eq!(got.len(), 4, "step {step}");
            assert_eq!(got[0], (OP_BINARY, b"hello".to_vec()));
            assert_eq!(got[1], (OP_PING, vec![]));
            assert_eq!(got[2], (OP_BINARY, vec![7u8; KEEP]));
            assert_eq!(got[3], (OP_BINARY, vec![1u8; KEEP]));
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let frame = client_frame(OP_BINARY, b"abc");
        assert_eq!(frame[0], 0x82);
        assert_eq!(frame[1], 0x80 | 3);
        assert_eq!(&frame[2..6], &MASK);
        let unmasked: Vec<u8> = frame[6..].iter().zip(MASK).map(|(b, m)| b ^ m).collect();
        assert_eq!(unmasked, b"abc");
        assert_eq!(client_frame(OP_BINARY, &[0; 1024])[1], 0x80 | 126);
    }

    #[test]
    fn response_is_checked() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nxx";
        assert_eq!(parse_response(ok), Some(Ok(ok.len() - 2)));
        assert_eq!(parse_response(b"HTTP/1.1 101 Swi"), None);
        assert!(matches!(
            parse_response(b"HTTP/1.1 400 Bad\r\n\r\n"),
            Some(Err(_))
        ));
    }
}

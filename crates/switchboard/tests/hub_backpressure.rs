//! Backpressure over real TCP: a client that stops reading while its room receives a
//! steady stream must cost the server no more than `max_buffered_bytes`, must not slow
//! the clients that read, and must meet the configured policy (drop and count, or close
//! with 1008). Control frames are never dropped.

mod common;

use bytes::Bytes;
use common::{
    hub::{Client, HubServer, connect, raw_handshake, serve_ws_route},
    within,
};
use futures_util::StreamExt;
use std::{net::SocketAddr, time::Duration};
use switchboard::{
    CloseCode, Message,
    hub::{
        BroadcastReport, BufferPolicy, Connection, ConnectionId, Handler, Hub, HubConfig, SendError,
    },
};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// The outbound limit of every connection in these tests.
const LIMIT: usize = 64 << 10;
/// The size of each message of the stream.
const MESSAGE: usize = 8 << 10;
/// How far (in messages) a reading client may lag behind the sender. With the limit
/// above, a reader that keeps up this well never reaches it.
const WINDOW: usize = 3;
/// Drops to see before the stream ends: the stalled connection is watched while it
/// stays at its limit. (The kernel's socket buffers may still take a little now and
/// then, so drops need not be consecutive.)
const DROPS: usize = 50;
/// A bound on the stream, in case the stalled client's socket buffers never fill.
const MAX_MESSAGES: usize = 20_000;

#[derive(Debug)]
enum Event {
    Open(Connection),
    Close(ConnectionId, CloseCode, String),
}

struct Recorder(UnboundedSender<Event>);

impl Handler for Recorder {
    async fn on_open(&self, conn: &Connection) {
        conn.join("room");
        let _ = self.0.send(Event::Open(conn.clone()));
    }

    async fn on_close(&self, conn: &Connection, code: CloseCode, reason: &str) {
        let _ = self
            .0
            .send(Event::Close(conn.id(), code, reason.to_owned()));
    }
}

type TestServer = HubServer<UnboundedReceiver<Event>>;

impl TestServer {
    async fn open(&mut self) -> Connection {
        match within("on_open", self.events.recv()).await.unwrap() {
            Event::Open(conn) => conn,
            other => panic!("expected on_open, got {other:?}"),
        }
    }

    async fn close(&mut self, id: ConnectionId) -> (CloseCode, String) {
        loop {
            match within("on_close", self.events.recv()).await.unwrap() {
                Event::Close(closed, code, reason) if closed == id => return (code, reason),
                _ => {}
            }
        }
    }
}

async fn start(policy: BufferPolicy) -> TestServer {
    let config = HubConfig::default()
        .max_buffered_bytes(LIMIT)
        .buffer_policy(policy)
        .close_timeout(Duration::from_millis(300));
    serve_ws_route(config, Recorder).await
}

/// A client that completes the handshake and then never reads, with a small receive
/// buffer so that the server's writes back up soon.
async fn stalled_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    raw_handshake(&mut tcp, "/ws").await;
    tcp
}

/// Reads binary messages numbered by their first 8 bytes; each must be the next one.
/// Acknowledges every number on `acks`; returns how many arrived before the server
/// closed.
fn reader(
    mut client: Client,
    index: usize,
    acks: UnboundedSender<(usize, u64)>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut expected = 0u64;
        while let Some(message) = within("reader", client.next()).await {
            match message.unwrap() {
                TMessage::Binary(data) => {
                    assert_eq!(data.len(), MESSAGE);
                    let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
                    assert_eq!(seq, expected, "reader {index}: lost or reordered");
                    expected += 1;
                    let _ = acks.send((index, seq));
                }
                TMessage::Close(_) => {}
                other => panic!("reader {index}: {other:?}"),
            }
        }
        expected
    })
}

/// A server with one stalled client and some reading ones, all in the room.
struct Crowd {
    server: TestServer,
    /// The stalled client's socket: kept open, never read.
    _stalled_tcp: TcpStream,
    /// The server's side of the stalled client.
    stalled: Connection,
    /// The [`reader`]s, numbered from 0.
    readers: Vec<JoinHandle<u64>>,
    /// What the readers acknowledge.
    acks: UnboundedReceiver<(usize, u64)>,
}

/// Starts a server with `policy`, then connects the stalled client, then `count` reading
/// ones.
async fn crowd(policy: BufferPolicy, count: usize) -> Crowd {
    let mut server = start(policy).await;
    let _stalled_tcp = stalled_client(server.addr).await;
    let stalled = server.open().await;
    let (acks_tx, acks) = unbounded_channel();
    let mut readers = Vec::new();
    for index in 0..count {
        let client = connect(server.addr, "/ws").await;
        readers.push(reader(client, index, acks_tx.clone()));
        server.open().await;
    }
    Crowd {
        server,
        _stalled_tcp,
        stalled,
        readers,
        acks,
    }
}

fn numbered(seq: u64) -> Bytes {
    let mut data = vec![0; MESSAGE];
    data[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(data)
}

/// What a stream to the room did.
struct Stream {
    sent: u64,
    reports: Vec<BroadcastReport>,
}

/// Sends numbered messages to `room`, never more than [`WINDOW`] ahead of the slowest
/// reader, until `done` says so (checked after each send) or [`MAX_MESSAGES`].
async fn send_stream(
    hub: &Hub,
    readers: usize,
    acks: &mut UnboundedReceiver<(usize, u64)>,
    mut after_send: impl FnMut(u64, &BroadcastReport) -> bool,
) -> Stream {
    let mut acked = vec![None::<u64>; readers];
    let mut reports = Vec::new();
    for seq in 0..MAX_MESSAGES as u64 {
        let behind = |acked: &[Option<u64>]| {
            acked
                .iter()
                .any(|a| a.map_or(seq >= WINDOW as u64, |a| a + (WINDOW as u64) < seq))
        };
        while behind(&acked) {
            let (index, n) = within("reader ack", acks.recv()).await.unwrap();
            acked[index] = Some(n);
        }
        let report = hub.to("room").send_binary(numbered(seq));
        let done = after_send(seq, &report);
        reports.push(report);
        if done {
            return Stream {
                sent: seq + 1,
                reports,
            };
        }
    }
    panic!("the stalled client never backed up in {MAX_MESSAGES} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_bounds_a_stalled_client_and_spares_the_readers() {
    const READERS: usize = 2;
    let Crowd {
        server,
        _stalled_tcp,
        stalled,
        readers,
        mut acks,
    } = crowd(BufferPolicy::DropNewest, READERS).await;
    assert_eq!(server.hub.room_size("room"), READERS + 1);

    let mut drops = 0;
    let mut most_buffered = 0;
    let stream = send_stream(&server.hub, READERS, &mut acks, |_, report| {
        // Every member is counted once: the readers queued, the stalled one maybe not.
        assert_eq!(report.queued + report.dropped, READERS + 1, "{report:?}");
        assert_eq!(report.closed, 0);
        assert!(report.dropped <= 1, "a reader lost a message: {report:?}");
        let buffered = stalled.buffered_amount();
        most_buffered = most_buffered.max(buffered);
        assert!(
            buffered <= LIMIT + MESSAGE,
            "{buffered} bytes buffered for the stalled client"
        );
        drops += report.dropped;
        drops == DROPS
    })
    .await;

    let dropped: usize = stream.reports.iter().map(|r| r.dropped).sum();
    assert_eq!(dropped, DROPS);
    assert_eq!(stalled.dropped_messages(), dropped as u64);
    assert_eq!(stalled.refused_messages(), 0, "drops are not refusals");
    assert!(server.hub.metrics().dropped_messages >= dropped as u64);
    assert!(most_buffered > LIMIT / 2, "the limit was never approached");

    // The readers got every message, in order, while the stalled client was dropping.
    server.hub.shutdown(Duration::from_millis(300)).await;
    for reader in readers {
        assert_eq!(within("reader", reader).await.unwrap(), stream.sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_policy_closes_a_stalled_client_with_1008() {
    const READERS: usize = 2;
    let Crowd {
        mut server,
        _stalled_tcp,
        stalled,
        readers,
        mut acks,
    } = crowd(BufferPolicy::Close, READERS).await;

    let mut overflowed = None;
    let stream = send_stream(&server.hub, READERS, &mut acks, |seq, report| {
        assert!(report.dropped <= 1, "a reader lost a message: {report:?}");
        assert!(stalled.buffered_amount() <= LIMIT + MESSAGE);
        if report.dropped == 1 {
            assert!(
                overflowed.is_none(),
                "dropped twice for a closed connection"
            );
            overflowed = Some(seq);
        }
        // A few more messages after the overflow: the readers still get them.
        overflowed.is_some_and(|first| seq >= first + 20)
    })
    .await;
    let overflowed = overflowed.unwrap() as usize;
    // After the overflow the stalled connection is closing, then gone.
    for report in &stream.reports[overflowed + 1..] {
        assert_eq!(report.queued, READERS, "{report:?}");
        assert_eq!(report.dropped, 0);
    }
    let (code, reason) = server.close(stalled.id()).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::POLICY_VIOLATION, "slow consumer")
    );
    // The broadcasts that met it closing counted it on both sides.
    let closed: usize = stream.reports.iter().map(|r| r.closed).sum();
    assert_eq!(stalled.refused_messages(), closed as u64);
    assert_eq!(stalled.dropped_messages(), 1);
    assert!(server.hub.metrics().dropped_messages >= 1);
    assert!(server.hub.connection(stalled.id()).is_none());
    assert_eq!(server.hub.room_size("room"), READERS);

    server.hub.shutdown(Duration::from_millis(300)).await;
    for reader in readers {
        assert_eq!(within("reader", reader).await.unwrap(), stream.sent);
    }
}

#[tokio::test]
async fn control_frames_are_never_dropped() {
    let mut server = start(BufferPolicy::DropNewest).await;
    let _stalled_tcp = stalled_client(server.addr).await;
    let stalled = server.open().await;
    let mut sent = 0;
    while stalled.try_send(numbered(sent)).is_ok() {
        sent += 1;
        assert!(
            sent < MAX_MESSAGES as u64,
            "the stalled client never backed up"
        );
        // Let the connection's task write what it can, so that the kernel's buffers
        // fill before ours does.
        if sent % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The message refused is handed back, to be retried.
    let error = stalled.try_send(numbered(sent)).unwrap_err();
    assert!(matches!(error, SendError::Dropped(_)), "{error:?}");
    assert_eq!(error.into_message(), Message::Binary(numbered(sent)));
    let full = stalled.buffered_amount();
    assert!(full + MESSAGE > LIMIT, "{full}");

    stalled.send_ping(&b"still there?"[..]).unwrap();
    stalled.send_pong(&b"unsolicited"[..]).unwrap();
    assert!(
        stalled.buffered_amount() > full,
        "the control frames were not queued"
    );
    // Data still is not.
    assert_eq!(
        stalled.try_send(numbered(sent)),
        Err(SendError::Dropped(Message::Binary(numbered(sent))))
    );
    // The close frame is queued too; a client that never answers it is cut after
    // `close_timeout`, and the close is reported with our code.
    stalled.close(CloseCode(4000), "done").unwrap();
    assert_eq!(
        server.close(stalled.id()).await,
        (CloseCode(4000), "done".to_owned())
    );
}

/// A client that reads everything must never be dropped: bytes written to its socket
/// are no longer buffered.
#[tokio::test]
async fn a_reading_client_gets_credit_for_written_bytes() {
    let mut server = start(BufferPolicy::DropNewest).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.open().await;
    // Each message is more than half the limit: two in the buffer would not fit.
    let big = Bytes::from(vec![7; LIMIT * 5 / 8]);
    for n in 0..5 {
        assert_eq!(
            conn.try_send(big.clone()),
            Ok(()),
            "message {n} dropped with {} bytes counted as buffered",
            conn.buffered_amount()
        );
        match within("message", client.next()).await.unwrap().unwrap() {
            TMessage::Binary(data) => assert_eq!(data.len(), big.len()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(conn.dropped_messages(), 0);
}

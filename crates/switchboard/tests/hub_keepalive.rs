//! The hub's keepalive sweeper over real TCP: a client that answers pings stays
//! connected and its round trip is measured; one that never answers is closed with 1001
//! "pong timeout" within `ping_interval + pong_timeout` and a little slack.

mod common;

use common::{
    hub::{HubServer, connect, raw_connect, serve_ws_route},
    within,
};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use switchboard::{
    CloseCode, Message,
    hub::{Connection, ConnectionId, ConnectionState, Handler, HubConfig},
};
use tokio::{
    io::AsyncWriteExt,
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender},
        oneshot,
    },
};
use tokio_tungstenite::tungstenite::Message as TMessage;

const PING_INTERVAL: Duration = Duration::from_millis(100);
const PONG_TIMEOUT: Duration = Duration::from_millis(200);
/// Scheduling noise allowed on top of the configured times (the sweeper ticks every
/// quarter of the shorter one).
const SLACK: Duration = Duration::from_millis(700);

#[derive(Debug)]
enum Event {
    Open(Connection, Instant),
    Pong(ConnectionId),
    Close(ConnectionId, CloseCode, String, Instant),
}

struct Recorder(UnboundedSender<Event>);

impl Handler for Recorder {
    async fn on_open(&self, conn: &Connection) {
        let _ = self.0.send(Event::Open(conn.clone(), Instant::now()));
    }

    async fn on_pong(&self, conn: &Connection, _payload: &[u8]) {
        let _ = self.0.send(Event::Pong(conn.id()));
    }

    async fn on_close(&self, conn: &Connection, code: CloseCode, reason: &str) {
        let closed = Event::Close(conn.id(), code, reason.to_owned(), Instant::now());
        let _ = self.0.send(closed);
    }
}

type TestServer = HubServer<UnboundedReceiver<Event>>;

async fn start() -> TestServer {
    let config = HubConfig::default()
        .ping_interval(PING_INTERVAL)
        .pong_timeout(PONG_TIMEOUT)
        .close_timeout(Duration::from_millis(300));
    serve_ws_route(config, Recorder).await
}

impl TestServer {
    async fn open(&mut self) -> (Connection, Instant) {
        match within("on_open", self.events.recv()).await.unwrap() {
            Event::Open(conn, at) => (conn, at),
            other => panic!("expected on_open, got {other:?}"),
        }
    }

    /// Events that arrived so far, without waiting.
    fn arrived(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected_and_is_measured() {
    let mut server = start().await;
    let mut client = connect(server.addr, "/ws").await;
    let (conn, opened) = server.open().await;
    assert_eq!(conn.last_ping(), None);
    assert_eq!(conn.rtt(), None);

    // An idle client: it only reads, and tungstenite answers each ping as it reads.
    let (stop, mut stopped) = oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            tokio::select! {
                message = client.next() => match message {
                    Some(Ok(TMessage::Ping(_))) => pings += 1,
                    other => panic!("the idle client got {other:?}"),
                },
                _ = &mut stopped => return (client, pings),
            }
        }
    });
    // Staying connected over time is the behaviour under test: ten ping intervals.
    tokio::time::sleep(PING_INTERVAL * 12).await;
    stop.send(()).unwrap();
    let (mut client, pings) = within("client", client).await.unwrap();

    let events = server.arrived();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Close(..))),
        "closed: {events:?}"
    );
    assert_eq!(conn.state(), ConnectionState::Open);
    assert!(server.hub.connection(conn.id()).is_some());
    let pongs = events
        .iter()
        .filter(|e| matches!(e, Event::Pong(id) if *id == conn.id()))
        .count();
    assert!(pings >= 4, "only {pings} pings in 1.2 s");
    assert!(pongs >= 4, "only {pongs} pongs reached on_pong");

    let last_ping = conn.last_ping().expect("a ping was sent");
    let last_pong = conn.last_pong().expect("a pong arrived");
    let rtt = conn.rtt().expect("the round trip was measured");
    assert!(last_ping > opened && last_pong > opened);
    assert!(last_ping <= Instant::now() && last_pong <= Instant::now());
    assert!(rtt > Duration::ZERO && rtt < PONG_TIMEOUT, "rtt {rtt:?}");

    // Still usable.
    conn.send(Message::text("still here"));
    loop {
        match within("message", client.next()).await.unwrap().unwrap() {
            TMessage::Text(text) => break assert_eq!(text.as_str(), "still here"),
            TMessage::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_pong_timeout() {
    let mut server = start().await;
    let (mut tcp, mut reader) = raw_connect(server.addr, "/ws").await;
    let (conn, opened) = server.open().await;

    // The client reads (so nothing backs up) but never answers.
    let mut pings = 0;
    let close = loop {
        match reader.message(&mut tcp).await {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => break frame.expect("a close code"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(pings, 1, "one ping, then the timeout");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::GOING_AWAY, "pong timeout")
    );

    let (code, reason, closed) = loop {
        match within("on_close", server.events.recv()).await.unwrap() {
            Event::Close(id, code, reason, at) if id == conn.id() => break (code, reason, at),
            _ => {}
        }
    };
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::GOING_AWAY, "pong timeout")
    );
    let took = closed - opened;
    // `on_open` runs just after the hub starts the connection's idle clock.
    assert!(
        took + Duration::from_millis(10) >= PING_INTERVAL + PONG_TIMEOUT,
        "closed after {took:?}, before the deadline"
    );
    assert!(
        took <= PING_INTERVAL + PONG_TIMEOUT + SLACK,
        "closed after {took:?}"
    );
    assert!(conn.last_ping().is_some());
    assert_eq!(conn.last_pong(), None);
    assert_eq!(conn.rtt(), None);
    assert_eq!(conn.state(), ConnectionState::Closed);
    // The server then closes the socket.
    common::assert_eof(&mut tcp).await;
}

/// A client that sends data keeps its connection alive without being pinged.
#[tokio::test]
async fn a_busy_client_is_not_pinged() {
    let mut server = start().await;
    let (mut tcp, _reader) = raw_connect(server.addr, "/ws").await;
    let (conn, _) = server.open().await;
    let started = Instant::now();
    while started.elapsed() < PING_INTERVAL * 6 {
        // A masked, empty text frame every tenth of the ping interval.
        tcp.write_all(&[0x81, 0x80, 1, 2, 3, 4]).await.unwrap();
        tokio::time::sleep(PING_INTERVAL / 10).await;
    }
    assert_eq!(conn.last_ping(), None, "a busy connection was pinged");
    assert_eq!(conn.state(), ConnectionState::Open);
}

/// Opens slowly: longer than a ping interval and a pong timeout together.
struct SlowOpen(UnboundedSender<Event>);

impl Handler for SlowOpen {
    async fn on_open(&self, _conn: &Connection) {
        tokio::time::sleep(PING_INTERVAL + PONG_TIMEOUT + PING_INTERVAL).await;
    }

    async fn on_close(&self, conn: &Connection, code: CloseCode, reason: &str) {
        let closed = Event::Close(conn.id(), code, reason.to_owned(), Instant::now());
        let _ = self.0.send(closed);
    }
}

/// `on_open` runs before the 101 (open means ready): its time is the server's, not the
/// peer's silence, so a slow one does not end in a pong timeout.
#[tokio::test]
async fn a_slow_on_open_is_not_taken_for_a_silent_peer() {
    let config = HubConfig::default()
        .ping_interval(PING_INTERVAL)
        .pong_timeout(PONG_TIMEOUT);
    let mut server = serve_ws_route(config, SlowOpen).await;
    let mut client = connect(server.addr, "/ws").await;
    // The client answers pings as it reads; it reads for a few ping intervals.
    let read = tokio::time::timeout(PING_INTERVAL * 4, async {
        loop {
            match client.next().await {
                Some(Ok(TMessage::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(read.is_err(), "the connection ended: {read:?}");
    assert!(
        server.arrived().is_empty(),
        "closed: {:?}",
        server.arrived()
    );
}

/// Pings show that a client sends, not that it reads: one that pings without ever
/// reading is pinged like an idle one, and closed when it does not answer.
#[tokio::test]
async fn a_client_that_pings_without_reading_is_closed_with_pong_timeout() {
    let mut server = start().await;
    let (mut tcp, _reader) = raw_connect(server.addr, "/ws").await;
    let (conn, opened) = server.open().await;
    let deadline = opened + PING_INTERVAL + PONG_TIMEOUT + SLACK;
    let (code, reason) = loop {
        let closed = server.arrived().into_iter().find_map(|e| match e {
            Event::Close(id, code, reason, _) if id == conn.id() => Some((code, reason)),
            _ => None,
        });
        if let Some(closed) = closed {
            break closed;
        }
        assert!(Instant::now() < deadline, "still open, pinging");
        // A masked, empty ping every tenth of the ping interval (the write fails once
        // the server has closed).
        let _ = tcp.write_all(&[0x89, 0x80, 1, 2, 3, 4]).await;
        tokio::time::sleep(PING_INTERVAL / 10).await;
    };
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::GOING_AWAY, "pong timeout")
    );
}

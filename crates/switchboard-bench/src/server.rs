//! What every benchmark server shares, so that they differ only in the WebSocket
//! library: the command line, the runtime, the listening socket, the accept loop, and the
//! room of the peers' broadcast.
//!
//! Every server runs on a current-thread tokio runtime with every driver enabled (the
//! harness pins it to one core, where a multi-threaded runtime would only add
//! cross-thread wake-ups), on a listener with the same backlog, with `TCP_NODELAY` on
//! every accepted socket, and spawns one plain task per connection (no
//! `tokio::task::unconstrained`, which fastwebsockets' own examples use: the runtime's
//! cooperative budget applies to everyone alike).
//!
//! Behaviours, the same for every server:
//!
//! - `echo`: every text and binary message is sent back, on any path.
//! - `broadcast`: every connection is in one room; a text or binary message from one
//!   connection goes to every other connection of the room.

use std::{
    collections::HashMap,
    future::Future,
    io::{self, Write},
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};

/// Pending connections the listener queues: room for the harness's bursts of handshakes.
const BACKLOG: i32 = 4096;

/// What a benchmark server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sends every message back.
    Echo,
    /// Sends every message to every other connection.
    Broadcast,
}

/// The command line of a benchmark server: `--mode echo|broadcast --addr HOST:PORT`.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    /// The behaviour.
    pub mode: Mode,
    /// Where to listen.
    pub addr: SocketAddr,
}

impl Args {
    /// Parses the process's arguments.
    pub fn parse() -> Result<Self, String> {
        let mut mode = Mode::Echo;
        let mut addr: SocketAddr = ([127, 0, 0, 1], 9001).into();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match (arg.as_str(), args.next().as_deref()) {
                ("--mode", Some("echo")) => mode = Mode::Echo,
                ("--mode", Some("broadcast")) => mode = Mode::Broadcast,
                ("--addr", Some(value)) => {
                    addr = value.parse().map_err(|e| format!("--addr {value}: {e}"))?;
                }
                _ => {
                    return Err(format!(
                        "usage: --mode echo|broadcast --addr HOST:PORT (got {arg})"
                    ));
                }
            }
        }
        Ok(Self { mode, addr })
    }
}

/// Runs a benchmark server: parses the arguments, builds the runtime, binds the
/// listener, prints `ready` on stdout (what the harness waits for), and runs `serve`.
pub fn main<F, Fut>(serve: F) -> ExitCode
where
    F: FnOnce(TcpListener, Mode) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    crate::sys::raise_fd_limit();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            runtime.block_on(async {
                let listener = listen(args.addr)?;
                println!("ready {}", listener.local_addr()?);
                io::stdout().flush()?;
                serve(listener, args.mode).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("server failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A listener with `SO_REUSEADDR` and a deep backlog.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The next connection, with `TCP_NODELAY` set. Accept errors (out of file descriptors)
/// are transient: wait a little and go on.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The room of a peer's broadcast server: each connection's sender, by id, behind one
/// mutex — the shape of tokio-tungstenite's own chat example
/// (`Arc<Mutex<HashMap<SocketAddr, UnboundedSender<Message>>>>`), which is how users of
/// these libraries write a broadcast: a loop over the senders, each message cloned into
/// every connection's unbounded channel, and each connection's task encoding and
/// writing what its channel holds.
#[derive(Debug)]
pub struct Room<T> {
    members: Mutex<HashMap<u64, T>>,
    next: AtomicU64,
}

impl<T> Default for Room<T> {
    fn default() -> Self {
        Self {
            members: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }
}

impl<T> Room<T> {
    /// A new, empty room.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a member; returns its id.
    pub fn join(&self, sender: T) -> u64 {
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().insert(id, sender);
        id
    }

    /// Removes a member.
    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Calls `send` with every member's sender except `except`'s.
    pub fn for_each_except(&self, except: u64, mut send: impl FnMut(&T)) {
        for (id, sender) in self.lock().iter() {
            if *id != except {
                send(sender);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, T>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

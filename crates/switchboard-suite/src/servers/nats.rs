//! A `nats-server` with JetStream of the test's own: on a free port, storing in a
//! directory of its own, killed (and its directory removed) on drop.

use super::{
    free_port,
    process::{Process, TempDir},
};
use crate::support::within;
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

/// How long the monitoring port may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server -js` on a free port.
#[derive(Debug)]
pub struct NatsServer {
    /// Behind a lock, so that a shared server can be restarted (a blip); `None`
    /// while killed.
    process: Mutex<Option<Process>>,
    port: u16,
    /// Its HTTP monitoring port (`/connz` lists subscriptions).
    monitor: u16,
    /// Where JetStream stores; replaced by an empty one by [`NatsServer::restart_empty`].
    store: Mutex<TempDir>,
    /// Whether it runs JetStream (`-js`).
    jetstream: bool,
}

impl NatsServer {
    /// Starts a server and returns once it serves.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts a server without JetStream (JetStream's requests are answered by whoever
    /// subscribes to them, if anyone) and returns once it serves.
    pub async fn start_without_jetstream() -> Self {
        Self::start_with(false).await
    }

    /// A server on free ports; on other ports if it could not listen on those.
    async fn start_with(jetstream: bool) -> Self {
        let store = TempDir::new("nats");
        let (process, [port, monitor]) = Process::start_on_free_ports(
            "nats-server",
            || [free_port(), free_port()],
            |[port, monitor]| args(port, monitor, jetstream.then_some(&store)),
        )
        .await;
        let server = Self {
            process: Mutex::new(Some(process)),
            port,
            monitor,
            store: Mutex::new(store),
            jetstream,
        };
        server.until_healthy().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a server [`NatsServer::pause`] froze (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(process) = lock(&self.process).as_ref() {
            assert!(process.signal(signal), "kill -{signal} failed");
        }
    }

    /// Kills the server, as a crash would (its storage stays).
    pub fn kill(&self) {
        // Dropped: killed and reaped.
        lock(&self.process).take();
    }

    /// Starts it again on the same ports, with the storage it had; returns once it
    /// serves.
    pub async fn restart(&self) {
        self.kill();
        let args = args(
            self.port,
            self.monitor,
            self.jetstream.then_some(&*lock(&self.store)),
        );
        let started = Process::start("nats-server", &args, &[self.port, self.monitor]).await;
        let process = started.unwrap_or_else(|status| panic!("nats-server again: {status}"));
        *lock(&self.process) = Some(process);
        self.until_healthy().await;
    }

    /// Starts it again on the same ports with an empty storage (a server that lost its
    /// disk): every JetStream stream is gone.
    pub async fn restart_empty(&self) {
        self.kill();
        // The old one removed as it drops.
        *lock(&self.store) = TempDir::new("nats");
        self.restart().await;
    }

    /// How many subscriptions the server has on exactly `subject`, over all its
    /// connections (from its monitoring endpoint).
    pub async fn subscribers(&self, subject: &str) -> usize {
        let port = self.monitor;
        let body = tokio::task::spawn_blocking(move || http_get(port, "/connz?subs=1"))
            .await
            .expect("the monitoring request ran");
        let connz: serde_json::Value = serde_json::from_str(&body).expect("connz is JSON");
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|connection| {
                connection["subscriptions_list"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .filter(|listed| listed.as_str() == Some(subject))
            .count()
    }

    /// Returns once `subject` has `expected` subscriptions.
    pub async fn until_subscribers(&self, subject: &str, expected: usize) {
        within(&format!("{expected} subscriptions on {subject}"), async {
            while self.subscribers(subject).await != expected {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Returns once its health check (JetStream's included) says it serves: it
    /// listens before.
    async fn until_healthy(&self) {
        within("nats-server's health check", async {
            while !self.healthy().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn healthy(&self) -> bool {
        let port = self.monitor;
        let asked = tokio::task::spawn_blocking(move || try_http_get(port, "/healthz"));
        let answer = asked.await.expect("the health request ran");
        answer.is_some_and(|response| response.split(' ').nth(1) == Some("200"))
    }
}

/// The arguments of a `nats-server` on 127.0.0.1 at `port`, monitored at `monitor`,
/// with JetStream storing in `store` if given.
fn args(port: u16, monitor: u16, store: Option<&TempDir>) -> Vec<String> {
    let (port, monitor) = (port.to_string(), monitor.to_string());
    let mut args = ["-a", "127.0.0.1", "-p", &port, "-m", &monitor]
        .map(str::to_owned)
        .to_vec();
    if let Some(store) = store {
        args.extend([
            "-js".to_owned(),
            "-sd".to_owned(),
            store.path().to_string_lossy().into_owned(),
        ]);
    }
    args
}

/// The lock, even if a panicking test poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body of `GET path` on the local `port` (HTTP/1.0: the server closes when done).
fn http_get(port: u16, path: &str) -> String {
    let response = try_http_get(port, path).expect("the monitoring port answers");
    response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned())
}

/// The whole response (status line, headers, body) to `GET path`, if one came.
fn try_http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

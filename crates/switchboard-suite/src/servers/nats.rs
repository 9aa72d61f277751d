//! A `nats-server` with JetStream of the test's own: on a free port, storing in a
//! directory of its own, killed (and its directory removed) on drop.

use super::free_port;
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// How long a server may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server -js` on a free port.
#[derive(Debug)]
pub struct NatsServer {
    /// Behind locks, so that a shared server can be restarted (a blip).
    process: Mutex<Option<Child>>,
    port: u16,
    /// Its HTTP monitoring port (`/connz` lists subscriptions).
    monitor: u16,
    /// Where JetStream stores; replaced by an empty one by [`NatsServer::restart_empty`].
    store: Mutex<PathBuf>,
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

    /// A server on free ports; on other ports again if it could not serve on those
    /// (another process took one between the draw and the bind).
    async fn start_with(jetstream: bool) -> Self {
        for _ in 0..3 {
            let server = Self {
                process: Mutex::new(None),
                port: free_port(),
                monitor: free_port(),
                store: Mutex::new(new_store()),
                jetstream,
            };
            if server.launch().await {
                return server;
            }
        }
        panic!("nats-server did not start on three pairs of free ports");
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
            assert!(super::signal(process.id(), signal), "kill -{signal} failed");
        }
    }

    /// Kills the server, as a crash would (its storage stays).
    pub fn kill(&self) {
        if let Some(mut process) = lock(&self.process).take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts it again on the same port, with the storage it had; returns once it
    /// serves.
    pub async fn restart(&self) {
        self.kill();
        assert!(self.launch().await, "nats-server did not start again");
    }

    /// Starts it again on the same port with an empty storage (a server that lost its
    /// disk): every JetStream stream is gone.
    pub async fn restart_empty(&self) {
        self.kill();
        let old = std::mem::replace(&mut *lock(&self.store), new_store());
        let _ = std::fs::remove_dir_all(old);
        assert!(self.launch().await, "nats-server did not start again");
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

    /// Waits (at most 10 s) until `subject` has `expected` subscriptions.
    pub async fn until_subscribers(&self, subject: &str, expected: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let now = self.subscribers(subject).await;
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{subject}: {now} subscriptions, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process; whether it serves, within [`START_TIMEOUT`].
    async fn launch(&self) -> bool {
        let store = lock(&self.store).clone();
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(store);
        }
        let process = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is on the PATH");
        *lock(&self.process) = Some(process);
        let deadline = Instant::now() + START_TIMEOUT;
        // An open port is not yet a server that serves: its health check (JetStream's
        // included) says when it is, while the process is ours and alive (one that
        // could not bind its ports exits).
        while Instant::now() < deadline {
            if !self.running() {
                return false;
            }
            if self.healthy().await && self.running() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn running(&self) -> bool {
        let mut process = lock(&self.process);
        process
            .as_mut()
            .is_some_and(|process| matches!(process.try_wait(), Ok(None)))
    }

    async fn healthy(&self) -> bool {
        let port = self.monitor;
        let asked = tokio::task::spawn_blocking(move || try_http_get(port, "/healthz"));
        let answer = asked.await.expect("the health request ran");
        answer.is_some_and(|response| response.split(' ').nth(1) == Some("200"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&*lock(&self.store));
    }
}

/// The lock, even if a panicking test poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new, empty storage directory under the system's temporary one.
fn new_store() -> PathBuf {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let name = format!(
        "switchboard-nats-{}-{nanos}-{}",
        std::process::id(),
        MADE.fetch_add(1, Relaxed)
    );
    let store = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&store).expect("a storage directory");
    store
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
    stream.set_read_timeout(Some(START_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

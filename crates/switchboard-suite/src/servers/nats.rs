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
}

impl NatsServer {
    /// Starts a server and returns once it serves.
    pub async fn start() -> Self {
        let server = Self {
            process: Mutex::new(None),
            port: free_port(),
            monitor: free_port(),
            store: Mutex::new(new_store()),
        };
        server.launch().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
        self.launch().await;
    }

    /// Starts it again on the same port with an empty storage (a server that lost its
    /// disk): every JetStream stream is gone.
    pub async fn restart_empty(&self) {
        self.kill();
        let old = std::mem::replace(&mut *lock(&self.store), new_store());
        let _ = std::fs::remove_dir_all(old);
        self.launch().await;
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

    async fn launch(&self) {
        let store = lock(&self.store).clone();
        let process = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string(), "-js", "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is on the PATH");
        *lock(&self.process) = Some(process);
        let deadline = Instant::now() + START_TIMEOUT;
        // Serving once both ports answer (monitoring comes up last).
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err()
            || TcpStream::connect((Ipv4Addr::LOCALHOST, self.monitor)).is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("monitoring port");
    stream
        .set_read_timeout(Some(START_TIMEOUT))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned())
}

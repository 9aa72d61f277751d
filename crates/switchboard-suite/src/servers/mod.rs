//! Servers the tests start for themselves, on free ports, one kind per module; each
//! is stopped when dropped, even when the test panics.

pub mod nats;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod redis_tls;
pub mod sentinel;

/// A port free now on 127.0.0.1, for a server about to start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to the process `pid`; whether it was sent.
pub fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        // A process already gone is not news.
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

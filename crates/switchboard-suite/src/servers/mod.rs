//! Servers the tests start for themselves, on free ports, one kind per module; each
//! is stopped when dropped, even when the test panics.

pub mod nats;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod redis_tls;
pub mod sentinel;

/// The highest port [`free_port`] gives: a Redis Cluster node listens on its port
/// and on its bus port, 10000 above, which must be a port too.
const HIGHEST: u16 = u16::MAX - 10_000;

/// A port free now on 127.0.0.1, for a server about to start, at most 55535 so that
/// the port 10000 above it (Redis Cluster's bus port) exists too: the system's free
/// ports, skipping those too high. Another process may take it before the server
/// binds it: a launcher checks that what answers there is its own server.
pub fn free_port() -> u16 {
    // Linux draws from 32768-60999: about four in five fit.
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        if port <= HIGHEST {
            return port;
        }
    }
    panic!("no free port at or below {HIGHEST} on 127.0.0.1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_leave_room_for_a_cluster_bus_port() {
        // Without the bound, about one port in five of the system's range is higher.
        for _ in 0..200 {
            let port = free_port();
            assert!(port.checked_add(10_000).is_some(), "{port}");
        }
    }
}

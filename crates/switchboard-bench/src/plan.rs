//! What a run measures: the servers under test and, for each mode (`all`, `all --quick`,
//! `smoke`), the sizes, durations and passes of every scenario.
//!
//! Kept apart from running them so that what a mode measures reads in one place, and
//! the scenarios, the runner and the report all take it from here.

use serde::{Deserialize, Serialize};

/// A server implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Its name in the report.
    pub name: &'static str,
    /// Its binary.
    pub bin: &'static str,
    /// The crate it measures, for the versions table.
    pub krate: &'static str,
}

/// Ours first, then the peers.
pub const SERVERS: [Server; 4] = [
    Server {
        name: "switchboard",
        bin: "bench-switchboard",
        krate: "switchboard",
    },
    Server {
        name: "fastwebsockets",
        bin: "bench-fastwebsockets",
        krate: "fastwebsockets",
    },
    Server {
        name: "tokio-websockets",
        bin: "bench-tokio-websockets",
        krate: "tokio-websockets",
    },
    Server {
        name: "tokio-tungstenite",
        bin: "bench-tungstenite",
        krate: "tokio-tungstenite",
    },
];

/// Which of [`SERVERS`] is ours.
pub const OURS: &str = "switchboard";

/// How long and how big: `all`, `all --quick`, or `smoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every scenario at full size, several rounds (≤ 15 minutes).
    Full,
    /// Every scenario, fewer and shorter rounds (≤ 2 minutes).
    Quick,
    /// Tiny sizes, one short round: checks that the harness and every server work.
    Smoke,
}

/// The sizes and durations of one mode.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The mode.
    pub mode: Mode,
    /// Echo cases: (connections, payload bytes).
    pub echo: Vec<(usize, usize)>,
    /// Broadcast room sizes (subscribers).
    pub rooms: Vec<usize>,
    /// Broadcast payload sizes.
    pub broadcast_sizes: Vec<usize>,
    /// Messages in flight in the broadcast throughput rounds.
    pub window: u64,
    /// How long the one-in-flight latency phase lasts.
    pub latency_ms: u64,
    /// Fewest latency samples (the phase is extended, up to 4×, to get them).
    pub latency_samples: u64,
    /// Idle connection counts.
    pub idle: Vec<usize>,
    /// How long idle connections stay quiet before the reading.
    pub idle_settle_ms: u64,
    /// Concurrent clients in the handshake scenario.
    pub handshake_concurrency: usize,
    /// Slow consumer: room size, payload, messages per second, seconds.
    pub slow: (usize, usize, f64, f64),
    /// Warm-up, in milliseconds.
    pub warmup_ms: u64,
    /// Passes over the servers for each rate case (echo, broadcast, handshakes): the
    /// servers take turns, in alternating order, so that a change in the machine during
    /// the run (another tenant of the host, say) falls on every server alike.
    pub passes: usize,
    /// Measured rounds in each pass.
    pub rounds: usize,
    /// Length of a round, in milliseconds.
    pub round_ms: u64,
}

impl Plan {
    /// The plan of `mode`.
    pub fn new(mode: Mode) -> Self {
        let echo = vec![
            (100, 20),
            (10, 1024),
            (500, 1024),
            (10, 16 << 10),
            (200, 16 << 10),
            (500, 16 << 10),
        ];
        match mode {
            Mode::Full => Self {
                mode,
                echo,
                rooms: vec![100, 1_000, 10_000],
                broadcast_sizes: vec![32, 1024],
                window: 8,
                // Per pass: 1.5 s and 100 samples over the three.
                latency_ms: 500,
                latency_samples: 34,
                idle: vec![10_000, 50_000],
                idle_settle_ms: 1500,
                handshake_concurrency: 32,
                slow: (1_000, 4096, 40.0, 30.0),
                warmup_ms: 500,
                passes: 3,
                rounds: 2,
                round_ms: 1000,
            },
            Mode::Quick => Self {
                mode,
                echo,
                rooms: vec![100, 1_000, 10_000],
                broadcast_sizes: vec![32, 1024],
                window: 8,
                latency_ms: 200,
                latency_samples: 10,
                idle: vec![10_000],
                idle_settle_ms: 700,
                handshake_concurrency: 32,
                slow: (1_000, 4096, 40.0, 4.0),
                warmup_ms: 150,
                passes: 2,
                rounds: 1,
                round_ms: 250,
            },
            Mode::Smoke => Self {
                mode,
                echo: vec![(2, 20), (2, 16 << 10)],
                rooms: vec![10],
                broadcast_sizes: vec![32],
                window: 4,
                latency_ms: 50,
                latency_samples: 5,
                idle: vec![50],
                idle_settle_ms: 100,
                handshake_concurrency: 4,
                slow: (20, 1024, 100.0, 0.5),
                warmup_ms: 50,
                passes: 1,
                rounds: 1,
                round_ms: 100,
            },
        }
    }

    /// The servers in the order of each pass: as given, then reversed, and so on, so
    /// that no server always runs first or last.
    pub fn turns<'a>(&self, servers: &'a [Server]) -> Vec<&'a Server> {
        let mut order = Vec::with_capacity(self.passes * servers.len());
        for pass in 0..self.passes {
            if pass % 2 == 0 {
                order.extend(servers);
            } else {
                order.extend(servers.iter().rev());
            }
        }
        order
    }

    /// The generator's warm-up and round arguments.
    pub fn timing_args(&self) -> Vec<String> {
        args(&[
            ("warmup-ms", self.warmup_ms.to_string()),
            ("rounds", self.rounds.to_string()),
            ("round-ms", self.round_ms.to_string()),
        ])
    }
}

/// Command-line arguments of the generator: `--key value` for each pair.
pub fn args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_alternate_the_order_of_the_servers() {
        let mut plan = Plan::new(Mode::Full);
        plan.passes = 3;
        let names: Vec<&str> = plan.turns(&SERVERS[..3]).iter().map(|s| s.name).collect();
        let [a, b, c] = [SERVERS[0].name, SERVERS[1].name, SERVERS[2].name];
        assert_eq!(names, [a, b, c, c, b, a, a, b, c]);
    }
}

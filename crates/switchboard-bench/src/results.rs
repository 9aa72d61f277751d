//! What a run measured, row by row: filled in by the scenarios, saved as
//! `benchmarks.json`, read back by the report and the charts.
//!
//! The one set of types both sides share, so that the side that measures and the side
//! that presents never import each other.

use crate::{
    loadgen::{Latency, Round},
    plan::Mode,
    stats::Summary,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One echo case for one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoRow {
    /// Server name.
    pub server: String,
    /// Connections.
    pub conns: usize,
    /// Payload bytes.
    pub size: usize,
    /// Measured rounds (count = echoed messages).
    pub rounds: Vec<Round>,
}

/// One broadcast case for one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastRow {
    /// Server name.
    pub server: String,
    /// Subscribers.
    pub room: usize,
    /// Payload bytes.
    pub size: usize,
    /// Messages in flight during the rounds.
    pub window: u64,
    /// Measured rounds (count = deliveries).
    pub rounds: Vec<Round>,
    /// Publish to last receiver, one message in flight.
    pub latency: Latency,
    /// Publish to last receiver, `window` messages in flight.
    pub loaded_latency: Latency,
}

/// Idle memory of one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRow {
    /// Server name.
    pub server: String,
    /// `echo` or `broadcast`: which behaviour the server ran.
    pub behaviour: String,
    /// Idle connections.
    pub conns: usize,
    /// RSS before, bytes.
    pub rss_before: u64,
    /// RSS after, bytes.
    pub rss_after: u64,
}

impl IdleRow {
    /// Bytes of resident memory per connection.
    pub fn per_conn(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.conns as f64
    }
}

/// Handshakes per second of one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeRow {
    /// Server name.
    pub server: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Measured rounds (count = handshakes).
    pub rounds: Vec<Round>,
}

/// The slow consumer scenario for one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowRow {
    /// Server name.
    pub server: String,
    /// Receivers in the room (one of them stalled).
    pub room: usize,
    /// Payload bytes.
    pub size: usize,
    /// Messages published per second.
    pub rate: f64,
    /// Publish to last healthy receiver.
    pub latency: Latency,
    /// Server RSS samples (seconds, bytes).
    pub rss: Vec<(f64, u64)>,
    /// Messages published.
    pub published: u64,
    /// Messages that never reached every healthy receiver.
    pub incomplete: u64,
    /// The whole run.
    pub round: Round,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The mode.
    pub mode: Mode,
    /// CPU, cores, kernel.
    pub machine: String,
    /// Seconds since the Unix epoch at the start.
    pub started: u64,
    /// Wall time of the whole run.
    pub duration_secs: f64,
    /// 1-minute load average before the run.
    pub load_before: f64,
    /// 1-minute load average after the run.
    pub load_after: f64,
    /// Share of the CPUs busy in the second before the first scenario (after the build).
    #[serde(default)]
    pub busy_before: f64,
    /// CPU seconds the hypervisor gave to others during the run (every CPU).
    #[serde(default)]
    pub steal_secs: f64,
    /// The CPUs' time during the run, in seconds (CPUs × duration).
    #[serde(default)]
    pub cpu_secs: f64,
    /// Whether server and generator were pinned to cores 0 and 1.
    pub pinned: bool,
    /// The open-files hard limit (bounds the idle scenario).
    pub fd_limit: u64,
    /// Crate versions measured.
    pub versions: Vec<(String, String)>,
    /// The commit the library was built from, and whether its sources had uncommitted
    /// changes.
    #[serde(default)]
    pub revision: String,
    /// Echo rows.
    pub echo: Vec<EchoRow>,
    /// Broadcast rows.
    pub broadcast: Vec<BroadcastRow>,
    /// Idle rows.
    pub idle: Vec<IdleRow>,
    /// Idle sizes not run, and why.
    pub idle_skipped: Vec<(usize, String)>,
    /// Handshake rows.
    pub handshake: Vec<HandshakeRow>,
    /// Slow consumer rows.
    pub slow: Vec<SlowRow>,
    /// Runs that failed: what and why.
    pub failures: Vec<String>,
}

/// The median rate of `rounds`.
pub fn median_rate(rounds: &[Round]) -> f64 {
    Summary::of(rounds.iter().map(Round::rate)).median
}

/// Rows grouped by a key, in first-seen order of keys.
pub fn group<T, K: Ord + Clone>(rows: &[T], key: impl Fn(&T) -> K) -> Vec<(K, Vec<&T>)> {
    let mut order: Vec<K> = Vec::new();
    let mut map: BTreeMap<K, Vec<&T>> = BTreeMap::new();
    for row in rows {
        let k = key(row);
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.entry(k).or_default().push(row);
    }
    order
        .into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k, v)))
        .collect()
}

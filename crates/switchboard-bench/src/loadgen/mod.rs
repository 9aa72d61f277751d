//! The load generator (`bench-loadgen`): one thread, one `mio` event loop, raw
//! non-blocking sockets, frames built and parsed by hand.
//!
//! ```text
//! bench-loadgen echo      --addr A --server-pid P --conns N --size B [timing]
//! bench-loadgen broadcast --addr A --server-pid P --subs N --sizes B,B --window W [timing]
//!                         [--latency-ms MS]
//! bench-loadgen slow      --addr A --server-pid P --subs N --size B --rate R --secs S
//! bench-loadgen idle      --addr A --server-pid P --conns N
//! bench-loadgen handshake --addr A --server-pid P --concurrency C [timing]
//! timing: --warmup-ms MS --rounds R --round-ms MS; every command: --sources K
//!         --deadline-secs S
//! ```
//!
//! It prints one JSON [`Output`] on stdout. With each measured round it records the
//! server's CPU time (from `/proc/<pid>`) and its own: a round in which the generator was
//! on CPU nearly all the time may have measured the generator, and the harness marks it.

mod broadcast;
mod echo;
mod handshake;
mod idle;
mod net;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    net::SocketAddr,
    process::ExitCode,
    str::FromStr,
    time::{Duration, Instant},
};

/// A measured interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Round {
    /// Its length, in seconds.
    pub secs: f64,
    /// What was counted in it: echoed messages, deliveries, handshakes.
    pub count: u64,
    /// CPU seconds the server used in it.
    pub server_cpu: f64,
    /// CPU seconds the generator used in it.
    pub generator_cpu: f64,
}

impl Round {
    /// Counted per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }

    /// Counted per second of server CPU.
    pub fn per_server_cpu(&self) -> f64 {
        if self.server_cpu > 0.0 {
            self.count as f64 / self.server_cpu
        } else {
            f64::NAN
        }
    }

    /// The generator's share of one CPU.
    pub fn generator_load(&self) -> f64 {
        self.generator_cpu / self.secs
    }

    /// The server's share of one CPU.
    pub fn server_load(&self) -> f64 {
        self.server_cpu / self.secs
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Messages measured.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The largest.
    pub max_us: f64,
    /// The distribution itself, `(microseconds, count)`, so that the passes of one case
    /// merge into one distribution rather than an average of percentiles.
    #[serde(default)]
    pub recorded: Vec<(u64, u64)>,
}

impl Latency {
    fn from_histogram(histogram: &Histogram<u64>) -> Self {
        Self {
            samples: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50) as f64,
            p99_us: histogram.value_at_quantile(0.99) as f64,
            p999_us: histogram.value_at_quantile(0.999) as f64,
            max_us: histogram.max() as f64,
            recorded: histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    /// One distribution of the samples of `self` and `other`.
    pub fn merge(&self, other: &Self) -> Self {
        let Ok(mut histogram) = new_histogram() else {
            return self.clone();
        };
        for &(value, count) in self.recorded.iter().chain(&other.recorded) {
            let _ = histogram.record_n(value, count);
        }
        Self::from_histogram(&histogram)
    }
}

/// A latency histogram from 1 µs to 100 s, three significant digits.
fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 100_000_000, 3).map_err(|e| e.to_string())
}

/// What a generator run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Output {
    /// Echoed messages per round.
    Echo {
        /// The measured rounds.
        rounds: Vec<Round>,
    },
    /// Broadcast deliveries per round, and fan-out latency, for each payload size (one
    /// room, connected once).
    Broadcast {
        /// One entry per payload size.
        cases: Vec<BroadcastCase>,
    },
    /// A room with one client that stopped reading.
    Slow {
        /// Publish to the last healthy receiver.
        latency: Latency,
        /// Server RSS in bytes, sampled every second: `(seconds since start, bytes)`.
        rss: Vec<(f64, u64)>,
        /// Messages published.
        published: u64,
        /// Messages that did not reach every healthy receiver in time.
        incomplete: u64,
        /// The whole run, as one round (count = deliveries to healthy receivers).
        round: Round,
    },
    /// Server memory before and after opening idle connections.
    Idle {
        /// Connections opened between the two readings.
        conns: usize,
        /// Server RSS before, in bytes.
        rss_before: u64,
        /// Server RSS after, in bytes.
        rss_after: u64,
    },
    /// Completed opening handshakes per round.
    Handshake {
        /// The measured rounds.
        rounds: Vec<Round>,
    },
}

/// The broadcast measurements for one payload size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastCase {
    /// Payload bytes.
    pub size: usize,
    /// Deliveries (messages received by subscribers) per round, with `window` messages in
    /// flight.
    pub rounds: Vec<Round>,
    /// Publish to last receiver with one message in flight: the time a fan-out takes.
    pub latency: Latency,
    /// Publish to last receiver during the rounds (with `window` in flight).
    pub loaded_latency: Latency,
}

/// `--key value` options.
#[derive(Debug, Default)]
pub(crate) struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut map = HashMap::new();
        let mut args = args.peekable();
        while let Some(key) = args.next() {
            let key = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {key}"))?
                .to_owned();
            let value = args
                .next()
                .ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key, value);
        }
        Ok(Self(map))
    }

    pub(crate) fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.0.get(key) {
            Some(v) => v.parse().map_err(|_| format!("--{key}: cannot parse {v}")),
            None => Ok(default),
        }
    }

    pub(crate) fn required<T: FromStr>(&self, key: &str) -> Result<T, String> {
        let v = self
            .0
            .get(key)
            .ok_or_else(|| format!("--{key} is required"))?;
        v.parse().map_err(|_| format!("--{key}: cannot parse {v}"))
    }
}

/// What every scenario needs.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) addr: SocketAddr,
    pub(crate) server_pid: u32,
    pub(crate) sources: net::Sources,
    /// The run fails rather than go past this.
    pub(crate) deadline: Instant,
}

impl Common {
    fn from(opts: &Opts) -> Result<Self, String> {
        Ok(Self {
            addr: opts.required("addr")?,
            server_pid: opts.required("server-pid")?,
            sources: net::Sources::new(opts.get("sources", 8)?),
            deadline: Instant::now() + Duration::from_secs(opts.get("deadline-secs", 120)?),
        })
    }
}

/// Warm-up and rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) rounds: usize,
    pub(crate) round: Duration,
}

impl Timing {
    fn from(opts: &Opts) -> Result<Self, String> {
        Ok(Self {
            warmup: Duration::from_millis(opts.get("warmup-ms", 500)?),
            rounds: opts.get("rounds", 3)?,
            round: Duration::from_millis(opts.get("round-ms", 1000)?),
        })
    }
}

/// Counts events and cuts them into rounds, reading the server's and its own CPU time at
/// each boundary.
#[derive(Debug)]
pub(crate) struct Meter {
    server_pid: u32,
    boundaries: Vec<Instant>,
    next: usize,
    /// Events so far (the scenario increments it).
    pub(crate) count: u64,
    last: Option<(Instant, u64, Duration, Duration)>,
    rounds: Vec<Round>,
    last_progress: (Instant, u64),
}

/// How long without a single event before a run is declared stuck.
const STALL: Duration = Duration::from_secs(5);

impl Meter {
    pub(crate) fn start(server_pid: u32, timing: Timing) -> Self {
        let start = Instant::now();
        let boundaries = (0..=timing.rounds)
            .map(|i| start + timing.warmup + timing.round * i as u32)
            .collect();
        Self {
            server_pid,
            boundaries,
            next: 0,
            count: 0,
            last: None,
            rounds: Vec::new(),
            last_progress: (start, 0),
        }
    }

    /// How long the event loop may sleep before the next boundary.
    pub(crate) fn timeout(&self) -> Duration {
        self.boundaries
            .get(self.next)
            .map_or(Duration::ZERO, |b| {
                b.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100))
    }

    /// Records the boundaries that have passed; `true` once every round is measured.
    pub(crate) fn tick(&mut self) -> Result<bool, String> {
        let now = Instant::now();
        if self.count != self.last_progress.1 {
            self.last_progress = (now, self.count);
        } else if now - self.last_progress.0 > STALL {
            return Err(format!("stalled: nothing completed for {STALL:?}"));
        }
        while let Some(&boundary) = self.boundaries.get(self.next) {
            if now < boundary {
                break;
            }
            let server = crate::sys::cpu_time(self.server_pid)
                .map_err(|e| format!("server process {}: {e}", self.server_pid))?;
            let own = crate::sys::own_cpu_time().unwrap_or_default();
            if let Some((at, count, server_before, own_before)) = self.last {
                self.rounds.push(Round {
                    secs: (now - at).as_secs_f64(),
                    count: self.count - count,
                    server_cpu: (server - server_before).as_secs_f64(),
                    generator_cpu: (own - own_before).as_secs_f64(),
                });
            }
            self.last = Some((now, self.count, server, own));
            self.next += 1;
        }
        Ok(self.next >= self.boundaries.len())
    }

    /// Whether the warm-up is over.
    pub(crate) fn measuring(&self) -> bool {
        self.next > 0
    }

    pub(crate) fn into_rounds(self) -> Vec<Round> {
        self.rounds
    }
}

/// The generator's entry point.
pub fn main() -> ExitCode {
    crate::sys::raise_fd_limit();
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let result = Opts::parse(args).and_then(|opts| run(&command, &opts));
    match result {
        Ok(output) => match serde_json::to_string(&output) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-loadgen: {e}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("bench-loadgen {command}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &str, opts: &Opts) -> Result<Output, String> {
    let mut common = Common::from(opts)?;
    match command {
        "echo" => echo::run(&mut common, opts, Timing::from(opts)?),
        "broadcast" => broadcast::run(&mut common, opts, Timing::from(opts)?),
        "slow" => broadcast::run_slow(&mut common, opts),
        "idle" => idle::run(&mut common, opts),
        "handshake" => handshake::run(&mut common, opts, Timing::from(opts)?),
        _ => Err(format!(
            "unknown command {command:?}: echo, broadcast, slow, idle or handshake"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency_of(values: impl IntoIterator<Item = u64>) -> Latency {
        let mut histogram = new_histogram().unwrap();
        for value in values {
            histogram.record(value).unwrap();
        }
        Latency::from_histogram(&histogram)
    }

    #[test]
    fn merged_passes_are_one_distribution() {
        // 99 fast samples in one pass, one slow in the other: the merged p99 is fast,
        // where an average of the two passes' p99 would be half the slow one.
        let fast = latency_of([100; 99]);
        let slow = latency_of([50_000]);
        let merged = fast.merge(&slow);
        assert_eq!(merged.samples, 100);
        assert_eq!(merged.p50_us, 100.0);
        assert_eq!(merged.p99_us, 100.0);
        assert!(
            (49_990.0..=50_050.0).contains(&merged.max_us),
            "{}",
            merged.max_us
        );
        assert_eq!(merged.merge(&Latency::default()).samples, 100);
    }
}

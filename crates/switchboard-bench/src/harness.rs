//! The harness (`switchboard-bench`): builds the servers and the generator, runs every
//! scenario for every server — the server pinned to core 0, the generator to core 1 —
//! and writes the report.
//!
//! ```text
//! switchboard-bench all [--quick] [--out DIR] [--servers a,b] [--no-build]
//! switchboard-bench smoke                       # seconds; checks the harness, not speed
//! switchboard-bench echo|broadcast|idle|handshake|slow [--quick] [...]   # one scenario
//! switchboard-bench report [--out DIR]          # re-render the last run's saved results
//! ```

use crate::{
    loadgen::{Latency, Output, Round},
    report,
};
use serde::{Deserialize, Serialize};
use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

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
    fn turns<'a>(&self, servers: &'a [Server]) -> Vec<&'a Server> {
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

    fn timing_args(&self) -> Vec<String> {
        args(&[
            ("warmup-ms", self.warmup_ms.to_string()),
            ("rounds", self.rounds.to_string()),
            ("round-ms", self.round_ms.to_string()),
        ])
    }
}

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

/// The harness's command line.
#[derive(Debug)]
struct Cli {
    command: String,
    mode: Mode,
    out: Option<PathBuf>,
    servers: Vec<Server>,
    build: bool,
}

fn parse_cli() -> Result<Cli, String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "all".to_owned());
    let mut cli = Cli {
        mode: if command == "smoke" {
            Mode::Smoke
        } else {
            Mode::Full
        },
        command,
        out: None,
        servers: SERVERS.to_vec(),
        build: true,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => cli.mode = Mode::Quick,
            "--no-build" => cli.build = false,
            "--out" => cli.out = Some(args.next().ok_or("--out needs a directory")?.into()),
            "--servers" => {
                let names = args.next().ok_or("--servers needs a list")?;
                cli.servers = names
                    .split(',')
                    .map(|n| {
                        SERVERS
                            .iter()
                            .find(|s| s.name == n)
                            .copied()
                            .ok_or_else(|| format!("unknown server {n}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(cli)
}

const USAGE: &str = "usage: switchboard-bench all [--quick] | smoke | \
echo|broadcast|idle|handshake|slow [--quick] | report  [--out DIR] [--servers a,b] [--no-build]";

/// The harness's entry point.
pub fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cli.command == "report" {
        return rerender(&cli);
    }
    let scenarios: &[&str] = match cli.command.as_str() {
        "all" | "smoke" => &["echo", "broadcast", "idle", "handshake", "slow"],
        "echo" => &["echo"],
        "broadcast" => &["broadcast"],
        "idle" => &["idle"],
        "handshake" => &["handshake"],
        "slow" => &["slow"],
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&cli, scenarios) {
        Ok(results) if results.failures.is_empty() => ExitCode::SUCCESS,
        Ok(results) => {
            eprintln!("{} run(s) failed:", results.failures.len());
            for failure in &results.failures {
                eprintln!("  {failure}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the report again from `target/switchboard-bench/benchmarks.json`, the raw
/// results the last `all` saved (e.g. after a change to the report's layout).
fn rerender(cli: &Cli) -> ExitCode {
    let result = workspace_root().and_then(|root| {
        let json = root.join("target/switchboard-bench/benchmarks.json");
        let results = report::read(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        let out = cli.out.clone().unwrap_or_else(|| root.join("docs"));
        report::write(&results, &out).map_err(|e| format!("{}: {e}", out.display()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-bench report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, scenarios: &[&str]) -> Result<Results, String> {
    let root = workspace_root()?;
    let bins = if cli.build {
        build(&root)?
    } else {
        release_dir()?
    };
    crate::sys::raise_fd_limit();
    let plan = Plan::new(cli.mode);
    let pinned =
        which("taskset") && std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2;
    let load_before = crate::sys::load_average();
    let busy_before = if cli.mode == Mode::Smoke {
        f64::NAN
    } else {
        crate::sys::busy_share(Duration::from_secs(1))
    };
    if busy_before > crate::report::BUSY_LIMIT {
        eprintln!(
            "note: the CPUs were {:.0}% busy before the run: other work is running, numbers will be noisy",
            busy_before * 100.0
        );
    }
    let start = Instant::now();
    let steal_before = crate::sys::steal_time();
    let mut runner = Runner {
        bins,
        pinned,
        next_port: 0,
    };
    let mut results = Results {
        mode: cli.mode,
        machine: crate::sys::machine(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_secs: 0.0,
        load_before,
        load_after: f64::NAN,
        busy_before,
        steal_secs: 0.0,
        cpu_secs: 0.0,
        pinned,
        fd_limit: crate::sys::fd_hard_limit(),
        versions: versions(&root, &cli.servers),
        revision: revision(&root),
        echo: Vec::new(),
        broadcast: Vec::new(),
        idle: Vec::new(),
        idle_skipped: Vec::new(),
        handshake: Vec::new(),
        slow: Vec::new(),
        failures: Vec::new(),
    };
    for scenario in scenarios {
        let began = Instant::now();
        match *scenario {
            "echo" => echo(&mut runner, &plan, &cli.servers, &mut results),
            "broadcast" => broadcast(&mut runner, &plan, &cli.servers, &mut results),
            "idle" => idle(&mut runner, &plan, &cli.servers, &mut results),
            "handshake" => handshake(&mut runner, &plan, &cli.servers, &mut results),
            "slow" => slow(&mut runner, &plan, &cli.servers, &mut results),
            _ => {}
        }
        eprintln!("  ({scenario}: {:.0} s)", began.elapsed().as_secs_f64());
    }
    results.duration_secs = start.elapsed().as_secs_f64();
    results.load_after = crate::sys::load_average();
    results.steal_secs = (crate::sys::steal_time() - steal_before).as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    results.cpu_secs = cpus as f64 * results.duration_secs;

    let out = match (&cli.out, cli.mode) {
        (Some(out), _) => out.clone(),
        (None, Mode::Smoke) => root.join("target/switchboard-bench/smoke"),
        (None, _) if scenarios.len() > 1 => root.join("docs"),
        (None, _) => root.join("target/switchboard-bench").join(scenarios[0]),
    };
    report::write(&results, &out).map_err(|e| format!("writing {}: {e}", out.display()))?;
    eprintln!(
        "done in {:.0} s; report in {}",
        results.duration_secs,
        out.join("benchmarks.md").display()
    );
    Ok(results)
}

/// Starts servers and generators, each on its core.
#[derive(Debug)]
struct Runner {
    bins: PathBuf,
    pinned: bool,
    next_port: u16,
}

/// A running benchmark server; killed when dropped.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    fn command(&self, core: u8, bin: &str) -> Command {
        let path = self.bins.join(bin);
        if self.pinned {
            // taskset execs the program: the child's pid is the program's.
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn port(&mut self) -> u16 {
        // A fresh port for every server: no run meets the previous one's sockets.
        loop {
            let port = 21_000 + self.next_port % 8_000;
            self.next_port = self.next_port.wrapping_add(1);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    fn server(&mut self, server: &Server, behaviour: &str) -> Result<ServerProcess, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port()));
        let mut child = self
            .command(0, server.bin)
            .args(["--mode", behaviour, "--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", server.bin))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let process = ServerProcess { child, pid, addr };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.starts_with("ready") => Ok(process),
            Ok(line) => Err(format!("{} did not start: {line:?}", server.bin)),
            Err(_) => Err(format!("{} did not start within 10 s", server.bin)),
        }
    }

    /// Runs the generator against `server` and parses its output; kills it at `timeout`.
    fn load(
        &self,
        server: &ServerProcess,
        command: &str,
        extra: Vec<String>,
        timeout: Duration,
    ) -> Result<Output, String> {
        let mut child = self
            .command(1, "bench-loadgen")
            .arg(command)
            .args(["--addr", &server.addr.to_string()])
            .args(["--server-pid", &server.pid.to_string()])
            .args(["--deadline-secs", &timeout.as_secs().to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting bench-loadgen: {e}"))?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // The generator stops itself at its deadline; this is the backstop.
        let kill_at = Instant::now() + timeout + Duration::from_secs(5);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > kill_at {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        match status {
            None => Err(format!("generator killed after {timeout:?}")),
            Some(status) if !status.success() => Err(stderr.trim().to_owned()),
            Some(_) => serde_json::from_str(stdout.trim())
                .map_err(|e| format!("generator output {stdout:?}: {e}")),
        }
    }

    /// Starts `server` with `behaviour`, runs the generator, stops the server.
    fn measure(
        &mut self,
        server: &Server,
        behaviour: &str,
        command: &str,
        extra: Vec<String>,
        timeout: Duration,
    ) -> Result<Output, String> {
        let process = self.server(server, behaviour)?;
        let output = self.load(&process, command, extra, timeout);
        // A server that died during the run explains a failure better than the generator.
        let mut process = process;
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!("{} exited during the run: {status}", server.bin));
        }
        output
    }
}

fn args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

fn progress(text: &str) {
    eprintln!("  {text}");
}

fn timing_budget(plan: &Plan) -> Duration {
    Duration::from_millis(plan.warmup_ms + plan.round_ms * plan.rounds as u64)
        + Duration::from_secs(30)
}

fn echo(runner: &mut Runner, plan: &Plan, servers: &[Server], results: &mut Results) {
    eprintln!("echo");
    for &(conns, size) in &plan.echo {
        for server in plan.turns(servers) {
            let mut extra = args(&[("conns", conns.to_string()), ("size", size.to_string())]);
            extra.extend(plan.timing_args());
            let label = format!("echo {conns}×{size} B, {}", server.name);
            match runner.measure(server, "echo", "echo", extra, timing_budget(plan)) {
                Ok(Output::Echo { rounds }) => {
                    progress(&format!("{label}: {:.0} msg/s", median_rate(&rounds)));
                    let row = EchoRow {
                        server: server.name.to_owned(),
                        conns,
                        size,
                        rounds,
                    };
                    add_pass(
                        &mut results.echo,
                        row,
                        |a, b| (&a.server, a.conns, a.size) == (&b.server, b.conns, b.size),
                        |kept, pass| kept.rounds.extend(pass.rounds),
                    );
                }
                Ok(other) => results
                    .failures
                    .push(format!("{label}: unexpected {other:?}")),
                Err(e) => fail(results, &label, e),
            }
        }
    }
}

fn broadcast(runner: &mut Runner, plan: &Plan, servers: &[Server], results: &mut Results) {
    eprintln!("broadcast");
    for &room in &plan.rooms {
        for server in plan.turns(servers) {
            let sizes: Vec<String> = plan.broadcast_sizes.iter().map(|s| s.to_string()).collect();
            let mut extra = args(&[
                ("subs", room.to_string()),
                ("sizes", sizes.join(",")),
                ("window", plan.window.to_string()),
                ("latency-ms", plan.latency_ms.to_string()),
                ("latency-samples", plan.latency_samples.to_string()),
                ("sources", (room / 2_000 + 2).min(200).to_string()),
            ]);
            extra.extend(plan.timing_args());
            let label = format!("broadcast to {room}, {}", server.name);
            let budget = (timing_budget(plan) + Duration::from_millis(plan.latency_ms * 4))
                * plan.broadcast_sizes.len() as u32;
            match runner.measure(server, "broadcast", "broadcast", extra, budget) {
                Ok(Output::Broadcast { cases }) => {
                    for case in cases {
                        progress(&format!(
                            "{label}, {} B: {:.0} deliveries/s, p99 {:.0} µs",
                            case.size,
                            median_rate(&case.rounds),
                            case.latency.p99_us
                        ));
                        let row = BroadcastRow {
                            server: server.name.to_owned(),
                            room,
                            size: case.size,
                            window: plan.window,
                            rounds: case.rounds,
                            latency: case.latency,
                            loaded_latency: case.loaded_latency,
                        };
                        add_pass(
                            &mut results.broadcast,
                            row,
                            |a, b| (&a.server, a.room, a.size) == (&b.server, b.room, b.size),
                            |kept, pass| {
                                kept.rounds.extend(pass.rounds);
                                kept.latency = kept.latency.merge(&pass.latency);
                                kept.loaded_latency =
                                    kept.loaded_latency.merge(&pass.loaded_latency);
                            },
                        );
                    }
                }
                Ok(other) => results
                    .failures
                    .push(format!("{label}: unexpected {other:?}")),
                Err(e) => fail(results, &label, e),
            }
        }
    }
    // Rows by case, then server, as the report groups them.
    results.broadcast.sort_by_key(|row| {
        (
            row.room,
            row.size,
            SERVERS.iter().position(|s| s.name == row.server),
        )
    });
}

fn idle(runner: &mut Runner, plan: &Plan, servers: &[Server], results: &mut Results) {
    eprintln!("idle");
    let limit = crate::sys::fd_hard_limit();
    for &conns in &plan.idle {
        // The server holds every connection (and the warm-up ones) in one process.
        let needed = conns as u64 + 500;
        if needed > limit {
            let why = format!(
                "needs {needed} open files in one process; the hard limit here is {limit} \
                 (raising it needs CAP_SYS_RESOURCE)"
            );
            eprintln!("  idle {conns}: skipped: {why}");
            results.idle_skipped.push((conns, why));
            continue;
        }
        for behaviour in ["echo", "broadcast"] {
            for server in servers {
                let extra = args(&[
                    ("conns", conns.to_string()),
                    (
                        "path",
                        if behaviour == "echo" {
                            "/echo"
                        } else {
                            "/room"
                        }
                        .to_owned(),
                    ),
                    ("settle-ms", plan.idle_settle_ms.to_string()),
                    ("sources", (conns / 10_000 + 2).min(200).to_string()),
                ]);
                let label = format!("idle {conns} ({behaviour}), {}", server.name);
                match runner.measure(server, behaviour, "idle", extra, Duration::from_secs(120)) {
                    Ok(Output::Idle {
                        conns,
                        rss_before,
                        rss_after,
                    }) => {
                        let row = IdleRow {
                            server: server.name.to_owned(),
                            behaviour: behaviour.to_owned(),
                            conns,
                            rss_before,
                            rss_after,
                        };
                        progress(&format!("{label}: {:.0} B/conn", row.per_conn()));
                        results.idle.push(row);
                    }
                    Ok(other) => results
                        .failures
                        .push(format!("{label}: unexpected {other:?}")),
                    Err(e) => fail(results, &label, e),
                }
            }
        }
    }
}

fn handshake(runner: &mut Runner, plan: &Plan, servers: &[Server], results: &mut Results) {
    eprintln!("handshake");
    for server in plan.turns(servers) {
        let mut extra = args(&[
            ("concurrency", plan.handshake_concurrency.to_string()),
            ("sources", "16".to_owned()),
        ]);
        extra.extend(plan.timing_args());
        let label = format!("handshake, {}", server.name);
        match runner.measure(server, "echo", "handshake", extra, timing_budget(plan)) {
            Ok(Output::Handshake { rounds }) => {
                progress(&format!("{label}: {:.0}/s", median_rate(&rounds)));
                let row = HandshakeRow {
                    server: server.name.to_owned(),
                    concurrency: plan.handshake_concurrency,
                    rounds,
                };
                add_pass(
                    &mut results.handshake,
                    row,
                    |a, b| a.server == b.server,
                    |kept, pass| kept.rounds.extend(pass.rounds),
                );
            }
            Ok(other) => results
                .failures
                .push(format!("{label}: unexpected {other:?}")),
            Err(e) => fail(results, &label, e),
        }
    }
}

fn slow(runner: &mut Runner, plan: &Plan, servers: &[Server], results: &mut Results) {
    eprintln!("slow consumer");
    let (room, size, rate, secs) = plan.slow;
    for server in servers {
        let extra = args(&[
            ("subs", room.to_string()),
            ("size", size.to_string()),
            ("rate", rate.to_string()),
            ("secs", secs.to_string()),
        ]);
        let label = format!("slow consumer in {room}, {}", server.name);
        let budget = Duration::from_secs_f64(secs) + Duration::from_secs(30);
        match runner.measure(server, "broadcast", "slow", extra, budget) {
            Ok(Output::Slow {
                latency,
                rss,
                published,
                incomplete,
                round,
            }) => {
                progress(&format!(
                    "{label}: p99 {:.0} µs, RSS {:.1} → {:.1} MiB",
                    latency.p99_us,
                    rss.first().map_or(0.0, |r| r.1 as f64 / 1048576.0),
                    rss.last().map_or(0.0, |r| r.1 as f64 / 1048576.0)
                ));
                results.slow.push(SlowRow {
                    server: server.name.to_owned(),
                    room,
                    size,
                    rate,
                    latency,
                    rss,
                    published,
                    incomplete,
                    round,
                });
            }
            Ok(other) => results
                .failures
                .push(format!("{label}: unexpected {other:?}")),
            Err(e) => fail(results, &label, e),
        }
    }
}

/// Adds one pass's row: folded into the row of the same case and server by `merge`, or
/// appended if it is the first pass.
fn add_pass<T>(
    rows: &mut Vec<T>,
    row: T,
    same_case: impl Fn(&T, &T) -> bool,
    merge: impl FnOnce(&mut T, T),
) {
    match rows.iter_mut().find(|kept| same_case(kept, &row)) {
        Some(kept) => merge(kept, row),
        None => rows.push(row),
    }
}

fn fail(results: &mut Results, label: &str, error: String) {
    eprintln!("  {label}: FAILED: {error}");
    results.failures.push(format!("{label}: {error}"));
}

fn median_rate(rounds: &[Round]) -> f64 {
    crate::stats::Summary::of(rounds.iter().map(Round::rate)).median
}

/// The workspace root: the nearest ancestor of the current directory (or of this
/// executable) with a `Cargo.lock`.
fn workspace_root() -> Result<PathBuf, String> {
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| {
            start
                .ancestors()
                .find(|dir| dir.join("Cargo.lock").is_file())
                .map(Path::to_path_buf)
        })
        .ok_or_else(|| "cannot find the workspace root (no Cargo.lock)".to_owned())
}

/// Builds every binary of this crate in release mode; returns their directory.
fn build(root: &Path) -> Result<PathBuf, String> {
    eprintln!("building the servers and the generator (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "switchboard-bench", "--bins"])
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}"));
    }
    release_dir()
}

/// `target/release`, found from this executable's place in `target/<profile>`.
fn release_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe.parent().ok_or("executable has no directory")?;
    let target = profile_dir
        .parent()
        .ok_or("executable not in target/<profile>")?;
    let dir = target.join("release");
    if dir.join("bench-loadgen").is_file() {
        Ok(dir)
    } else {
        Err(format!("no bench-loadgen in {}", dir.display()))
    }
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git describe` of the workspace, and whether the library's sources differ from it.
fn revision(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".to_owned();
    };
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "crates/switchboard",
        "crates/switchboard-proto",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} with uncommitted changes to the library")
    } else {
        head
    }
}

/// Versions of the measured crates (and tokio), from `Cargo.lock`.
fn versions(root: &Path, servers: &[Server]) -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    servers
        .iter()
        .map(|s| s.krate)
        .chain(["tokio"])
        .map(|name| (name.to_owned(), lock_version(&lock, name)))
        .collect()
}

fn lock_version(lock: &str, name: &str) -> String {
    let header = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == header {
            return lines
                .next()
                .and_then(|l| l.strip_prefix("version = \""))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default();
        }
    }
    String::new()
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

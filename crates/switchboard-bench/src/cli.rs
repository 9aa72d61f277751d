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
    plan::{Mode, Plan, SERVERS, Server},
    report,
    results::Results,
    runner::{Runner, build, release_dir, revision, versions, which, workspace_root},
    scenarios,
};
use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

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
        "all" | "smoke" => &scenarios::ALL,
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

/// One run of `scenarios`: builds, runs each for every server, writes the report.
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
    if busy_before > report::BUSY_LIMIT {
        eprintln!(
            "note: the CPUs were {:.0}% busy before the run: other work is running, numbers will be noisy",
            busy_before * 100.0
        );
    }
    let start = Instant::now();
    let steal_before = crate::sys::steal_time();
    let mut runner = Runner::new(bins, pinned);
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
        scenarios::run(scenario, &mut runner, &plan, &cli.servers, &mut results);
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

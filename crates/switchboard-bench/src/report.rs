//! The report: `benchmarks.md` (tables, ratios to the best peer, the targets) and SVG
//! charts beside it, plus the raw results as `benchmarks.json` for later analysis.

use crate::{
    charts::charts,
    format::{bytes, num},
    loadgen::Round,
    plan::{Mode, OURS},
    results::{BroadcastRow, EchoRow, HandshakeRow, Results, SlowRow, group},
    stats::Summary,
};
use std::{fmt::Write as _, fs, io, path::Path};

/// A round whose generator used this share of its core or more may have measured the
/// generator rather than the server: it is marked invalid.
pub const GENERATOR_LIMIT: f64 = 0.95;

/// Reads results that [`write()`] saved as JSON.
pub fn read(path: &Path) -> io::Result<Results> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

/// Writes `benchmarks.md`, `benchmarks.json` and the charts into `dir`.
pub fn write(results: &Results, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(results).map_err(io::Error::other)?;
    // The raw numbers go to target/, not docs/: the page is the artefact people read.
    let raw_dir = if dir.ends_with("docs") {
        dir.parent()
            .map(|root| root.join("target/switchboard-bench"))
            .unwrap_or_else(|| dir.to_path_buf())
    } else {
        dir.to_path_buf()
    };
    fs::create_dir_all(&raw_dir)?;
    fs::write(raw_dir.join("benchmarks.json"), json)?;
    for (name, svg) in charts(results) {
        fs::write(dir.join(name), svg)?;
    }
    let page = dir.join("benchmarks.md");
    let old = fs::read_to_string(&page).ok();
    fs::write(page, with_hand_measured(markdown(results), old.as_deref()))
}

/// Where the sections measured by other tools (`scripts/load/`) start on the page; they
/// are kept when the harness writes the page again.
const HAND_MEASURED: &str = "<!-- measured by hand: kept when the page is regenerated -->";

/// The new page, followed by the old page's hand-measured sections if it had any.
fn with_hand_measured(page: String, old: Option<&str>) -> String {
    match old.and_then(|old| old.find(HAND_MEASURED).map(|at| &old[at..])) {
        Some(kept) => format!("{}\n\n{kept}", page.trim_end()),
        None => page,
    }
}

/// Summary of one measured case.
struct Measured {
    rate: Summary,
    per_cpu: Summary,
    server_load: f64,
    generator_load: f64,
}

impl Measured {
    fn of(rounds: &[Round]) -> Self {
        Self {
            rate: Summary::of(rounds.iter().map(Round::rate)),
            per_cpu: Summary::of(rounds.iter().map(Round::per_server_cpu)),
            server_load: Summary::of(rounds.iter().map(Round::server_load)).median,
            generator_load: Summary::of(rounds.iter().map(Round::generator_load)).max,
        }
    }

    fn valid(&self) -> bool {
        // NaN (no rounds) is not invalid.
        self.generator_load.is_nan() || self.generator_load < GENERATOR_LIMIT
    }
}

fn is_peer(server: &str) -> bool {
    server != OURS
}

/// The best peer value among `values` (server, value); `higher` says which way is better.
fn best_peer<'a>(
    values: impl Iterator<Item = (&'a str, f64)>,
    higher: bool,
) -> Option<(&'a str, f64)> {
    values
        .filter(|(s, v)| is_peer(s) && v.is_finite())
        .reduce(|a, b| if (b.1 > a.1) == higher { b } else { a })
}

fn ours<'a>(mut values: impl Iterator<Item = (&'a str, f64)>) -> Option<f64> {
    values.find(|(s, _)| *s == OURS).map(|(_, v)| v)
}

/// A run in which the hypervisor took more than this share of the CPUs' time is flagged:
/// the servers were slowed by the host's other tenants, unevenly.
const STEAL_LIMIT: f64 = 0.02;

/// Above this share of busy CPU before the run, other work was running.
pub(crate) const BUSY_LIMIT: f64 = 0.10;

/// Whether other work kept the CPUs busy before the run.
fn busy(r: &Results) -> bool {
    r.busy_before > BUSY_LIMIT
}

/// The share of the CPUs' time the hypervisor gave to others during the run.
fn steal_share(r: &Results) -> f64 {
    if r.cpu_secs > 0.0 {
        r.steal_secs / r.cpu_secs
    } else {
        0.0
    }
}

fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let mode = match r.mode {
        Mode::Full => "full (`all`)",
        Mode::Quick => "quick (`all --quick`: fewer, shorter rounds; indicative only)",
        Mode::Smoke => "smoke (tiny sizes: checks the harness, measures nothing)",
    };
    let quiet = if r.busy_before.is_nan() {
        "not sampled".to_owned()
    } else if busy(r) {
        format!(
            "**noisy**: other work was running ({:.0}% > {:.0}%)",
            r.busy_before * 100.0,
            BUSY_LIMIT * 100.0
        )
    } else {
        "quiet".to_owned()
    };
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "switchboard and its peers, measured side by side in one run on one machine by \
         `crates/switchboard-bench`. Regenerate this page (and the charts beside it) with:\n\n\
         ```sh\ncargo run --release -p switchboard-bench -- all           # ≤ 15 minutes\n\
         cargo run --release -p switchboard-bench -- all --quick   # ≤ 2 minutes\n```\n"
    );
    let _ = writeln!(md, "| run | |\n|---|---|");
    let _ = writeln!(md, "| date | {} UTC |", date(r.started));
    let _ = writeln!(md, "| mode | {mode} |");
    let _ = writeln!(md, "| machine | {} |", r.machine);
    let _ = writeln!(
        md,
        "| CPUs busy before the run (1 s sample, after the build) | {} |",
        if r.busy_before.is_nan() {
            quiet
        } else {
            format!("{:.0}%: {quiet}", r.busy_before * 100.0)
        }
    );
    let _ = writeln!(
        md,
        "| load average (1 min) | {:.2} before (it remembers the build), {:.2} after |",
        r.load_before, r.load_after
    );
    let _ = writeln!(
        md,
        "| CPU steal | {:.0} s of the CPUs' {:.0} s ({:.1}%) went to other tenants of the host |",
        r.steal_secs,
        r.cpu_secs,
        100.0 * steal_share(r)
    );
    let _ = writeln!(
        md,
        "| pinning | {} |",
        if r.pinned {
            "server on core 0, generator on core 1 (`taskset`)"
        } else {
            "**none** (no `taskset` or fewer than 2 cores)"
        }
    );
    let _ = writeln!(md, "| duration | {:.0} s |", r.duration_secs);
    let versions: Vec<String> = r.versions.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let _ = writeln!(md, "| versions | {} |", versions.join(", "));
    let _ = writeln!(md, "| switchboard revision | {} |\n", r.revision);
    if !r.failures.is_empty() {
        let _ = writeln!(md, "**Failed runs** (not in the tables):\n");
        for failure in &r.failures {
            let _ = writeln!(md, "- {}", failure.replace('\n', " "));
        }
        let _ = writeln!(md);
    }

    if busy(r) || steal_share(r) > STEAL_LIMIT {
        let _ = writeln!(
            md,
            "> **Read with care.** Other work shared the two cores during this run (on \
             this machine, or on the host: {:.1}% of CPU time stolen). The \
             server's CPU column shows how much of its core it got: well under 100% means \
             it was waiting for the scheduler, not saturated, so throughput and latency \
             measure the contention as much as the server, and differences of ±20% \
             between servers are within the noise. Messages per server CPU-second are the \
             steadier comparison. Rerun on a quiet machine for numbers to quote.\n",
            100.0 * steal_share(r)
        );
    }
    targets(&mut md, r);
    echo_section(&mut md, &r.echo);
    broadcast_section(&mut md, &r.broadcast);
    idle_section(&mut md, r);
    handshake_section(&mut md, &r.handshake);
    slow_section(&mut md, &r.slow);
    method(&mut md);
    md
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".to_owned()
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.2} KiB", bytes / 1024.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn check(holds: bool) -> &'static str {
    if holds { "✅ holds" } else { "❌ misses" }
}

fn targets(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "Ratios are switchboard ÷ the best peer in the same case of this run (for memory \
         and latency, lower is better).\n"
    );
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    // Echo: ≥ 1.0× the best peer in every case, ≥ 1.3× tokio-tungstenite.
    let mut worst: Option<(f64, String)> = None;
    let mut worst_tt: Option<(f64, String)> = None;
    for (case, rows) in group(&r.echo, |row| (row.conns, row.size)) {
        let rates: Vec<(&str, f64)> = rows
            .iter()
            .map(|row| (row.server.as_str(), Measured::of(&row.rounds).rate.median))
            .collect();
        let label = format!("{}×{}", case.0, bytes(case.1));
        if let (Some(ours), Some((_, best))) = (
            ours(rates.iter().copied()),
            best_peer(rates.iter().copied(), true),
        ) {
            let x = ours / best;
            if worst.as_ref().is_none_or(|(w, _)| x < *w) {
                worst = Some((x, label.clone()));
            }
        }
        let tt = rates
            .iter()
            .find(|(s, _)| *s == "tokio-tungstenite")
            .map(|p| p.1);
        if let (Some(ours), Some(tt)) = (ours(rates.iter().copied()), tt) {
            let x = ours / tt;
            if worst_tt.as_ref().is_none_or(|(w, _)| x < *w) {
                worst_tt = Some((x, label));
            }
        }
    }
    if let Some((x, case)) = worst {
        let _ = writeln!(
            md,
            "| echo ≥ 1.0× the best peer in every case | lowest {} ({case}) | {} |",
            ratio(x),
            check(x >= 1.0)
        );
    }
    if let Some((x, case)) = worst_tt {
        let _ = writeln!(
            md,
            "| echo ≥ 1.3× tokio-tungstenite in every case | lowest {} ({case}) | {} |",
            ratio(x),
            check(x >= 1.3)
        );
    }
    // Broadcast to the largest room: deliveries/s above every peer, p99 below.
    let largest = r.broadcast.iter().map(|b| b.room).max();
    for (case, rows) in group(&r.broadcast, |row| (row.room, row.size)) {
        if Some(case.0) != largest {
            continue;
        }
        let rates: Vec<(&str, f64)> = rows
            .iter()
            .map(|row| (row.server.as_str(), Measured::of(&row.rounds).rate.median))
            .collect();
        let p99: Vec<(&str, f64)> = rows
            .iter()
            .map(|row| (row.server.as_str(), row.latency.p99_us))
            .collect();
        if let (Some(o), Some((peer, best))) = (
            ours(rates.iter().copied()),
            best_peer(rates.iter().copied(), true),
        ) {
            let _ = writeln!(
                md,
                "| broadcast to {}, {}: more deliveries/s than any peer | {} of {peer} | {} |",
                num(case.0 as f64),
                bytes(case.1),
                ratio(o / best),
                check(o > best)
            );
        }
        if let (Some(o), Some((peer, best))) = (
            ours(p99.iter().copied()),
            best_peer(p99.iter().copied(), false),
        ) {
            let _ = writeln!(
                md,
                "| broadcast to {}, {}: p99 latency below every peer | {} of {peer} ({:.1} vs {:.1} ms) | {} |",
                num(case.0 as f64),
                bytes(case.1),
                ratio(o / best),
                o / 1000.0,
                best / 1000.0,
                check(o < best)
            );
        }
    }
    // Idle memory: ≤ 2 KiB per connection, below every peer; for the bare socket
    // (echo) and for the hub (broadcast).
    for (key, rows) in group(&r.idle, |row| (row.conns, row.behaviour.clone())) {
        let per: Vec<(&str, f64)> = rows
            .iter()
            .map(|row| (row.server.as_str(), row.per_conn()))
            .collect();
        if let Some(o) = ours(per.iter().copied()) {
            let _ = writeln!(
                md,
                "| idle memory ≤ 2 KiB per connection ({} connections, {}) | {} | {} |",
                num(key.0 as f64),
                key.1,
                kib(o),
                check(o <= 2048.0)
            );
            if let Some((peer, best)) = best_peer(per.iter().copied(), false) {
                let _ = writeln!(
                    md,
                    "| idle memory below every peer ({} connections, {}) | {} of {peer} ({}) | {} |",
                    num(key.0 as f64),
                    key.1,
                    ratio(o / best),
                    kib(best),
                    check(o < best)
                );
            }
        }
    }
    for (conns, why) in &r.idle_skipped {
        let _ = writeln!(
            md,
            "| idle memory, {} connections | not run: {why} | – |",
            num(*conns as f64)
        );
    }
    let handshakes = |metric: fn(&Measured) -> f64| {
        let values: Vec<(&str, f64)> = r
            .handshake
            .iter()
            .map(|row| (row.server.as_str(), metric(&Measured::of(&row.rounds))))
            .collect();
        ours(values.iter().copied()).zip(best_peer(values.iter().copied(), true))
    };
    if let Some((o, (peer, best))) = handshakes(|m| m.rate.median) {
        let _ = writeln!(
            md,
            "| handshakes/s ≥ the best peer | {} of {peer} | {} |",
            ratio(o / best),
            check(o >= best)
        );
    }
    // On loopback the connecting side pays for most of the TCP handshake, so the
    // generator can run out of core before the servers do: then the rate above measures
    // the generator, and the servers' CPU per handshake tells them apart.
    if let Some((o, (peer, best))) = handshakes(|m| m.per_cpu.median) {
        let _ = writeln!(
            md,
            "| (not a target) handshakes per server CPU-second, against the best peer | {} of {peer} | {} |",
            ratio(o / best),
            if o >= best { "ahead" } else { "behind" }
        );
    }
    let invalid = r
        .echo
        .iter()
        .map(|e| &e.rounds)
        .chain(r.broadcast.iter().map(|b| &b.rounds))
        .chain(r.handshake.iter().map(|h| &h.rounds))
        .filter(|rounds| !Measured::of(rounds).valid())
        .count();
    let _ = writeln!(
        md,
        "\n{}\n",
        if invalid == 0 {
            format!(
                "In no measured round was the generator at {:.0}% of its core or more.",
                GENERATOR_LIMIT * 100.0
            )
        } else {
            format!(
                "**{invalid} case(s) marked invalid** below: the generator was at {:.0}% of \
                 its core or more, so they may have measured the generator.",
                GENERATOR_LIMIT * 100.0
            )
        }
    );
}

fn spread(s: &Summary) -> String {
    if s.spread().is_finite() {
        format!("±{:.0}%", s.spread() * 50.0)
    } else {
        "–".to_owned()
    }
}

fn validity(m: &Measured) -> String {
    let g = format!("{:.0}%", m.generator_load * 100.0);
    if m.valid() {
        g
    } else {
        format!("**{g} invalid**")
    }
}

fn echo_section(md: &mut String, rows: &[EchoRow]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Echo\n");
    let _ = writeln!(
        md,
        "Connections × payload; each connection sends one binary message, waits for the \
         echo, and repeats. Messages per second (median of the rounds, ± half the \
         min–max spread), per second of server CPU, the server's and generator's CPU \
         use, and the ratio to the best peer and to tokio-tungstenite.\n"
    );
    let _ = writeln!(md, "![echo](bench-echo.svg)\n");
    let _ = writeln!(
        md,
        "| case | server | msg/s | spread | msg per server CPU-s | server CPU | generator CPU | ÷ best peer | ÷ tokio-tungstenite |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for ((conns, size), rows) in group(rows, |row| (row.conns, row.size)) {
        let measured: Vec<(&str, Measured)> = rows
            .iter()
            .map(|row| (row.server.as_str(), Measured::of(&row.rounds)))
            .collect();
        let rates = || measured.iter().map(|(s, m)| (*s, m.rate.median));
        let best = best_peer(rates(), true).map(|b| b.1);
        let tt = rates()
            .find(|(s, _)| *s == "tokio-tungstenite")
            .map(|p| p.1);
        for (server, m) in &measured {
            let _ = writeln!(
                md,
                "| {conns}×{} | {} | {} | {} | {} | {:.0}% | {} | {} | {} |",
                bytes(size),
                name(server),
                num(m.rate.median),
                spread(&m.rate),
                num(m.per_cpu.median),
                m.server_load * 100.0,
                validity(m),
                best.map_or("–".into(), |b| ratio(m.rate.median / b)),
                tt.map_or("–".into(), |t| ratio(m.rate.median / t)),
            );
        }
    }
    let _ = writeln!(md);
}

fn name(server: &str) -> String {
    if server == OURS {
        format!("**{server}**")
    } else {
        server.to_owned()
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn broadcast_section(md: &mut String, rows: &[BroadcastRow]) {
    if rows.is_empty() {
        return;
    }
    let window = rows.first().map_or(0, |r| r.window);
    let _ = writeln!(md, "## Broadcast fan-out\n");
    let _ = writeln!(
        md,
        "A room of N subscribers plus one publisher. Deliveries per second are measured with \
         {window} messages in flight; latency (publish to the last receiver, timestamp in \
         the payload, HdrHistogram) with one message in flight, so that it is the time a \
         fan-out takes rather than time queued behind earlier messages (the p99 with \
         {window} in flight is in the last column). Peers broadcast the way their users \
         write it: a loop over every connection's unbounded channel (tokio-tungstenite's \
         chat example); switchboard uses `hub.to(room).except(sender).send(..)`.\n"
    );
    let _ = writeln!(md, "![broadcast](bench-broadcast.svg)\n");
    let _ = writeln!(
        md,
        "| room | payload | server | deliveries/s | spread | per server CPU-s | generator CPU | ÷ best peer | p50 | p99 | p99.9 | samples | p99, {window} in flight |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for ((room, size), rows) in group(rows, |row| (row.room, row.size)) {
        let measured: Vec<(&BroadcastRow, Measured)> = rows
            .iter()
            .map(|row| (*row, Measured::of(&row.rounds)))
            .collect();
        let best = best_peer(
            measured
                .iter()
                .map(|(r, m)| (r.server.as_str(), m.rate.median)),
            true,
        )
        .map(|b| b.1);
        for (row, m) in &measured {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(room as f64),
                bytes(size),
                name(&row.server),
                num(m.rate.median),
                spread(&m.rate),
                num(m.per_cpu.median),
                validity(m),
                best.map_or("–".into(), |b| ratio(m.rate.median / b)),
                micros(row.latency.p50_us),
                micros(row.latency.p99_us),
                micros(row.latency.p999_us),
                row.latency.samples,
                micros(row.loaded_latency.p99_us),
            );
        }
    }
    let _ = writeln!(md);
}

fn idle_section(md: &mut String, r: &Results) {
    if r.idle.is_empty() && r.idle_skipped.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Idle memory\n");
    let _ = writeln!(
        md,
        "Server resident memory (`VmRSS`) before and after N connections completed their \
         handshake and went quiet, after 100 warm-up connections (so one-time costs are \
         not charged to them); socket buffers are kernel memory and not in RSS. `echo` is \
         each server's echo binary; `broadcast` is its room server (switchboard: the hub \
         behind axum; peers: a task pair and an unbounded channel per connection).\n"
    );
    let _ = writeln!(md, "![idle memory](bench-idle.svg)\n");
    let _ = writeln!(
        md,
        "| connections | behaviour | server | RSS before | RSS after | per connection | ÷ best peer |"
    );
    let _ = writeln!(md, "|---:|---|---|---:|---:|---:|---:|");
    for ((conns, behaviour), rows) in group(&r.idle, |row| (row.conns, row.behaviour.clone())) {
        let best = best_peer(
            rows.iter().map(|r| (r.server.as_str(), r.per_conn())),
            false,
        )
        .map(|b| b.1);
        for row in rows {
            let _ = writeln!(
                md,
                "| {} | {behaviour} | {} | {} | {} | {} | {} |",
                num(conns as f64),
                name(&row.server),
                mib(row.rss_before),
                mib(row.rss_after),
                kib(row.per_conn()),
                best.map_or("–".into(), |b| ratio(row.per_conn() / b)),
            );
        }
    }
    for (conns, why) in &r.idle_skipped {
        let _ = writeln!(md, "\n{} connections: not run: {why}.", num(*conns as f64));
    }
    let _ = writeln!(md);
}

fn handshake_section(md: &mut String, rows: &[HandshakeRow]) {
    if rows.is_empty() {
        return;
    }
    let concurrency = rows.first().map_or(0, |r| r.concurrency);
    let _ = writeln!(md, "## Handshakes\n");
    let _ = writeln!(
        md,
        "{concurrency} concurrent clients, each: connect, send the upgrade request, read the \
         101 (checking `Sec-WebSocket-Accept`), reset the connection, repeat. Each server's \
         echo binary: switchboard's `accept_with` on the bare stream, tokio-tungstenite's \
         `accept_async`, tokio-websockets' `ServerBuilder::accept`, fastwebsockets' upgrade \
         inside a hyper `http1` connection (its documented way).\n"
    );
    let _ = writeln!(md, "![handshakes](bench-handshake.svg)\n");
    let _ = writeln!(
        md,
        "| server | handshakes/s | spread | per server CPU-s | server CPU | generator CPU | ÷ best peer |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let measured: Vec<(&str, Measured)> = rows
        .iter()
        .map(|r| (r.server.as_str(), Measured::of(&r.rounds)))
        .collect();
    let best = best_peer(measured.iter().map(|(s, m)| (*s, m.rate.median)), true).map(|b| b.1);
    for (server, m) in &measured {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0}% | {} | {} |",
            name(server),
            num(m.rate.median),
            spread(&m.rate),
            num(m.per_cpu.median),
            m.server_load * 100.0,
            validity(m),
            best.map_or("–".into(), |b| ratio(m.rate.median / b)),
        );
    }
    let _ = writeln!(md);
}

fn slow_section(md: &mut String, rows: &[SlowRow]) {
    let Some(first) = rows.first() else {
        return;
    };
    let secs = first.round.secs;
    let _ = writeln!(md, "## Slow consumer\n");
    let _ = writeln!(
        md,
        "A room of {} receivers, one of which stops reading after joining (its socket \
         has a 4 KiB receive buffer, so the kernel holds little on its behalf); the \
         publisher sends {} messages of {} per second for {secs:.0} s (open loop: the same \
         load for every server, light enough for each). Latency is publish to the last \
         *healthy* receiver; RSS is sampled every second. switchboard's hub bounds each connection's queue \
         (`max_buffered_bytes`, 1 MiB by default, then drops); the peers' unbounded \
         channels grow for as long as the client does not read.\n",
        num(first.room as f64),
        first.rate,
        bytes(first.size)
    );
    let _ = writeln!(md, "![slow consumer RSS](bench-slow.svg)\n");
    let _ = writeln!(
        md,
        "| server | p50 | p99 | p99.9 | RSS start | RSS end | RSS max | published | incomplete | server CPU |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let max = row.rss.iter().map(|r| r.1).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            name(&row.server),
            micros(row.latency.p50_us),
            micros(row.latency.p99_us),
            micros(row.latency.p999_us),
            mib(row.rss.first().map_or(0, |r| r.1)),
            mib(row.rss.last().map_or(0, |r| r.1)),
            mib(max),
            num(row.published as f64),
            num(row.incomplete as f64),
            row.round.server_load() * 100.0,
        );
    }
    let _ = writeln!(md);
}

fn method(md: &mut String) {
    let _ = writeln!(
        md,
        "## Method\n\n\
         - **Servers** (`crates/switchboard-bench/src/bin/`): one binary per implementation, \
         the same behaviour (`--mode echo`: send back every text and binary message; \
         `--mode broadcast`: every connection in one room, each message to every other \
         member), the same runtime (tokio current-thread, all drivers), the same listener \
         (backlog 4096), `TCP_NODELAY`, one plain `tokio::spawn` per connection, default \
         library settings. fastwebsockets runs with its `simd` feature and its \
         `FragmentCollector`; its own examples wrap tasks in `tokio::task::unconstrained`, \
         which is left out here so that the runtime's cooperative budget applies to all.\n\
         - **Generator** (`bench-loadgen`): written without any WebSocket library (it must \
         not share our bugs): one thread, one `mio` (epoll) loop, raw non-blocking sockets, \
         the handshake and frames by hand; echo frames are pre-masked once \
         (uWebSockets' `load_test` semantics: send, wait for exactly the echoed bytes, \
         compare them, repeat). Clients connect from 127.0.0.2, 127.0.0.3, … so that large \
         runs do not exhaust one address's ephemeral ports, and close with a reset \
         (`SO_LINGER` 0), leaving no `TIME_WAIT`.\n\
         - **Pinning**: the server runs on core 0 and the generator on core 1 (`taskset`). \
         On loopback, the kernel's TCP work for a packet is mostly charged to the sender's \
         core, so each side's CPU time includes part of the other's traffic.\n\
         - **Passes and rounds**: each rate case (echo, broadcast, handshakes) runs in \
         several passes, the servers taking turns in alternating order (A B C D, then D C B \
         A, …), so that a change in the machine during the run falls on every server \
         alike; each pass starts the server afresh, warms up, then measures rounds. Tables \
         give the median of every round of every pass and ± half the min–max spread; \
         latencies are one distribution of the samples of every pass. Server CPU comes \
         from `/proc/<pid>/task/*/schedstat` at each round boundary (nanoseconds on CPU, every thread); msg per server CPU-second is \
         messages ÷ that time. The generator records its own CPU the same way; a round in \
         which it used {:.0}% of its core or more is marked invalid (it may have measured \
         the generator).\n\
         - **Broadcast**: the publisher sends binary messages starting with a sequence \
         number and a send timestamp; a message counts as delivered when every subscriber \
         has it. Before measuring, the publisher republishes until one message reaches \
         every subscriber (a 101 can arrive before the server has put the connection in \
         the room).\n\
         - **Idle memory**: `VmRSS` from `/proc/<pid>/status`. The open-files limit bounds \
         the number of connections one server process can hold; where it is below a \
         scenario's size the scenario is reported as not run.\n",
        GENERATOR_LIMIT * 100.0
    );
}

/// A civil date from Unix seconds (Howard Hinnant's algorithm), to avoid a dependency.
fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(num(1234567.4), "1,234,567");
        assert_eq!(num(12.0), "12");
        assert_eq!(bytes(16384), "16 KiB");
        assert_eq!(bytes(20), "20 B");
        assert_eq!(date(0), "1970-01-01 00:00");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13");
    }

    #[test]
    fn hand_measured_sections_survive_a_new_page() {
        let old = format!("# Old\n\nstale tables\n\n{HAND_MEASURED}\n\n## Restarts\n\nkept\n");
        let new = with_hand_measured("# New\n\nfresh\n".into(), Some(&old));
        assert_eq!(
            new,
            format!("# New\n\nfresh\n\n{HAND_MEASURED}\n\n## Restarts\n\nkept\n")
        );
        assert_eq!(
            with_hand_measured("# New\n".into(), Some("# Old\n")),
            "# New\n"
        );
        assert_eq!(with_hand_measured("# New\n".into(), None), "# New\n");
    }
}

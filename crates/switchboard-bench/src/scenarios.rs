//! The five scenarios (echo, broadcast, idle, handshake, slow consumer): for each case
//! and server, the generator's arguments, one measured run, and the row it adds to the
//! results.

use crate::{
    loadgen::Output,
    plan::{Plan, SERVERS, Server, args},
    results::{BroadcastRow, EchoRow, HandshakeRow, IdleRow, Results, SlowRow, median_rate},
    runner::Runner,
};
use std::time::Duration;

/// Every scenario, in the order `all` runs them.
pub const ALL: [&str; 5] = ["echo", "broadcast", "idle", "handshake", "slow"];

/// Runs `scenario` for `servers`, adding its rows (or failures) to `results`.
pub fn run(
    scenario: &str,
    runner: &mut Runner,
    plan: &Plan,
    servers: &[Server],
    results: &mut Results,
) {
    match scenario {
        "echo" => echo(runner, plan, servers, results),
        "broadcast" => broadcast(runner, plan, servers, results),
        "idle" => idle(runner, plan, servers, results),
        "handshake" => handshake(runner, plan, servers, results),
        "slow" => slow(runner, plan, servers, results),
        _ => {}
    }
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

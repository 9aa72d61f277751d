//! Side-by-side benchmarks of switchboard and its peers (tokio-tungstenite,
//! fastwebsockets, tokio-websockets), in one harness that anyone can rerun.
//!
//! ```text
//! cargo run --release -p switchboard-bench -- all            # ≤ 15 min, writes docs/benchmarks.md
//! cargo run --release -p switchboard-bench -- all --quick    # ≤ 2 min, same page, fewer rounds
//! cargo run --release -p switchboard-bench -- smoke          # seconds: the harness works
//! ```
//!
//! The crate has three kinds of binaries:
//!
//! - one server per implementation (`bench-switchboard`, `bench-tungstenite`,
//!   `bench-fastwebsockets`, `bench-tokio-websockets`), each with the same two behaviours
//!   (`--mode echo` and `--mode broadcast`) on the same runtime ([`server`]);
//! - the load generator `bench-loadgen` ([`loadgen`]): raw non-blocking sockets on one
//!   `mio` event loop, written without any WebSocket library, so that it shares no bug
//!   with the servers it measures;
//! - the harness `switchboard-bench` ([`cli`]), which builds the others and runs them
//!   ([`runner`]): the server pinned to core 0 and the generator to core 1, every
//!   scenario ([`scenarios`]) for every server, with the sizes of a [`plan`]; then it
//!   writes what it measured ([`results`]) as a report ([`report`]) with
//!   [`charts`].

pub mod charts;
pub mod cli;
pub mod format;
pub mod loadgen;
pub mod plan;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenarios;
pub mod server;
pub mod stats;
pub mod sys;

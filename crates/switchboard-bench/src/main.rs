//! The benchmark harness: see [`switchboard_bench::cli`].
//!
//! ```text
//! cargo run --release -p switchboard-bench -- all [--quick]
//! cargo run --release -p switchboard-bench -- smoke
//! ```

fn main() -> std::process::ExitCode {
    switchboard_bench::cli::main()
}

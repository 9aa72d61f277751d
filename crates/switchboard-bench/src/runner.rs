//! Builds the binaries and runs them: each server under test on core 0, the load
//! generator on core 1, a fresh port per server, and a deadline on every process.
//!
//! Also where the run's provenance comes from (the workspace, its revision, the
//! versions of the crates measured), since it is read from the same build.

use crate::{loadgen::Output, plan::Server};
use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Starts servers and generators, each on its core.
#[derive(Debug)]
pub struct Runner {
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
    /// A runner of the binaries in `bins`, each pinned to its core if `pinned`.
    pub fn new(bins: PathBuf, pinned: bool) -> Self {
        Self {
            bins,
            pinned,
            next_port: 0,
        }
    }

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
    pub fn measure(
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

/// The workspace root: the nearest ancestor of the current directory (or of this
/// executable) with a `Cargo.lock`.
pub fn workspace_root() -> Result<PathBuf, String> {
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
pub fn build(root: &Path) -> Result<PathBuf, String> {
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
pub fn release_dir() -> Result<PathBuf, String> {
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

/// Whether `program` runs.
pub fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git describe` of the workspace, and whether the library's sources differ from it.
pub fn revision(root: &Path) -> String {
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
pub fn versions(root: &Path, servers: &[Server]) -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    servers
        .iter()
        .map(|s| s.krate)
        .chain(["tokio"])
        .map(|name| (name.to_owned(), lock_version(&lock, name)))
        .collect()
}

/// The version of `name` in the text of a `Cargo.lock`.
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

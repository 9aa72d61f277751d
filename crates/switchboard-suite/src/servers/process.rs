//! A server process of one test, killed when dropped, and a directory of its own for
//! its files, removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many draws of free ports [`Process::start_on_free_ports`] tries: another
/// process (a test binary running beside this one) may take a port between the draw
/// and the server's bind, and the server then exits.
const TRIES: usize = 5;

/// A server process, resumed, SIGKILLed and reaped when dropped (a failing test
/// leaves no stopped or stray server behind).
#[derive(Debug)]
pub struct Process {
    /// `None` once killed and reaped: its pid may then be another process's.
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Runs `program` with the arguments `args` makes for the ports `draw` gives, and
    /// returns it and those ports once it listens on every one of them; with newly
    /// drawn ports, up to 5 draws, when it exits before (one was taken).
    pub async fn start_on_free_ports<const N: usize>(
        program: &str,
        mut draw: impl FnMut() -> [u16; N],
        mut args: impl FnMut([u16; N]) -> Vec<String>,
    ) -> (Self, [u16; N]) {
        for _ in 0..TRIES {
            let ports = draw();
            match Self::start(program, &args(ports), &ports).await {
                Ok(process) => return (process, ports),
                Err(status) => tracing::debug!(?ports, %status, "{program}: other ports"),
            }
        }
        panic!("{program} did not start on any of {TRIES} draws of free ports");
    }

    /// Runs `program args…` (stdout to the null device, stderr inherited: a server
    /// that refuses its configuration says why in the test's output) and returns once
    /// it, and not another process, listens on every one of `ports`; or the status it
    /// exited with before (a port was taken). Panics if it neither listens nor exits
    /// within 10 s.
    pub async fn start(program: &str, args: &[String], ports: &[u16]) -> Result<Self, ExitStatus> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{program} on the PATH: {error}"));
        let mut process = Self::new(child, format!("{program} on ports {ports:?}"));
        process.until_listening(ports).await?;
        Ok(process)
    }

    /// Takes over `child` (called `name` in messages): killed when dropped.
    pub fn new(child: Child, name: String) -> Self {
        Self {
            child: Some(child),
            name,
        }
    }

    async fn until_listening(&mut self, ports: &[u16]) -> Result<(), ExitStatus> {
        let listening = async {
            loop {
                if let Some(status) = self.exited() {
                    return Err(status);
                }
                // Something answering on the port may be whoever took it first.
                let pid = self.id().expect("a process not killed");
                if ports.iter().all(|&port| listens(pid, port)) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(START_TIMEOUT, listening)
            .await
            .unwrap_or_else(|_| panic!("{} did not listen within {START_TIMEOUT:?}", self.name))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Its pid, while it has not been killed.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `name` (`STOP`, `CONT`) to the process; whether it was sent.
    pub fn signal(&self, name: &str) -> bool {
        self.id().is_some_and(|pid| signal(pid, name))
    }

    /// Kills the process with SIGKILL, as a crash would (its clients' connections are
    /// reset), and reaps it. A stopped process is resumed first, so that its sockets
    /// close at once.
    pub fn kill(&mut self) {
        self.signal("CONT");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to the process `pid`; whether it was sent.
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        // A process already gone is not news.
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether the process `pid` holds a socket listening on `port`: one of its file
/// descriptors is a socket that `/proc/net/tcp` (or `tcp6`) lists as listening there.
fn listens(pid: u32, port: u16) -> bool {
    let sockets = listening_sockets(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|socket| target.as_os_str() == &**socket))
    })
}

/// The sockets listening on `port`, on any address, as a file descriptor links to
/// them: `socket:[<inode>]`.
fn listening_sockets(port: u16) -> Vec<String> {
    let port = format!(":{port:04X}");
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = std::fs::read_to_string(table).unwrap_or_default();
        // `sl local_address rem_address st … inode`, the address `<hex ip>:<hex port>`,
        // the state `0A` for a listening socket; a heading line first.
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, local, _, "0A", _, _, _, _, _, inode, ..] = fields[..] {
                if local.ends_with(&port) {
                    sockets.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    sockets
}

/// A directory of one test's server files, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory, named after
    /// `kind`, this process and a free port (unique among concurrent tests).
    pub fn new(kind: &str) -> Self {
        let name = format!(
            "switchboard-{kind}-{}-{}",
            std::process::id(),
            super::free_port()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in it; its path, as a string for a command line.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("a file in the temporary directory");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::{free_port, redis::redis_server_args};

    /// A port another process listens on already: its server exits, and is not taken
    /// for the one there, though that one answers.
    #[tokio::test]
    async fn a_server_whose_port_is_taken_is_not_taken_for_the_one_there() {
        let dir = TempDir::new("process");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let args = redis_server_args(port, dir.path());
        assert!(
            Process::start("redis-server", &args, &[port])
                .await
                .is_err()
        );
    }

    /// A draw of a port taken meanwhile: the server starts on the next draw's.
    #[tokio::test]
    async fn a_server_whose_port_was_taken_starts_on_another() {
        let dir = TempDir::new("process");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut draws = [taken.local_addr().unwrap().port(), free_port()].into_iter();
        let (mut process, [port]) = Process::start_on_free_ports(
            "redis-server",
            || [draws.next().expect("a second draw at most")],
            |[port]| redis_server_args(port, dir.path()),
        )
        .await;
        assert_ne!(port, taken.local_addr().unwrap().port());
        let pid = process.id().unwrap();
        assert!(listens(pid, port));
        process.kill();
        assert!(!listens(pid, port), "killed and reaped");
    }
}

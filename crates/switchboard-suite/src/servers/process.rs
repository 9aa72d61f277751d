//! A server process of one test, killed when dropped, and a directory of its own for
//! its files, removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A server process, SIGKILLed and reaped when dropped (a failing test leaves none).
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Runs `program args…` (stdout to the null device, stderr inherited: a server
    /// that refuses its configuration says why in the test's output) and returns once
    /// `port` on 127.0.0.1 accepts connections.
    pub async fn start(program: &str, args: &[&str], port: u16) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{program} on the PATH: {error}"));
        let process = Self {
            child: Some(child),
            name: format!("{program} on port {port}"),
        };
        process.until_listening(port).await;
        process
    }

    async fn until_listening(&self, port: u16) {
        let listening = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(START_TIMEOUT, listening)
            .await
            .is_err()
        {
            panic!("{} did not listen within {START_TIMEOUT:?}", self.name);
        }
    }

    /// Kills the process with SIGKILL, as a crash would (its clients' connections are
    /// reset), and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it still runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
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

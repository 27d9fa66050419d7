//! The `gonest-sessiond` binary as a child process, for tests of crates other than the daemon's
//! (whose own tests use `CARGO_BIN_EXE_gonest-sessiond`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

/// A `gonest-sessiond` process on a port the OS picks, stopped when dropped or when the test
/// process exits, however it exits.
///
/// The binary is `$GONEST_BIN_DIR/gonest-sessiond` when that is set (as `.ci/run` sets it), else
/// the one cargo built next to the running test (`target/debug/`), which `cargo test
/// --workspace` builds because the daemon's own tests need it.
#[derive(Debug)]
pub struct DaemonProcess {
    /// A shell that runs the daemon and kills it once its stdin closes: when this is dropped,
    /// and also when the test process ends without dropping it (a `static`, a panic).
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where it listens, such as `127.0.0.1:41234`.
    pub addr: String,
}

impl DaemonProcess {
    /// Where the binary is looked for.
    pub fn binary() -> PathBuf {
        if let Some(dir) = std::env::var_os("GONEST_BIN_DIR") {
            return PathBuf::from(dir).join("gonest-sessiond");
        }
        // target/debug/deps/<test> -> target/debug/gonest-sessiond
        let test = std::env::current_exe().expect("the test's own path");
        test.parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("gonest-sessiond"))
            .expect("the test runs from a target directory")
    }

    /// Starts the daemon with `extra` flags and waits (30 s at most) until it says where it
    /// listens.
    ///
    /// # Panics
    /// When the binary is missing (build it: `cargo build -p gonest-sessiond`), or it exits or
    /// says nothing in time.
    pub fn start(extra: &[&str]) -> Self {
        let binary = Self::binary();
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build -p gonest-sessiond` (or set GONEST_BIN_DIR)",
            binary.display()
        );
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#""$0" "$@" & pid=$!; read -r _; kill "$pid"; wait "$pid""#,
            ])
            .arg(&binary)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        // Drain the log for the daemon's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gonest-sessiond listening") {
                    tx.send(line).ok();
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                child.kill().ok();
                panic!("{} did not say where it listens", binary.display());
            }
        };
        Self {
            addr: log_addr(&line).expect("the line names addr").to_owned(),
            child,
            stdin,
        }
    }

    /// One daemon with default flags for every test of this test binary, started by the first
    /// test that asks. For suites whose apps cannot hold a daemon of their own: it stops when the
    /// test process exits.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<DaemonProcess> = OnceLock::new();
        SHARED.get_or_init(|| Self::start(&[]))
    }

    /// Its URL for clients, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // The shell kills the daemon once its stdin closes, then exits.
        drop(self.stdin.take());
        self.child.wait().ok();
    }
}

/// The `addr` field of one of the daemon's JSON log lines (`--log-format json`), such as the
/// "listening" lines of its gRPC and metrics listeners.
pub fn log_addr(line: &str) -> Option<&str> {
    let start = line.find("\"addr\":\"")? + 8;
    let end = start + line[start..].find('"')?;
    Some(&line[start..end])
}

//! The daemon for tests: in process (the workspace's shared harness), or as the binary.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use gonest_session_test_support::Daemon;

use gonest_session_proto::pb;

/// The headers of a `Pipeline` call to the daemon at `addr`, for a raw HTTP/2 client.
pub fn pipeline_request(addr: impl std::fmt::Display) -> http::request::Builder {
    http::Request::post(format!(
        "http://{addr}/gonest.session.v1.SessionStore/Pipeline"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
}

/// A Save of session `id` holding `pairs`, conditional on `expected` when given.
pub fn save(id: &str, pairs: &[(&str, &str)], expected: Option<u64>) -> pb::SaveRequest {
    pb::SaveRequest {
        session: Some(pb::Session {
            id: id.to_owned(),
            data: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
                .collect(),
            ..Default::default()
        }),
        expected_version: expected,
        ttl: None,
    }
}

/// `request`, saving its session as `owner`'s.
pub fn owned_by(mut request: pb::SaveRequest, owner: &str) -> pb::SaveRequest {
    request.session.as_mut().unwrap().owner = owner.to_owned();
    request
}

pub fn get(id: &str) -> pb::GetRequest {
    pb::GetRequest { id: id.to_owned() }
}

/// The `gonest-sessiond` binary, started on port 0, with its log lines as they come.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: String,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Process {
    /// The address of `--metrics-listen`, from the daemon's log (metrics listen before gRPC
    /// does, so the line is in by the time `start` returns).
    #[allow(dead_code)]
    pub fn metrics_addr(&self) -> String {
        let line = self
            .seen
            .iter()
            .find(|l| l.contains("metrics listening"))
            .expect("started with --metrics-listen");
        gonest_session_test_support::log_addr(line)
            .expect("the line names addr")
            .to_owned()
    }

    /// Starts the daemon with `extra` flags (JSON logs at debug level) and waits until it says
    /// where it listens.
    pub async fn start(extra: &[&str]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // Drain the log continuously so the daemon never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            addr: String::new(),
            lines,
            seen: Vec::new(),
        };
        let line = process
            .wait_for(|l| l.contains("gonest-sessiond listening"))
            .await;
        process.addr = gonest_session_test_support::log_addr(&line)
            .expect("the line names addr")
            .to_owned();
        process
    }

    /// Waits (30 s at most) for a log line matching `matches` and returns it.
    pub async fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no such log line; seen: {:#?}", self.seen))
                .unwrap_or_else(|| panic!("daemon exited; log: {:#?}", self.seen));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status and the rest of the log.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("daemon did not exit after SIGTERM")
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status, self.seen)
    }
}

/// Starts the daemon on `data_dir`, which must refuse to start; returns what it printed.
pub async fn refuses_to_start(data_dir: &str) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", data_dir])
        .output()
        .await
        .unwrap();
    assert!(
        !output.status.success(),
        "started on damaged files in {data_dir}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

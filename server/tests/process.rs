//! The `gonest-sessiond` binary itself: start-up on port 0, SIGTERM, logs.

#![cfg(unix)]

use std::process::Stdio;
use std::time::Duration;

use gonest_session_proto::pb::{self, session_store_client::SessionStoreClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary on port 0 and reads its log until it says where it listens.
async fn start(extra: &[&str]) -> (Child, String, tokio::task::JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("no start-up line")
            .unwrap()
            .expect("daemon exited before listening");
        if line.contains("gonest-sessiond listening") {
            let start = line.find("\"addr\":\"").unwrap() + 8;
            let end = start + line[start..].find('"').unwrap();
            break line[start..end].to_owned();
        }
    };
    // Keep draining the log so the daemon never blocks on a full pipe; hand it back at the end.
    let rest = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    });
    (child, addr, rest)
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_exits_zero_and_no_session_id_is_logged() {
    let (mut child, addr, log) = start(&[]).await;
    let mut client = SessionStoreClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let secret = "SECRET-session-id-0123456789";
    client
        .save(pb::SaveRequest {
            session: Some(pb::Session {
                id: secret.into(),
                ..Default::default()
            }),
            expected_version: None,
            ttl: None,
        })
        .await
        .unwrap();
    // A refused call is logged at debug; the id must not be in it either.
    let refused = client
        .save(pb::SaveRequest {
            session: Some(pb::Session {
                id: secret.into(),
                ..Default::default()
            }),
            expected_version: Some(9),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Aborted);
    client
        .get(pb::GetRequest { id: secret.into() })
        .await
        .unwrap();

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("daemon did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = log.await.unwrap();
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("operation refused")),
        "{log:?}"
    );
    assert!(log.iter().all(|l| !l.contains("SECRET")), "{log:?}");
}

#[tokio::test]
async fn contradictory_flags_stop_start_up_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--default-ttl",
            "2h",
            "--max-ttl",
            "1h",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--default-ttl"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args(["--sweep-interval", "often"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("30s, 5m, 24h"), "{stderr}");
}

#[tokio::test]
async fn flags_are_read_from_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .env("GONEST_SESSIOND_LISTEN", "127.0.0.1:0")
        .env("GONEST_SESSIOND_DEFAULT_TTL", "2h")
        .env("GONEST_SESSIOND_MAX_TTL", "1h")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "env values were not read");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-ttl"));
}

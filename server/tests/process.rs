//! The `gonest-sessiond` binary itself: start-up on port 0, SIGTERM, logs.

#![cfg(unix)]

mod common;

use common::Process;
use gonest_session_proto::pb::{self, session_store_client::SessionStoreClient};
use tokio::process::Command;

#[tokio::test]
async fn sigterm_exits_zero_and_no_session_id_is_logged() {
    let daemon = Process::start(&[]).await;
    let mut client = SessionStoreClient::connect(daemon.url()).await.unwrap();
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

    let (status, log) = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
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

#[tokio::test]
async fn the_health_subcommand_exits_zero_when_serving_and_one_otherwise() {
    let daemon = Process::start(&[]).await;
    let output = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args(["health", "--addr", &daemon.url()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    let (status, _) = daemon.terminate().await;
    assert!(status.success());

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let output = Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
        .args([
            "health",
            "--addr",
            &format!("http://{addr}"),
            "--timeout",
            "2s",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"));
}

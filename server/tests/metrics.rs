//! `--metrics-listen`: Prometheus text on /metrics.

#![cfg(unix)]

mod common;

use common::Process;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_operations_by_method_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Process::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--max-sessions",
        "5000",
        "--max-connections",
        "300",
    ])
    .await;
    let metrics_addr = daemon.metrics_addr();

    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    store
        .save(Save::new("m", SessionData::new()).expected_version(0))
        .await
        .unwrap();
    store
        .save(Save::new("m", SessionData::new()).expected_version(0))
        .await
        .unwrap_err();
    store.get("m").await.unwrap();
    store.get("other").await.unwrap();

    let text = scrape(&metrics_addr).await;
    for expected in [
        "gonest_sessiond_operations_total{method=\"save\",code=\"OK\"} 1",
        "gonest_sessiond_operations_total{method=\"save\",code=\"ABORTED\"} 1",
        "gonest_sessiond_operations_total{method=\"get\",code=\"OK\"} 2",
        "gonest_sessiond_live_sessions 1",
        "gonest_sessiond_operation_duration_seconds_count{method=\"get\"} 2",
        "gonest_sessiond_sweeps_total 0",
        "gonest_sessiond_snapshot_age_seconds -1",
        "gonest_sessiond_tracking_live 1",
        "gonest_sessiond_trackers 0",
        // What the alert rules compare against (deploy/prometheus/).
        "gonest_sessiond_max_sessions 5000",
        "gonest_sessiond_max_connections 300",
        "gonest_sessiond_snapshot_interval_seconds 30",
        "gonest_sessiond_log_failing 0",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    // The store's client holds one connection (the scrape is on the metrics port).
    assert!(text.contains("gonest_sessiond_connections 1\n"), "{text}");
    drop(store);
    let limit = text
        .lines()
        .find_map(|l| l.strip_prefix("gonest_sessiond_memory_limit_bytes "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(limit > 64 << 20, "{limit}");
    assert!(
        !text.contains("gonest_sessiond_backend_up"),
        "memory: no backend to watch"
    );
    let (status, _) = daemon.terminate().await;
    assert!(status.success());
}

//! Sessions across restarts: SIGTERM, kill -9, damaged snapshots.

#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{Process, refuses_to_start};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionRecord, SessionStore};

fn data(i: usize) -> SessionData {
    let mut data = SessionData::new();
    data.insert("user_id".into(), i.to_string().into_bytes().into());
    data.insert("blob".into(), vec![(i % 251) as u8; i % 300].into());
    data
}

async fn save_many(store: &RemoteSessionStore, count: usize) -> Vec<SessionRecord> {
    for i in 0..count {
        let id = format!("session-{i:05}");
        let mut save = Save::new(&id, data(i)).ttl(Duration::from_secs(3600));
        if i % 2 == 0 {
            save = save.owner(format!("user {}", i % 7));
        }
        store.save(save).await.unwrap();
        if i % 3 == 0 {
            // A second save, so versions differ from 1 (and half of these lose their owner).
            let mut save = Save::new(&id, data(i + 1));
            if i % 4 == 0 {
                save = save.owner(format!("user {}", i % 7));
            }
            store.save(save).await.unwrap();
        }
    }
    let mut records = Vec::new();
    for i in 0..count {
        records.push(
            store
                .get(&format!("session-{i:05}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    records
}

async fn assert_all_back(url: &str, records: &[SessionRecord]) {
    let store = RemoteSessionStore::connect(url).await.unwrap();
    for record in records {
        let back = store.get(&record.id).await.unwrap();
        assert_eq!(back.as_ref(), Some(record), "{}", record.id);
    }
    assert_eq!(
        store.stats().await.unwrap().live_sessions,
        Some(records.len() as u64)
    );
    // The owner index is rebuilt from the snapshot.
    for user in 0..7 {
        let owner = format!("user {user}");
        let mut listed: Vec<String> = store
            .list_by_owner(&owner, false)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        listed.sort();
        let expected: Vec<String> = records
            .iter()
            .filter(|r| r.owner.as_deref() == Some(owner.as_str()))
            .map(|r| r.id.clone())
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(listed, expected, "{owner}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_survive_sigterm_and_restart_field_for_field() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let daemon = Process::start(&["--data-dir", data_dir]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let records = save_many(&store, 1000).await;
    drop(store);
    let (status, log) = daemon.terminate().await;
    assert!(status.success(), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("snapshot written") && l.contains("\"sessions\":1000")),
        "{log:#?}"
    );

    let mut daemon = Process::start(&["--data-dir", data_dir]).await;
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("snapshot loaded") && l.contains("\"loaded\":1000"))
    );
    assert_all_back(&daemon.url(), &records).await;
    let _ = daemon.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_saved_before_the_last_snapshot_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut daemon = Process::start(&["--data-dir", data_dir, "--snapshot-interval", "1s"]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let records = save_many(&store, 100).await;
    // Wait for a snapshot that holds them all: one interval after the saves at most.
    daemon
        .wait_for(|l| l.contains("snapshot written") && l.contains("\"sessions\":100"))
        .await;
    daemon.child.kill().await.unwrap(); // SIGKILL: no shutdown snapshot
    daemon.child.wait().await.unwrap();

    let mut daemon = Process::start(&["--data-dir", data_dir]).await;
    assert_all_back(&daemon.url(), &records).await;
    let _ = daemon.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_snapshot_stops_start_up_with_directions() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let daemon = Process::start(&["--data-dir", data_dir]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    save_many(&store, 50).await;
    let (status, _) = daemon.terminate().await;
    assert!(status.success());
    let path = dir.path().join("sessions.snapshot");
    let good = std::fs::read(&path).unwrap();

    let mut corrupted = good.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    std::fs::write(&path, &corrupted).unwrap();
    let stderr = refuses_to_start(data_dir).await;
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(stderr.contains("mv "), "{stderr}");

    std::fs::write(&path, &good[..good.len() - 7]).unwrap();
    let stderr = refuses_to_start(data_dir).await;
    assert!(stderr.contains("truncated"), "{stderr}");

    // Moved aside as the message says, the daemon starts empty.
    std::fs::rename(&path, dir.path().join("sessions.snapshot.damaged")).unwrap();
    let mut daemon = Process::start(&["--data-dir", data_dir]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(store.stats().await.unwrap().live_sessions, Some(0));
    let _ = daemon.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_do_not_hold_shutdown_and_the_final_snapshot_is_written() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // The daemon's defaults but the data dir: a 1 s drain, a 10 s shutdown timeout.
    let daemon = Process::start(&["--data-dir", data_dir]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let records = save_many(&store, 100).await;

    // A health Watch stream (needs no token) and a connection that sent one byte.
    let channel = tonic::transport::Channel::from_shared(daemon.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "the first status");
    let mut one_byte = tokio::net::TcpStream::connect(&daemon.addr).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();

    let started = std::time::Instant::now();
    let (status, log) = daemon.terminate().await;
    let took = started.elapsed();
    eprintln!("SIGTERM to exit with a Watch stream and a 1-byte connection open: {took:?}");
    assert!(status.success(), "{log:#?}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("snapshot written") && l.contains("\"sessions\":100")),
        "{log:#?}"
    );
    drop((watch, one_byte, store));

    let mut daemon = Process::start(&["--data-dir", data_dir]).await;
    assert_all_back(&daemon.url(), &records).await;
    let _ = daemon.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_imported_into_redis_keeps_every_session_and_what_redis_had() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let daemon = Process::start(&["--data-dir", data_dir]).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let records = save_many(&store, 200).await;
    drop(store);
    let (status, log) = daemon.terminate().await;
    assert!(status.success(), "{log:#?}");

    let redis = gonest_session_test_support::RedisServer::start().await;
    let target = gonest_session_redis::RedisSessionStore::connect(redis.url())
        .await
        .unwrap();
    // A session Redis already has (written after the move began) is newer: it is kept.
    target
        .save(Save::new("session-00007", data(7000)))
        .await
        .unwrap();
    let snapshot = dir.path().join("sessions.snapshot");
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessiond"))
            .args(args)
            .output()
            .unwrap()
    };
    let import = vec![
        "--backend".to_owned(),
        redis.url(),
        "import".to_owned(),
        "--from-snapshot".to_owned(),
        snapshot.to_str().unwrap().to_owned(),
    ];
    let output = run(import.clone());
    assert!(output.status.success(), "{output:?}");
    let counts: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        counts,
        serde_json::json!({"imported": 199, "already_in_redis": 1, "expired": 0})
    );
    let millis =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    for record in &records {
        let back = target.get(&record.id).await.unwrap().unwrap();
        if record.id == "session-00007" {
            assert_eq!(back.data, data(7000), "what redis had is kept");
            continue;
        }
        assert_eq!(
            (&back.data, back.version, &back.owner),
            (&record.data, record.version, &record.owner),
            "{}",
            record.id
        );
        assert_eq!(millis(back.created_at), millis(record.created_at));
        assert_eq!(millis(back.expires_at), millis(record.expires_at));
    }
    let owned = target.list_by_owner("user 3", false).await.unwrap();
    assert!(!owned.is_empty());
    // Again: nothing is overwritten.
    let output = run(import);
    let counts: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(counts["imported"], 0);
    // Without a Redis backend, or with a damaged snapshot: refused, nothing written.
    let output = run(vec![
        "import".to_owned(),
        "--from-snapshot".to_owned(),
        snapshot.to_str().unwrap().to_owned(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Redis --backend"));
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&snapshot, bytes).unwrap();
    let output = run(vec![
        "--backend".to_owned(),
        redis.url(),
        "import".to_owned(),
        "--from-snapshot".to_owned(),
        snapshot.to_str().unwrap().to_owned(),
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("checksum"),
        "{output:?}"
    );
}

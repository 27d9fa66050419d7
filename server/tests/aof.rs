//! The append-only log: kill -9 loses no acknowledged write with `--appendfsync always`, a
//! torn last record is cut off with a warning, damage before it stops start-up with its file
//! and offset, snapshots start a new log file and remove the old ones, and a log that cannot
//! be written refuses writes until it can.

#![cfg(unix)]

mod common;

use std::path::Path;

use futures_util::StreamExt;
use std::time::Duration;

use common::{Process, refuses_to_start};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionRecord, SessionStore, StoreError};

const IDS: usize = 200;

fn data(i: usize) -> SessionData {
    [("n".to_owned(), i.to_string().into_bytes().into())].into()
}

fn id(i: usize) -> String {
    format!("session-{i:04}")
}

/// Saves, saves again, touches, destroys and logs owners out; returns what every id holds.
async fn churn(store: &RemoteSessionStore) -> Vec<Option<SessionRecord>> {
    for i in 0..IDS {
        store
            .save(Save::new(id(i), data(i)).owner(format!("user {}", i % 5)))
            .await
            .unwrap();
    }
    for i in (0..IDS).step_by(3) {
        store.save(Save::new(id(i), data(i + 1000))).await.unwrap();
    }
    for i in (1..IDS).step_by(7) {
        store
            .touch(&id(i), Some(Duration::from_secs(600)))
            .await
            .unwrap();
    }
    for i in (2..IDS).step_by(11) {
        store.destroy(&id(i)).await.unwrap();
    }
    store.destroy_by_owner("user 4", &[]).await.unwrap();
    state(store).await
}

async fn state(store: &RemoteSessionStore) -> Vec<Option<SessionRecord>> {
    let mut all = Vec::new();
    for i in 0..IDS {
        all.push(store.get(&id(i)).await.unwrap());
    }
    all
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("sessions.aof."))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_always_kill_9_loses_no_acknowledged_write_and_owners_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = [
        "--data-dir",
        data_dir,
        "--appendfsync",
        "always",
        "--snapshot-interval",
        "1h",
    ];
    let mut daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let before = churn(&store).await;
    assert!(before.iter().any(Option::is_none) && before.iter().any(Option::is_some));
    daemon.child.kill().await.unwrap(); // SIGKILL: no snapshot, only the log
    daemon.child.wait().await.unwrap();
    assert!(!dir.path().join("sessions.snapshot").exists());

    let mut daemon = Process::start(&flags).await;
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("log replayed") && l.contains("sessions.aof.1")),
        "{:#?}",
        daemon.seen
    );
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(state(&store).await, before);
    // The owner index is rebuilt: "log out everywhere" reaches what the log brought back.
    let owned = before
        .iter()
        .flatten()
        .filter(|r| r.owner.as_deref() == Some("user 1"))
        .count() as u64;
    assert!(owned > 0);
    assert_eq!(store.destroy_by_owner("user 1", &[]).await.unwrap(), owned);
    let _ = daemon.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_with_a_warning_and_damage_before_it_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = ["--data-dir", data_dir, "--appendfsync", "always"];
    let mut daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let before = churn(&store).await;
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();
    let path = dir.path().join("sessions.aof.1");
    let good = std::fs::read(&path).unwrap();

    // A crash in the middle of a write: half a record at the end.
    let mut torn = good.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9]);
    std::fs::write(&path, &torn).unwrap();
    let mut daemon = Process::start(&flags).await;
    let warning = daemon
        .seen
        .iter()
        .find(|l| l.contains("cut off there"))
        .unwrap_or_else(|| panic!("no warning: {:#?}", daemon.seen))
        .clone();
    assert!(warning.contains(path.to_str().unwrap()), "{warning}");
    assert!(
        warning.contains(&format!("\"offset\":{}", good.len())),
        "{warning}"
    );
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(state(&store).await, before);
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "cut where the torn record began"
    );

    // Damage in the middle: no start, and the message names the file and the offset.
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    let stderr = refuses_to_start(data_dir).await;
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("damaged at byte "), "{stderr}");
    assert!(stderr.contains("truncate -s "), "{stderr}");
    let _ = store;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_starts_a_new_log_and_removes_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = ["--data-dir", data_dir, "--snapshot-interval", "1s"];
    let mut daemon = Process::start(&flags).await;
    assert_eq!(log_files(dir.path()), ["sessions.aof.1"]);
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let before = churn(&store).await;
    daemon.wait_for(|l| l.contains("snapshot written")).await;
    let files = log_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(files, ["sessions.aof.1"], "a new file since the snapshot");
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();
    let daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(state(&store).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_past_its_bound_brings_a_snapshot_early_and_starts_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let flags = [
        "--data-dir",
        data_dir,
        "--snapshot-interval",
        "1h",
        "--log-rewrite-min-size",
        "64KiB",
    ];
    let mut daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    // One session saved over and over: the log grows, the snapshot stays one session.
    let big: SessionData = [("v".to_owned(), vec![b'x'; 4096].into())].into();
    for _ in 0..40 {
        store.save(Save::new("grows", big.clone())).await.unwrap();
    }
    daemon
        .wait_for(|l| l.contains("taking a snapshot early"))
        .await;
    daemon.wait_for(|l| l.contains("snapshot written")).await;
    let files = log_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(files, ["sessions.aof.1"], "a new file since the snapshot");
    let size = std::fs::metadata(dir.path().join(&files[0])).unwrap().len();
    assert!(size < 64 << 10, "the new log starts small: {size}");
    let before = store.get("grows").await.unwrap();
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();
    let daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(store.get("grows").await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_refuses_writes_until_it_can_and_loses_nothing_answered() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // The first log file is a device that is always full: every write fails (ENOSPC).
    let path = dir.path().join("sessions.aof.1");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let flags = ["--data-dir", data_dir, "--snapshot-interval", "1h"];
    let mut daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    // A save is answered once the log has it: the first one the log cannot take is refused,
    // and so is every one after it. (The refused save was applied before the log failed: like
    // a save whose answer timed out, it may or may not be there.)
    let refused = (
        "early".to_owned(),
        store
            .save(Save::new("early", data(1)))
            .await
            .expect_err("the log cannot be written"),
    );
    let again = store.save(Save::new("again", data(1))).await.unwrap_err();
    assert!(matches!(again, StoreError::LogFailing(_)), "{again:?}");
    assert!(
        matches!(refused.1, StoreError::LogFailing(_)) && refused.1.is_transient(),
        "{:?}",
        refused.1
    );
    assert!(
        refused.1.to_string().contains("append-only log"),
        "{}",
        refused.1
    );
    daemon
        .wait_for(|l| l.contains("cannot be written") && l.contains("No space left"))
        .await;
    // Reads go on.
    store.get(&refused.0).await.unwrap();
    assert_eq!(
        store.get("again").await.unwrap(),
        None,
        "refused before it was applied"
    );

    // The disk is back: the held writes go to it, and writes resume by themselves.
    std::fs::remove_file(&path).unwrap();
    daemon
        .wait_for(|l| l.contains("written again; writes resume"))
        .await;
    assert!(std::fs::metadata(&path).unwrap().is_file());
    let saved = loop {
        match store.save(Save::new("after", data(3))).await {
            Ok(saved) => break saved,
            Err(StoreError::LogFailing(_)) => tokio::task::yield_now().await,
            Err(err) => panic!("{err:?}"),
        }
    };
    assert_eq!(saved.version, 1);
    daemon.child.kill().await.unwrap();
    daemon.child.wait().await.unwrap();

    let daemon = Process::start(&flags).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let back = store.get("after").await.unwrap().expect("acknowledged");
    assert_eq!(back.version, 1);
    assert_eq!(store.get("again").await.unwrap(), None);
}

/// One acknowledged save: which session, at which version, when the answer came.
struct Acked {
    id: String,
    version: u64,
    at: std::time::Instant,
}

/// What the crash rounds of one setting found.
#[derive(Debug, Default)]
struct Crashes {
    acknowledged: usize,
    missing: usize,
    /// Missing and acknowledged more than 2 s before the kill.
    missing_older_than_2s: usize,
}

/// `rounds` times: a daemon with `--appendfsync policy` under four writers, each saving new
/// sessions and saving some again, killed with SIGKILL `kill_after` (plus a varying part) after
/// the load began; after a restart, every acknowledged save is looked up (its version, or a
/// later one, must be there). Rounds: `AOF_CRASH_ROUNDS` if set, else `default_rounds`.
async fn crash_rounds(policy: &str, default_rounds: usize, kill_after: Duration) -> Crashes {
    let rounds = std::env::var("AOF_CRASH_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(default_rounds);
    let mut found = Crashes::default();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let flags = ["--data-dir", data_dir, "--appendfsync", policy];
        let mut daemon = Process::start(&flags).await;
        let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Acked>::new()));
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let (store, acked) = (store.clone(), acked.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        // Every third save is of a session saved before: versions move too.
                        let id = if n % 3 == 2 {
                            format!("w{writer}-{}", n - 2)
                        } else {
                            format!("w{writer}-{n}")
                        };
                        let Ok(saved) = store.save(Save::new(id.as_str(), data(n))).await else {
                            return;
                        };
                        acked.lock().unwrap().push(Acked {
                            id,
                            version: saved.version,
                            at: std::time::Instant::now(),
                        });
                    }
                })
            })
            .collect();
        // A moment that moves from round to round, not chosen by the daemon's state.
        let at = kill_after + Duration::from_millis((round as u64 * 37) % 300);
        tokio::time::sleep(at).await;
        daemon.child.kill().await.unwrap();
        let killed = std::time::Instant::now();
        daemon.child.wait().await.unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
        drop(store);

        let daemon = Process::start(&flags).await;
        let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        let mut newest = std::collections::HashMap::new();
        for ack in &acked {
            let entry = newest.entry(ack.id.clone()).or_insert((0, ack.at));
            if ack.version > entry.0 {
                *entry = (ack.version, ack.at);
            }
        }
        found.acknowledged += acked.len();
        let backs: Vec<_> = futures_util::stream::iter(newest)
            .map(|(id, (version, at))| {
                let store = store.clone();
                async move {
                    let back = store.get(&id).await.unwrap().map_or(0, |r| r.version);
                    (back, version, at)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (back, version, at) in backs {
            if back < version {
                found.missing += 1;
                if killed.duration_since(at) > Duration::from_secs(2) {
                    found.missing_older_than_2s += 1;
                }
            }
        }
        drop(daemon);
    }
    eprintln!("--appendfsync {policy}, {rounds} rounds of kill -9 under load: {found:?}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_always_kill_9_under_load_loses_no_acknowledged_save() {
    let found = crash_rounds("always", 20, Duration::from_millis(100)).await;
    assert!(found.acknowledged > 0);
    assert_eq!(found.missing, 0, "{found:?}");
}

/// A save is answered once the log file has it (synced later): a process killed at any
/// moment has answered no save its log lacks, so none is missing, let alone one answered 2 s
/// before the kill (what `everysec` promises against a power cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everysec_kill_9_under_load_loses_no_acknowledged_save() {
    let found = crash_rounds("everysec", 20, Duration::from_millis(100)).await;
    assert!(found.acknowledged > 0);
    assert_eq!(found.missing_older_than_2s, 0, "{found:?}");
    assert_eq!(found.missing, 0, "{found:?}");
}

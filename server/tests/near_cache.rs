//! A near cache cut off from its daemon: SIGSTOP the daemon process, and within twice the
//! heartbeat interval no cached session is served any more (an error, never a stale answer);
//! SIGCONT brings the hits back.

#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::Process;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};

/// Twice the daemon's heartbeat interval (500 ms), counted from the last message the client
/// heard (sent before the SIGSTOP), and 50 ms for that message's way and this test's own
/// checks: how long a silent daemon's sessions may still be served.
const BOUND: Duration = Duration::from_millis(1050);

fn signal(process: &Process, name: &str) {
    let pid = process.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

async fn serving(store: &RemoteSessionStore, serving: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.near_cache_stats().unwrap().serving != serving {
        assert!(Instant::now() < deadline, "{:?}", store.near_cache_stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_s_sessions_stop_being_served_within_twice_the_heartbeat() {
    let daemon = Process::start(&[]).await;
    let store = RemoteSessionStore::builder(daemon.url())
        .near_cache(100)
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    serving(&store, true).await;
    let data: SessionData = [("user_id".to_owned(), b"42".to_vec().into())].into();
    store.save(Save::new("s", data)).await.unwrap();
    // The save's own invalidation, then a read that stays cached.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.near_cache_stats().unwrap().invalidations == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store.get("s").await.unwrap();
    let hits = store.near_cache_stats().unwrap().hits;
    assert!(store.get("s").await.unwrap().is_some());
    assert_eq!(store.near_cache_stats().unwrap().hits, hits + 1);

    signal(&daemon, "-STOP");
    let stopped = Instant::now();
    let (mut served, mut last_served) = (0, Duration::ZERO);
    let refused = loop {
        match store.get("s").await {
            Ok(Some(_)) => {
                served += 1;
                last_served = stopped.elapsed();
                assert!(last_served <= BOUND, "served {last_served:?} after SIGSTOP");
            }
            Ok(None) => panic!("the session is there"),
            Err(err) => break err,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "after SIGSTOP: served from the cache {served} times, the last {last_served:?} after; \
         then {refused} at {:?}",
        stopped.elapsed()
    );
    assert!(!store.near_cache_stats().unwrap().serving);

    signal(&daemon, "-CONT");
    serving(&store, true).await;
    store.get("s").await.unwrap();
    let hits = store.near_cache_stats().unwrap().hits;
    assert!(store.get("s").await.unwrap().is_some());
    assert_eq!(
        store.near_cache_stats().unwrap().hits,
        hits + 1,
        "hits are back"
    );
    daemon.terminate().await;
}

//! The near cache against real daemons: hits make no call, a change through another client is
//! dropped, a restart drops everything, and a daemon that cannot track leaves it off.

use std::time::Duration;

use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use gonest_session_test_support::{Daemon, RedisServer};
use gonest_sessiond::{Config, StoreBackend};
use tokio::net::TcpListener;

fn data(value: &str) -> SessionData {
    [("k".to_owned(), value.as_bytes().to_vec().into())].into()
}

async fn cached(url: &str) -> RemoteSessionStore {
    RemoteSessionStore::builder(url)
        .near_cache(100)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

/// Waits (5 s at most) until `check` holds for the store's near cache counters.
async fn until(
    store: &RemoteSessionStore,
    what: &str,
    check: impl Fn(&gonest_session_client::NearCacheStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = store.near_cache_stats().unwrap();
        if check(&stats) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_makes_no_call_and_another_clients_change_is_dropped() {
    let daemon = Daemon::start(Config::default()).await;
    let a = cached(&daemon.url()).await;
    let b = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    until(&a, "serving", |stats| stats.serving).await;

    a.save(Save::new("s", data("1"))).await.unwrap();
    // The daemon tells A of A's own save too; after that, nothing changes it.
    until(&a, "the save's invalidation", |stats| {
        stats.invalidations == 1
    })
    .await;
    assert_eq!(a.get("s").await.unwrap().unwrap().data, data("1"));
    let before = b.stats().await.unwrap();
    for _ in 0..10 {
        assert_eq!(a.get("s").await.unwrap().unwrap().data, data("1"));
    }
    let stats = a.near_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (10, 1), "{stats:?}");
    // Reads served from memory reach no daemon: its counters did not move.
    assert_eq!(b.stats().await.unwrap().live_sessions, before.live_sessions);

    // B changes it: once A has heard, A reads B's version, never its own copy again.
    let invalidations = stats.invalidations;
    b.save(Save::new("s", data("2"))).await.unwrap();
    until(&a, "the invalidation", |stats| {
        stats.invalidations > invalidations
    })
    .await;
    assert_eq!(a.get("s").await.unwrap().unwrap().data, data("2"));

    // A's own writes: read back at once, no invalidation needed.
    a.save(Save::new("s", data("3"))).await.unwrap();
    assert_eq!(a.get("s").await.unwrap().unwrap().data, data("3"));
    assert!(a.destroy("s").await.unwrap());
    assert_eq!(a.get("s").await.unwrap(), None);

    // "Log out everywhere" through B: A drops that owner's sessions, and keeps the rest.
    let owned = |id: &str| Save::new(id, data("x")).owner("u");
    a.save(owned("o1")).await.unwrap();
    a.save(Save::new("p", data("y"))).await.unwrap();
    // Every change so far is heard back: the saves of "s" by A, B and A, its destroy, and these
    // two saves.
    until(&a, "every change's invalidation", |stats| {
        stats.invalidations == 6
    })
    .await;
    a.get("o1").await.unwrap();
    a.get("p").await.unwrap();
    let before = a.near_cache_stats().unwrap();
    assert_eq!(b.destroy_by_owner("u", &[]).await.unwrap(), 1);
    until(&a, "the owner's invalidation", |stats| {
        stats.invalidations > before.invalidations
    })
    .await;
    assert_eq!(a.get("o1").await.unwrap(), None);
    assert!(a.get("p").await.unwrap().is_some());
    let after = a.near_cache_stats().unwrap();
    assert_eq!(after.flushes, before.flushes, "no flush: {after:?}");
    assert_eq!(after.hits, before.hits + 1, "p is still cached: {after:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_leaves_nothing_cached() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = Daemon::start_on(listener, Config::default()).await;
    let a = cached(&daemon.url()).await;
    until(&a, "serving", |stats| stats.serving).await;
    a.save(Save::new("s", data("1"))).await.unwrap();
    until(&a, "the save's invalidation", |stats| {
        stats.invalidations == 1
    })
    .await;
    a.get("s").await.unwrap();
    assert!(a.get("s").await.unwrap().is_some());
    assert!(a.near_cache_stats().unwrap().hits > 0);

    // No data dir: the new daemon has no sessions, and no cache may serve the old ones once
    // it has heard the old stream end (or, at the latest, twice the heartbeat later).
    let flushes = a.near_cache_stats().unwrap().flushes;
    let stopped = std::time::Instant::now();
    daemon.stop().await.unwrap();
    let daemon = Daemon::start_on(Daemon::listen_again(addr).await, Config::default()).await;
    until(&a, "the old stream's end", |stats| stats.flushes > flushes).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(a.get("s").await.unwrap(), None);
    until(&a, "serving again", |stats| stats.serving).await;
    assert_eq!(a.get("s").await.unwrap(), None);
    assert_eq!(a.near_cache_stats().unwrap().entries, 0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_redis_refuses_to_track_and_the_cache_stays_off() {
    let redis = RedisServer::start().await;
    let daemon = Daemon::start(Config {
        backend: StoreBackend::Redis(redis.url()),
        ..Config::default()
    })
    .await;
    let a = cached(&daemon.url()).await;
    a.save(Save::new("s", data("1"))).await.unwrap();
    for _ in 0..5 {
        assert_eq!(a.get("s").await.unwrap().unwrap().data, data("1"));
    }
    let stats = a.near_cache_stats().unwrap();
    assert!(!stats.serving, "{stats:?}");
    assert_eq!(
        (stats.hits, stats.entries),
        (0, 0),
        "never served: {stats:?}"
    );
    daemon.stop().await.unwrap();
}

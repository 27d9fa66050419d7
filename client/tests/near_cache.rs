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

fn on(redis: &RedisServer) -> Config {
    Config {
        backend: StoreBackend::Redis(redis.url()),
        ..Config::default()
    }
}

/// Two daemons on one Redis, a cached client on each: every change through one daemon reaches
/// the other daemon's client (relayed through Redis), so neither serves what the other changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_each_daemons_clients_hear_the_other_daemons_changes() {
    let redis = RedisServer::start().await;
    let (one, two) = (
        Daemon::start(on(&redis)).await,
        Daemon::start(on(&redis)).await,
    );
    let (a, b) = (cached(&one.url()).await, cached(&two.url()).await);
    until(&a, "A serving", |stats| stats.serving).await;
    until(&b, "B serving", |stats| stats.serving).await;
    // (A Track opened before the daemon's relay was live was refused: a flush, of nothing.)
    let flushes = b.near_cache_stats().unwrap().flushes;

    // A logs in through daemon one; B reads and caches it through daemon two.
    a.save(Save::new("s", data("1")).owner("u")).await.unwrap();
    until(&b, "B hears A's save", |stats| stats.invalidations == 1).await;
    assert_eq!(b.get("s").await.unwrap().unwrap().data, data("1"));
    assert_eq!(b.get("s").await.unwrap().unwrap().data, data("1"));
    assert_eq!(b.near_cache_stats().unwrap().hits, 1);

    // Each kind of change through daemon one drops B's copy.
    type Change = fn(&RemoteSessionStore) -> futures_util::future::BoxFuture<'_, ()>;
    let changes: [(&str, Change); 4] = [
        ("save", |a| {
            Box::pin(async {
                a.save(Save::new("s", data("2")).owner("u")).await.unwrap();
            })
        }),
        ("touch", |a| {
            Box::pin(async {
                a.touch("s", Some(Duration::from_secs(60))).await.unwrap();
            })
        }),
        ("destroy by owner", |a| {
            Box::pin(async {
                assert_eq!(a.destroy_by_owner("u", &[]).await.unwrap(), 1);
            })
        }),
        ("destroy", |a| {
            Box::pin(async {
                assert!(a.destroy("s").await.unwrap());
            })
        }),
    ];
    for (what, change) in changes {
        if a.get("s").await.unwrap().is_none() {
            a.save(Save::new("s", data("again")).owner("u"))
                .await
                .unwrap();
        }
        let before = b.near_cache_stats().unwrap();
        let current = a.get("s").await.unwrap().unwrap();
        // Read through B until B holds it (its own fill may race the save's invalidation).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let read = b.get("s").await.unwrap().unwrap();
            if read.version == current.version && b.near_cache_stats().unwrap().entries == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: B never caches it"
            );
        }
        let heard = b.near_cache_stats().unwrap().invalidations;
        change(&a).await;
        until(&b, what, |stats| stats.invalidations > heard).await;
        let now = a.get("s").await.unwrap();
        let read = b.get("s").await.unwrap();
        assert_eq!(
            read.as_ref().map(|r| (r.version, r.expires_at)),
            now.as_ref().map(|r| (r.version, r.expires_at)),
            "{what}: B reads what A reads ({before:?})"
        );
    }
    assert_eq!(b.near_cache_stats().unwrap().flushes, flushes, "no flush");
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// A Redis that stops answering stops the relay: within twice the heartbeat the clients stop
/// serving from their caches (a Get then fails rather than serving what may be stale), and once
/// Redis answers again they are kept true, and serve, again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_relay_that_stops_stops_the_cache_until_it_is_back() {
    let redis = RedisServer::start().await;
    let daemon = Daemon::start(on(&redis)).await;
    let a = cached(&daemon.url()).await;
    until(&a, "serving", |stats| stats.serving).await;
    a.save(Save::new("s", data("1"))).await.unwrap();
    until(&a, "the save's invalidation", |stats| {
        stats.invalidations == 1
    })
    .await;
    a.get("s").await.unwrap();
    assert!(a.get("s").await.unwrap().is_some());
    assert_eq!(a.near_cache_stats().unwrap().hits, 1);

    redis.pause();
    let paused = std::time::Instant::now();
    until(&a, "no longer serving", |stats| !stats.serving).await;
    // Twice the heartbeat (500 ms) after the last one relayed before the pause, and the test's
    // polling.
    assert!(
        paused.elapsed() < Duration::from_millis(1150),
        "{:?}",
        paused.elapsed()
    );
    let hits = a.near_cache_stats().unwrap().hits;
    assert!(
        a.get("s").await.is_err(),
        "Redis does not answer: the Get fails, not served from the cache"
    );
    assert_eq!(a.near_cache_stats().unwrap().hits, hits);

    redis.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = a.near_cache_stats().unwrap();
        if stats.serving
            && a.get("s").await.is_ok()
            && a.get("s").await.is_ok()
            && a.near_cache_stats().unwrap().hits > hits
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving again: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await.unwrap();
}

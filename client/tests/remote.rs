//! RemoteSessionStore against a real daemon on `127.0.0.1:0`.

use std::time::{Duration, Instant};

use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore, StoreError};
use gonest_session_test_support::Daemon;
use gonest_sessiond::Config;
use tokio::net::TcpListener;

fn data(pairs: &[(&str, &str)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_their_own_answer() {
    let daemon = Daemon::start(Config::default()).await;
    let store = RemoteSessionStore::builder(daemon.url())
        .streams(3)
        .connect()
        .await
        .unwrap();
    for i in 0..200 {
        store
            .save(Save::new(format!("s{i}"), data(&[("i", &i.to_string())])))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..50)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..40 {
                    let i = (worker * 7 + round * 13) % 200;
                    let record = store.get(&format!("s{i}")).await.unwrap().unwrap();
                    assert_eq!(record.id, format!("s{i}"));
                    assert_eq!(record.data["i"], i.to_string().as_bytes());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_stopped_daemon_is_unavailable_and_a_restarted_one_is_used_again() {
    let first = Daemon::start(Config::default()).await;
    let addr = first.addr;
    let store = RemoteSessionStore::builder(first.url())
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    store.save(Save::new("s", data(&[]))).await.unwrap();
    first.stop().await.unwrap();

    let started = Instant::now();
    let err = store.get("s").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = store.save(Save::new("s", data(&[]))).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Same port, new daemon (empty: it keeps nothing across restarts without persistence).
    let second = Daemon::start_on(Daemon::listen_again(addr).await, Config::default()).await;
    let mut recovered = None;
    for _ in 0..3 {
        match store.save(Save::new("s", data(&[("back", "1")]))).await {
            Ok(saved) => {
                recovered = Some(saved);
                break;
            }
            Err(err) => assert!(err.is_transient(), "{err:?}"),
        }
    }
    assert_eq!(recovered.expect("store did not reconnect").version, 1);
    assert!(store.get("s").await.unwrap().is_some());
    second.stop().await.unwrap();
}

#[tokio::test]
async fn connect_fails_clearly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = RemoteSessionStore::connect(format!("http://{addr}"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = RemoteSessionStore::connect("not a url").await.unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidArgument(ref m) if m.contains("invalid daemon url")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_save_is_refused_before_sending_and_other_callers_go_on() {
    let daemon = Daemon::start(Config {
        max_session_bytes: 64 * 1024,
        ..Config::default()
    })
    .await;
    // One stream, shared by every caller: an oversized message on it must not end it.
    let store = RemoteSessionStore::builder(daemon.url())
        .streams(1)
        .connect_lazy()
        .unwrap();
    let big =
        |bytes: usize| -> SessionData { [("blob".to_owned(), vec![b'x'; bytes].into())].into() };
    let callers: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .save(Save::new(format!("s{i}"), data(&[("n", "1")])))
                    .await
            })
        })
        .collect();
    for bytes in [64 * 1024 + 1, 5 << 20] {
        let err = store.save(Save::new("big", big(bytes))).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::TooLarge {
                size: bytes + 4,
                limit: 64 * 1024
            }
        );
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().version, 1);
    }
    assert_eq!(store.stats().await.unwrap().live_sessions, Some(50));
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.max_session_bytes, Some(64 * 1024));
    assert_eq!(stats.max_ttl, Some(Duration::from_secs(30 * 86400)));
    daemon.stop().await.unwrap();
}

// Values on both sides of the size the daemon sends as frames of their own (64 KiB), read by many
// callers at once so that answers of every size share the stream's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_large_and_small_values_come_back_exactly() {
    let daemon = Daemon::start(Config::default()).await;
    let store = RemoteSessionStore::builder(daemon.url())
        .streams(2)
        .connect()
        .await
        .unwrap();
    let value =
        |len: usize, seed: usize| -> Vec<u8> { (0..len).map(|i| (i * 31 + seed) as u8).collect() };
    let sessions: Vec<SessionData> = (0..24)
        .map(|n| {
            let len = [0, 10, 1000, 65535, 65536, 65537, 16384, 100_000][n % 8];
            [
                ("v".to_owned(), value(len, n).into()),
                ("w".to_owned(), value(n * 300, n + 1).into()),
            ]
            .into()
        })
        .collect();
    for (n, data) in sessions.iter().enumerate() {
        store
            .save(Save::new(format!("s{n}"), data.clone()))
            .await
            .unwrap();
    }
    let sessions = std::sync::Arc::new(sessions);
    let tasks: Vec<_> = (0..40)
        .map(|worker| {
            let (store, sessions) = (store.clone(), sessions.clone());
            tokio::spawn(async move {
                for round in 0..25 {
                    let n = (worker * 5 + round * 7) % sessions.len();
                    let record = store.get(&format!("s{n}")).await.unwrap().unwrap();
                    assert_eq!(record.data, sessions[n], "s{n}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_4_mib_reads_back() {
    let daemon = Daemon::start(Config {
        max_session_bytes: 16 << 20,
        ..Config::default()
    })
    .await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let data: SessionData = [("blob".to_owned(), vec![b'y'; 12 << 20].into())].into();
    store.save(Save::new("big", data.clone())).await.unwrap();
    assert_eq!(store.get("big").await.unwrap().unwrap().data, data);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_daemons_on_one_redis_one_going_away_is_survived() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let config = || Config {
        backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
        ..Config::default()
    };
    let (a, b) = (Daemon::start(config()).await, Daemon::start(config()).await);
    let urls = format!("{},{}", a.url(), b.url());
    let store = RemoteSessionStore::builder(&urls)
        .streams(4)
        .connect()
        .await
        .unwrap();
    for i in 0..50 {
        store
            .save(Save::new(format!("s{i}"), data(&[("n", "1")])))
            .await
            .unwrap();
    }
    // Both daemons are up.
    let served = |daemon: &Daemon| {
        let mut client = daemon.client();
        async move {
            client
                .stats(gonest_session_proto::pb::StatsRequest::default())
                .await
                .is_ok()
        }
    };
    assert!(served(&a).await && served(&b).await);

    a.stop().await.unwrap();
    // Each stream that was on `a` fails its next save once (saves are not retried) and reopens
    // on `b`: within seconds, 20 saves in a row succeed, and then every operation does.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(Instant::now() < deadline, "no failover to the other daemon");
        match store.save(Save::new("warm", data(&[("n", "1")]))).await {
            Ok(_) => in_a_row += 1,
            Err(_) => in_a_row = 0,
        }
    }
    for i in 0..200 {
        let id = format!("s{}", i % 50);
        let record = store
            .get(&id)
            .await
            .unwrap()
            .expect("saved through either daemon");
        store
            .save(Save::new(&id, record.data).expected_version(record.version))
            .await
            .unwrap();
    }
    // A list with none reachable fails to connect, clearly.
    let err = RemoteSessionStore::connect("http://127.0.0.1:1,http://127.0.0.1:2")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    b.stop().await.unwrap();
}

/// Connecting learns the daemon's limits from a `Stats` as the counters stand, which does not
/// count the live sessions; an exact `stats` counts them, and neither removes the expired ones.
#[tokio::test(start_paused = true)]
async fn connecting_does_not_wait_for_the_expired_sessions_to_be_removed() {
    let daemon = Daemon::start(Config::default()).await;
    let filler = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    for i in 0..20 {
        filler
            .save(Save::new(format!("s{i}"), data(&[])).ttl(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;

    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    store.save(Save::new("new", data(&[]))).await.unwrap();

    let stored = store.stats_as_stored().await.unwrap();
    assert_eq!(
        (stored.live_sessions, stored.expired_removed_total),
        (Some(21), Some(0)),
        "nothing was removed to answer the new client"
    );
    let exact = store.stats().await.unwrap();
    assert_eq!(
        (exact.live_sessions, exact.expired_removed_total),
        (Some(1), Some(0))
    );
}

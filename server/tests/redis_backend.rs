//! The daemon on Redis: the same contract, shared by several daemons, refused settings that
//! belong to the memory backend, and Redis going away.

mod common;

use std::time::Duration;

use common::{Daemon, get, owned_by, save};
use gonest_session_proto::pb;
use gonest_session_test_support::{RedisSentinel, RedisServer};
use gonest_sessiond::{Config, StoreBackend};
use tonic::Code;

fn on(redis: &RedisServer) -> Config {
    Config {
        backend: StoreBackend::Redis(redis.url()),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_redis_with_compare_and_swap_across_them() {
    let redis = RedisServer::start().await;
    let (first, second) = (
        Daemon::start(on(&redis)).await,
        Daemon::start(on(&redis)).await,
    );
    let (mut one, mut two) = (first.client(), second.client());

    let saved = one
        .save(save("s", &[("k", "1")], Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.version, 1);
    let got = two
        .get(get("s"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!((got.version, &got.data["k"][..]), (1, &b"1"[..]));
    assert_eq!(got.created_at, saved.created_at);

    // A save through the second daemon at the version the first one wrote...
    assert_eq!(
        two.save(save("s", &[("k", "2")], Some(1)))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    // ...makes the first daemon's stale save a conflict.
    let status = one
        .save(save("s", &[("k", "stale")], Some(1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);

    let touched = one
        .touch(pb::TouchRequest {
            id: "s".into(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(touched.found);
    assert!(
        two.destroy(pb::DestroyRequest { id: "s".into() })
            .await
            .unwrap()
            .into_inner()
            .existed
    );
    assert_eq!(one.get(get("s")).await.unwrap().into_inner().session, None);

    // The limits are the daemon's, the same on Redis.
    let big = "x".repeat(2 << 20);
    let status = one
        .save(save("big", &[("k", &big)], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = one.get(get("bad id")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn memory_only_settings_are_refused_with_redis() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        persistence: Some(gonest_sessiond::Persistence {
            dir: dir.path().to_owned(),
            interval: Duration::from_secs(30),
            appendfsync: gonest_sessiond::AppendFsync::Everysec,
            log_rewrite_min_bytes: gonest_sessiond::REWRITE_MIN_BYTES,
        }),
        ..on(&redis)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = gonest_sessiond::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("--data-dir"), "{err:#}");
}

/// What happens to the daemon's Redis in [`redis_failing`].
#[derive(PartialEq)]
enum Fault {
    /// Killed (its sessions with it), then started again.
    Gone,
    /// Hung: answers nothing, connections open (SIGSTOP), then answering again.
    Hung,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_means_unavailable_and_not_serving_until_it_is_back() {
    redis_failing(Fault::Gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_means_unavailable_and_not_serving_and_loses_nothing() {
    redis_failing(Fault::Hung).await;
}

/// Calls answer `UNAVAILABLE` within 3 s, health turns `NOT_SERVING`, and once Redis answers
/// again the same daemon serves again (with every session, when Redis kept them).
async fn redis_failing(fault: Fault) {
    use tonic_health::pb::health_client::HealthClient;
    let mut redis = RedisServer::start().await;
    let daemon = Daemon::start(on(&redis)).await;
    let mut client = daemon.client();
    client.save(save("s", &[("k", "1")], None)).await.unwrap();
    let mut health = HealthClient::new(daemon.channel.clone());
    assert_eq!(
        health_status(&mut health).await,
        tonic_health::ServingStatus::Serving as i32
    );

    match fault {
        Fault::Gone => redis.kill(),
        Fault::Hung => redis.pause(),
    }
    let faulted = tokio::time::Instant::now();
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), client.get(get("s")))
        .await
        .expect("a call on a daemon whose Redis is gone must not hang")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Health follows within 2 s (a check every second, each given a second), as the README
    // says; a little more here for the test's own polling.
    while health_status(&mut health).await != tonic_health::ServingStatus::NotServing as i32 {
        assert!(
            faulted.elapsed() < Duration::from_millis(2500),
            "still serving {:?} after the fault",
            faulted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis back: the same daemon serves again, without a restart.
    match fault {
        Fault::Gone => redis.start_again().await,
        Fault::Hung => redis.resume(),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = health_status(&mut health).await;
        if status == tonic_health::ServingStatus::Serving as i32
            && client
                .save(save("after", &[("k", "1")], None))
                .await
                .is_ok()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let saved = client.save(save("after", &[("k", "1")], None)).await;
            panic!("not serving again: health {status}, save {saved:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = client.get(get("after")).await.unwrap().into_inner();
    assert!(got.session.is_some());
    if fault == Fault::Hung {
        let kept = client.get(get("s")).await.unwrap().into_inner();
        assert_eq!(kept.session.map(|s| s.version), Some(1), "no session lost");
    }
    daemon.stop().await.unwrap();
}

/// What the daemon's health service says of the whole server now.
async fn health_status(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
) -> i32 {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_failing_over_loses_no_login_and_the_daemon_carries_on() {
    let cluster = gonest_session_test_support::RedisCluster::start_with_replicas().await;
    let daemon = Daemon::start(Config {
        backend: StoreBackend::Redis(cluster.url()),
        ..Config::default()
    })
    .await;
    let mut client = daemon.client();
    let owned = |id: &str, value: &str, expected: Option<u64>| {
        owned_by(save(id, &[("k", value)], expected), "42")
    };
    for i in 0..200 {
        client
            .save(owned(&format!("s{i}"), "1", Some(0)))
            .await
            .unwrap();
    }

    let promoted = cluster.fail_over().await;
    assert!(cluster.cli(promoted, "ROLE").starts_with("master"));

    // Every login is still there, at its version; writes go on (the client follows the new
    // master; a call during the switch may be UNAVAILABLE and is tried again).
    for i in 0..200 {
        let id = format!("s{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let session = loop {
            match client.get(get(&id)).await {
                Ok(answer) => break answer.into_inner().session.expect("no login lost"),
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(tokio::time::Instant::now() < deadline, "{status}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("{status}"),
            }
        };
        assert_eq!((session.version, session.owner.as_str()), (1, "42"));
        client.save(owned(&id, "2", Some(1))).await.unwrap();
    }
    let listed = client
        .list_by_owner(pb::ListByOwnerRequest {
            owner: "42".into(),
            with_data: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 200);
    assert!(listed.sessions.iter().all(|s| s.version == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_write_is_acknowledged_only_once_a_replica_has_it() {
    let primary = RedisServer::start_primary().await;
    let mut replica = RedisServer::start_replica_of(&primary).await;
    let daemon = Daemon::start(Config {
        redis_wait_replicas: 1,
        redis_wait_timeout: Duration::from_millis(300),
        ..on(&primary)
    })
    .await;
    let mut client = daemon.client();
    let on_replica = gonest_session_redis::RedisSessionStore::connect(replica.url())
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("s{i}");
        client
            .save(save(&id, &[("k", "1")], Some(0)))
            .await
            .unwrap();
        // Acknowledged: the replica has it already, with no waiting.
        let copy = gonest_session_core::SessionStore::get(&on_replica, &id)
            .await
            .unwrap();
        assert_eq!(copy.map(|s| s.version), Some(1), "{id}");
    }

    // No replica to confirm: the write is UNAVAILABLE, within the wait and the call budget.
    replica.kill();
    let started = tokio::time::Instant::now();
    let status = client
        .save(save("late", &[("k", "1")], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("0 of 1 replicas"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Refused where it cannot hold: with the memory backend.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        redis_wait_replicas: 1,
        ..Config::default()
    };
    let err = gonest_sessiond::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("--redis-wait-replicas"),
        "{err:#}"
    );
}

/// A primary with two replicas behind Redis Sentinel; the primary dies while a writer runs.
/// The daemon, given the sentinel's URL, finds the promoted replica and serves again within
/// 10 s, and with `--redis-wait-replicas 1` no acknowledged save is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_acknowledged_save_with_wait_replicas() {
    let mut primary = RedisServer::start_primary().await;
    let _replicas = [
        RedisServer::start_replica_of(&primary).await,
        RedisServer::start_replica_of(&primary).await,
    ];
    let sentinel = RedisSentinel::start(&primary, "sessions", 2).await;
    let daemon = Daemon::start(Config {
        backend: StoreBackend::Redis(sentinel.url()),
        redis_wait_replicas: 1,
        redis_wait_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut client = daemon.client();
    let id = |n: u64| format!("login-{n}");
    let mut acknowledged = Vec::new();
    for n in 0..50 {
        client
            .save(save(&id(n), &[("k", "1")], Some(0)))
            .await
            .unwrap();
        acknowledged.push(n);
    }

    let old_master = primary.port();
    primary.kill();
    let killed = tokio::time::Instant::now();
    let (mut failed, mut served_again) = (0, None);
    let mut n = 50;
    while acknowledged.len() < 100 {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no save succeeded within 30 s of the failover ({failed} failed)"
        );
        match client.save(save(&id(n), &[("k", "1")], Some(0))).await {
            Ok(_) => {
                served_again.get_or_insert(killed.elapsed());
                acknowledged.push(n);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status}");
                failed += 1;
                // Paces the writer while Sentinel elects the new master.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        n += 1;
    }
    let served_again = served_again.unwrap();
    assert_ne!(
        sentinel.master_port(),
        Some(old_master),
        "a replica took over"
    );
    let mut lost = 0;
    for &n in &acknowledged {
        if client
            .get(get(&id(n)))
            .await
            .unwrap()
            .into_inner()
            .session
            .is_none()
        {
            lost += 1;
        }
    }
    eprintln!(
        "sentinel failover: served again {served_again:?} after the master died; {failed} saves \
         refused meanwhile; {lost} of {} acknowledged saves lost",
        acknowledged.len()
    );
    assert_eq!(lost, 0, "acknowledged saves lost");
    assert!(served_again < Duration::from_secs(10), "{served_again:?}");
}

//! What only the Redis store does, against a real redis-server started by the test: keys
//! under its prefixes, stale owner-set entries dropped, Redis Cluster, Redis out of memory,
//! changes published.
//! The rules every store keeps are the contract suite's (`test-support/tests/contract.rs`).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use gonest_session_core::{Save, SessionData, SessionStore, StoreError};
use gonest_session_redis::RedisSessionStore;
use gonest_session_test_support::RedisServer;

fn data(pairs: &[(&str, &str)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
        .collect()
}

async fn store(redis: &RedisServer) -> RedisSessionStore {
    RedisSessionStore::builder(redis.url())
        .max_session_bytes(64)
        .connect()
        .await
        .unwrap()
}

/// Waits (5 s at most) until `id` is gone from `store`.
async fn gone(store: &RedisSessionStore, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.get(id).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} did not expire"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sessions_live_under_the_prefix_and_redis_down_is_unavailable() {
    let redis = RedisServer::start().await;
    let store = RedisSessionStore::builder(redis.url())
        .prefix("app1:")
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    store.save(Save::new("s", data(&[]))).await.unwrap();
    let other = RedisSessionStore::connect(redis.url()).await.unwrap();
    assert_eq!(
        other.get("s").await.unwrap(),
        None,
        "another prefix, another store"
    );
    drop(redis);
    let err = store.get("s").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_sessions_spread_over_the_masters_and_compare_and_swap_holds() {
    let cluster = gonest_session_test_support::RedisCluster::start().await;
    let store = RedisSessionStore::connect(cluster.url()).await.unwrap();
    let publishing = RedisSessionStore::builder(cluster.url())
        .publish_changes(true)
        .connect()
        .await
        .unwrap();
    assert!(
        !publishing.publishes_changes(),
        "a Cluster's pub/sub does not promise delivery: changes are not published"
    );
    assert!(publishing.subscribe_changes().await.is_err());
    for i in 0..300 {
        let saved = store
            .save(Save::new(format!("s{i}"), data(&[("n", "1")])).expected_version(0))
            .await
            .unwrap();
        assert_eq!(saved.version, 1);
    }
    let keys = cluster.keys_per_node();
    assert_eq!(keys.iter().sum::<u64>(), 300, "{keys:?}");
    assert!(
        keys.iter().all(|&n| n > 0),
        "every master holds some: {keys:?}"
    );
    for i in 0..300 {
        let id = format!("s{i}");
        assert_eq!(store.get(&id).await.unwrap().unwrap().version, 1);
        assert!(store.touch(&id, None).await.unwrap().is_some());
    }
    // Writers racing on one session lose nothing.
    gonest_session_test_support::contract::race_writers(&store, "s0", 8, 10).await;
    let record = store.get("s0").await.unwrap().unwrap();
    assert_eq!((record.data.len(), record.version), (81, 81));
    assert!(store.destroy("s0").await.unwrap());
    assert_eq!(store.get("s0").await.unwrap(), None);
}

fn owned(id: &str, owner: &str) -> Save {
    Save::new(id, data(&[("k", "v")])).owner(owner)
}

fn ids(sessions: &[gonest_session_core::SessionRecord]) -> Vec<&str> {
    let mut ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn sessions_are_listed_and_destroyed_by_owner_and_stale_ids_are_dropped() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    for (id, owner) in [("a", "u1"), ("b", "u1"), ("c", "u1"), ("x", "u2")] {
        store.save(owned(id, owner)).await.unwrap();
    }
    let listed = store.list_by_owner("u1", false).await.unwrap();
    assert_eq!(ids(&listed), ["a", "b", "c"]);
    assert!(
        listed
            .iter()
            .all(|s| s.data.is_empty() && s.owner.as_deref() == Some("u1"))
    );
    let with_data = store.list_by_owner("u1", true).await.unwrap();
    assert_eq!(with_data[0].data, data(&[("k", "v")]));
    assert_eq!(
        store.get("a").await.unwrap().unwrap().owner.as_deref(),
        Some("u1")
    );

    // Moved to another owner, destroyed, expired: gone from the listing.
    store.save(owned("b", "u2")).await.unwrap();
    store.destroy("c").await.unwrap();
    store
        .save(owned("d", "u1").ttl(Duration::from_millis(50)))
        .await
        .unwrap();
    gone(&store, "d").await;
    assert_eq!(ids(&store.list_by_owner("u1", false).await.unwrap()), ["a"]);
    assert_eq!(
        ids(&store.list_by_owner("u2", false).await.unwrap()),
        ["b", "x"]
    );

    store.save(owned("e", "u2")).await.unwrap();
    let destroyed = store
        .destroy_by_owner("u2", &["x".to_owned()])
        .await
        .unwrap();
    assert_eq!(destroyed, 2, "b and e");
    assert_eq!(ids(&store.list_by_owner("u2", false).await.unwrap()), ["x"]);
    let err = store
        .save(owned("b", "u2").expected_version(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: None, .. }),
        "{err}"
    );
    assert!(store.list_by_owner("", false).await.is_err());
    assert!(store.save(owned("f", "bad\nowner")).await.is_err());

    // A session written before owners existed reads as one without an owner.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let expires = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let mut old = Vec::new();
    for word in [4u64, 1_700_000_000_000, expires] {
        old.extend_from_slice(&word.to_le_bytes());
    }
    old.extend_from_slice(&gonest_session_core::codec::encode_data(&data(&[(
        "k", "v",
    )])));
    let () = redis::cmd("SET")
        .arg("gonest:sess:old")
        .arg(old)
        .query_async(&mut connection)
        .await
        .unwrap();
    let record = store.get("old").await.unwrap().unwrap();
    assert_eq!((record.version, record.owner), (4, None));
    assert_eq!(record.data, data(&[("k", "v")]));
    let saved = store
        .save(owned("old", "u3").expected_version(4))
        .await
        .unwrap();
    assert_eq!(saved.version, 5);
    assert_eq!(
        ids(&store.list_by_owner("u3", false).await.unwrap()),
        ["old"]
    );
}

/// New sessions of one owner saved at once, from several connections: exactly the limit land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_new_sessions_of_one_owner_never_pass_its_limit() {
    let redis = RedisServer::start().await;
    let mut writers = Vec::new();
    for writer in 0..8 {
        // A store each: each has its own connection, so the saves really race in Redis.
        let store = RedisSessionStore::builder(redis.url())
            .max_sessions_per_owner(10)
            .connect()
            .await
            .unwrap();
        writers.push(tokio::spawn(async move {
            let saves = (0..4).map(|n| store.save(owned(&format!("s{writer}-{n}"), "u")));
            let mut saved = 0;
            for result in futures_util::future::join_all(saves).await {
                match result {
                    Ok(_) => saved += 1,
                    Err(StoreError::TooManyOwnerSessions { limit: 10 }) => {}
                    Err(err) => panic!("{err}"),
                }
            }
            saved
        }));
    }
    let mut saved = 0;
    for writer in writers {
        saved += writer.await.unwrap();
    }
    assert_eq!(saved, 10);
    let store = RedisSessionStore::connect(redis.url()).await.unwrap();
    assert_eq!(store.list_by_owner("u", false).await.unwrap().len(), 10);
}

/// A save puts its id in the owner's set before it writes the session. A destroy that finds the
/// id and no session yet must leave the id in the set, or the session, written a moment later,
/// is out of reach of every later destroy.
#[tokio::test]
async fn destroy_by_owner_keeps_the_ids_of_sessions_it_did_not_find() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    store.save(owned("done", "u")).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    // A save of "pending" half done: in the set, not written.
    let () = redis::cmd("SADD")
        .arg("gonest:owner:u")
        .arg("pending")
        .query_async(&mut connection)
        .await
        .unwrap();

    assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);

    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("gonest:owner:u")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        members,
        ["pending"],
        "the destroyed one forgotten, the pending one kept"
    );
    // The save completes (its own index step is idempotent) and the next destroy reaches it.
    store.save(owned("pending", "u")).await.unwrap();
    assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
    assert_eq!(store.get("pending").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_destroy_by_owner_leaves_no_session_saved_before_it_while_more_are_saved() {
    let cluster = gonest_session_test_support::RedisCluster::start().await;
    let store = RedisSessionStore::builder(cluster.url())
        .max_sessions_per_owner(0)
        .connect()
        .await
        .unwrap();
    let saved = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let savers: Vec<_> = (0..4)
        .map(|t| {
            let (store, saved) = (store.clone(), saved.clone());
            tokio::spawn(async move {
                for i in 0..150 {
                    let id = format!("t{t}-{i}");
                    store.save(owned(&id, "victim")).await.unwrap();
                    if i > 0 {
                        // A versioned re-save racing the destroy: lands before it or is refused.
                        let _ = store
                            .save(owned(&format!("t{t}-{}", i - 1), "victim").expected_version(1))
                            .await;
                    }
                    saved.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    let mut rounds = 0;
    loop {
        let done = savers.iter().all(|saver| saver.is_finished());
        let before: Vec<String> = std::mem::take(&mut *saved.lock().unwrap());
        store.destroy_by_owner("victim", &[]).await.unwrap();
        for id in &before {
            assert_eq!(store.get(id).await.unwrap(), None, "{id} survived");
        }
        rounds += 1;
        if done {
            break;
        }
    }
    for saver in savers {
        saver.await.unwrap();
    }
    assert!(
        rounds > 1,
        "the destroys ran while sessions were being saved"
    );
    assert!(
        store
            .list_by_owner("victim", false)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Redis at its `maxmemory` with `noeviction` refuses writes: each is `StoreFull` (sent as
/// `RESOURCE_EXHAUSTED`, reason `STORE_FULL`), not an internal error, and reads and destroys go
/// on; once memory is freed, writes work again.
#[tokio::test]
async fn redis_out_of_memory_is_store_full_and_reads_go_on() {
    let redis = RedisServer::start().await;
    let store = RedisSessionStore::connect(redis.url()).await.unwrap();
    store
        .save(Save::new("kept", data(&[("k", "v")])).owner("u"))
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let config = |key: &str, value: &str| {
        let mut command = redis::cmd("CONFIG");
        command.arg("SET").arg(key).arg(value);
        command
    };
    let () = config("maxmemory-policy", "noeviction")
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = config("maxmemory", "1")
        .query_async(&mut admin)
        .await
        .unwrap();

    for refused in [
        store
            .save(Save::new("new", data(&[("k", "v")])))
            .await
            .err(),
        store
            .save(Save::new("kept", data(&[("k", "w")])))
            .await
            .err(),
        store
            .touch("kept", Some(Duration::from_secs(60)))
            .await
            .err(),
    ] {
        let err = refused.expect("a write at maxmemory must fail");
        assert!(matches!(err, StoreError::StoreFull(_)), "{err:?}");
        let status = gonest_session_proto::status_from_error(&err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
    let kept = store.get("kept").await.unwrap().unwrap();
    assert_eq!(kept.version, 1, "reads go on, nothing changed");
    assert_eq!(store.list_by_owner("u", false).await.unwrap().len(), 1);

    let () = config("maxmemory", "0")
        .query_async(&mut admin)
        .await
        .unwrap();
    store.save(Save::new("new", data(&[]))).await.unwrap();
}

/// Every session, page by page (`SCAN`), without data: each listed, with its owner; on a
/// Redis Cluster, `Unsupported`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_is_listed_page_by_page_but_not_on_a_cluster() {
    let redis = RedisServer::start().await;
    let store = RedisSessionStore::builder(redis.url())
        .prefix("app[1]*:")
        .connect()
        .await
        .unwrap();
    let other = RedisSessionStore::connect(redis.url()).await.unwrap();
    other.save(Save::new("elsewhere", data(&[]))).await.unwrap();
    for n in 0..300 {
        let save = Save::new(format!("s{n}"), data(&[("k", "v")]));
        let save = if n % 3 == 0 { save.owner("u") } else { save };
        store.save(save).await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = store.list_sessions(&cursor, 50).await.unwrap();
        for session in page.sessions {
            assert!(session.data.is_empty());
            let n: u32 = session.id[1..].parse().unwrap();
            assert_eq!(session.owner.is_some(), n.is_multiple_of(3));
            assert_eq!(session.version, 1);
            seen.insert(session.id);
        }
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        300,
        "each session, and none under another prefix"
    );
    let err = store.list_sessions("not a cursor", 50).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");

    let cluster = gonest_session_test_support::RedisCluster::start().await;
    let on_cluster = RedisSessionStore::connect(cluster.url()).await.unwrap();
    let err = on_cluster.list_sessions("", 50).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
}

/// Every change is published by the script that applies it, in the order applied: saves with
/// their new version, the rest as 0. Reads and failed writes publish nothing, and a store
/// built without `publish_changes` publishes nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_published_in_order_and_nothing_else() {
    use gonest_session_redis::StoreChange;
    let redis = RedisServer::start().await;
    let store = RedisSessionStore::builder(redis.url())
        .publish_changes(true)
        .connect()
        .await
        .unwrap();
    let quiet = RedisSessionStore::connect(redis.url()).await.unwrap();
    assert!(store.publishes_changes() && !quiet.publishes_changes());
    let mut changes = store.subscribe_changes().await.unwrap();

    quiet.save(Save::new("q", data(&[]))).await.unwrap();
    store
        .save(Save::new("a", data(&[("k", "1")])).owner("u"))
        .await
        .unwrap();
    store
        .save(Save::new("a", data(&[("k", "2")])).owner("u"))
        .await
        .unwrap();
    let conflict = store
        .save(Save::new("a", data(&[])).expected_version(1))
        .await;
    assert!(matches!(conflict, Err(StoreError::Conflict { .. })));
    store.get("a").await.unwrap();
    store.touch("a", None).await.unwrap();
    assert_eq!(store.touch("missing", None).await.unwrap(), None);
    store
        .save(Save::new("b", data(&[])).owner("u"))
        .await
        .unwrap();
    assert_eq!(
        store
            .destroy_by_owner("u", &["a".to_owned()])
            .await
            .unwrap(),
        1
    );
    assert!(!store.destroy("missing").await.unwrap());
    assert!(store.destroy("a").await.unwrap());
    store.publish_heartbeat("me 1").await.unwrap();

    let session = |id: &str, version| StoreChange::Session {
        id: id.to_owned(),
        version,
    };
    let expected = [
        session("a", 1),
        session("a", 2),
        session("a", 0),
        session("b", 1),
        session("b", 0),
        session("a", 0),
        StoreChange::Heartbeat("me 1".into()),
    ];
    for want in expected {
        let got = tokio::time::timeout(Duration::from_secs(2), changes.next())
            .await
            .expect("published");
        assert_eq!(got, Some(want));
    }
    quiet.destroy("q").await.unwrap();
    store.publish_heartbeat("me 2").await.unwrap();
    assert_eq!(
        changes.next().await,
        Some(StoreChange::Heartbeat("me 2".into())),
        "nothing from the store that does not publish"
    );

    // Redis gone: the subscription ends.
    drop(redis);
    let ended = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
    assert_eq!(ended, Ok(None));
}

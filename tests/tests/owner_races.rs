//! Saves racing the owner index's clean-ups (listing an owner, "log out everywhere"), for
//! thousands of sessions, on every backend: in memory, on Redis, on a Redis Cluster, and through
//! two daemons sharing one Redis. Once the writers stop, no live session escapes its owner.

use gonest_session_client::RemoteSessionStore;
use gonest_session_core::MemorySessionStore;
use gonest_session_redis::RedisSessionStore;
use gonest_session_test_support::owner_races::{
    logins_while_listing, saves_while_destroying_by_owner,
};
use gonest_session_test_support::{Daemon, RedisCluster, RedisServer};
use gonest_sessiond::{Config, StoreBackend};

const SESSIONS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_no_session_escapes_its_owner() {
    let store = MemorySessionStore::new(std::time::Duration::from_secs(3600));
    logins_while_listing(store.clone(), store.clone(), SESSIONS).await;
    saves_while_destroying_by_owner(store.clone(), store, SESSIONS).await;
}

/// Two stores, two connections: as two app instances, or two daemons, on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_no_session_escapes_its_owner() {
    let redis = RedisServer::start().await;
    let a = RedisSessionStore::connect(redis.url()).await.unwrap();
    let b = RedisSessionStore::connect(redis.url()).await.unwrap();
    logins_while_listing(a.clone(), b.clone(), SESSIONS).await;
    saves_while_destroying_by_owner(a, b, SESSIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_no_session_escapes_its_owner() {
    let cluster = RedisCluster::start().await;
    let a = RedisSessionStore::connect(cluster.url()).await.unwrap();
    let b = RedisSessionStore::connect(cluster.url()).await.unwrap();
    logins_while_listing(a.clone(), b.clone(), SESSIONS).await;
    saves_while_destroying_by_owner(a, b, SESSIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_two_daemons_on_one_redis_no_session_escapes_its_owner() {
    let redis = RedisServer::start().await;
    let config = || Config {
        backend: StoreBackend::Redis(redis.url()),
        ..Config::default()
    };
    let (one, two) = (Daemon::start(config()).await, Daemon::start(config()).await);
    let a = RemoteSessionStore::connect(one.url()).await.unwrap();
    let b = RemoteSessionStore::connect(two.url()).await.unwrap();
    logins_while_listing(a.clone(), b.clone(), SESSIONS).await;
    saves_while_destroying_by_owner(a, b, SESSIONS).await;
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

//! Near caches in two example-app instances, on one daemon or on two daemons sharing one Redis:
//! a logout on one instance ends the session on the other, once the invalidation has arrived.

use std::time::{Duration, Instant};

use gonest_session_e2e::{AppInstance, Daemon};
use gonest_session_test_support::RedisServer;
use gonest_sessiond::{Config, StoreBackend};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};

/// How long after a logout the other instance may still answer from its cache: the bound this
/// test holds the cache to (the invalidation itself takes well under a millisecond here).
const BOUND: Duration = Duration::from_secs(1);

/// A small deterministic generator, so a failing round can be replayed.
struct Rounds(u64);

impl Rounds {
    fn pick(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn status_with(http: &reqwest::Client, url: &str, cookie: &str) -> StatusCode {
    http.get(format!("{url}/profile"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_ends_the_session_on_the_other_within_the_bound() {
    let daemon = Daemon::start(Config::default()).await;
    logout_rounds([&daemon.url(), &daemon.url()], 1000).await;
    daemon.stop().await.unwrap();
}

/// Each instance on its own daemon, the two daemons on one Redis: the invalidation of a logout
/// through one daemon reaches the other daemon's clients through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_logout_through_one_daemon_ends_the_session_on_the_others_instance() {
    let redis = RedisServer::start().await;
    let on_redis = || Config {
        backend: StoreBackend::Redis(redis.url()),
        ..Config::default()
    };
    let daemons = [
        Daemon::start(on_redis()).await,
        Daemon::start(on_redis()).await,
    ];
    logout_rounds([&daemons[0].url(), &daemons[1].url()], 300).await;
    for daemon in daemons {
        daemon.stop().await.unwrap();
    }
}

/// `rounds` randomized rounds of login, reads on both instances (each on its daemon of
/// `daemons`), a logout on one, and reads on the other until 401: none may pass the bound.
async fn logout_rounds(daemons: [&str; 2], rounds_to_run: usize) {
    let apps = [
        AppInstance::start_with_near_cache(daemons[0], axum::Router::new(), 10_000).await,
        AppInstance::start_with_near_cache(daemons[1], axum::Router::new(), 10_000).await,
    ];
    for app in &apps {
        app.near_cache_serving().await;
    }
    // No cookie jar: the cookie is sent by hand, as a stolen or stale one would be.
    let http = reqwest::Client::new();
    let mut rounds = Rounds(0x9e37_79b9_7f4a_7c15);
    let (mut at_once, mut after_bound, mut slowest) = (0, 0, Duration::ZERO);
    for round in 0..rounds_to_run {
        let login = &apps[rounds.pick(2) as usize];
        let response = http
            .post(format!("{}/login", login.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        // Both instances read it, so both may hold it in their caches; some read it twice.
        for app in &apps {
            for _ in 0..=rounds.pick(2) {
                assert_eq!(status_with(&http, &app.url, &cookie).await, StatusCode::OK);
            }
        }
        let logout = rounds.pick(2) as usize;
        let response = http
            .post(format!("{}/logout", apps[logout].url))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        let other = &apps[1 - logout];
        let logged_out = Instant::now();
        if status_with(&http, &other.url, &cookie).await == StatusCode::UNAUTHORIZED {
            at_once += 1;
        }
        loop {
            let status = status_with(&http, &other.url, &cookie).await;
            if status == StatusCode::UNAUTHORIZED {
                slowest = slowest.max(logged_out.elapsed());
                break;
            }
            assert_eq!(status, StatusCode::OK, "round {round}");
            if logged_out.elapsed() > BOUND {
                after_bound += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Once out, out: the same instance, and the one that logged out.
        for app in &apps {
            assert_eq!(
                status_with(&http, &app.url, &cookie).await,
                StatusCode::UNAUTHORIZED,
                "round {round}"
            );
        }
    }
    let stats: Vec<_> = apps
        .iter()
        .map(|app| app.store.near_cache_stats().unwrap())
        .collect();
    eprintln!(
        "{rounds_to_run} rounds: 401 at once on the other instance in {at_once}; slowest logout seen \
         there after {slowest:?}; stale after {BOUND:?}: {after_bound}; caches: {stats:?}"
    );
    assert_eq!(after_bound, 0, "stale reads past the bound");
    assert!(
        stats.iter().all(|stats| stats.hits > 0),
        "the caches served: {stats:?}"
    );
}

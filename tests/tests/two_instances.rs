//! One daemon, two instances of the example app, a real HTTP client with cookies.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::post;
use gonest_session::Session;
use gonest_session_e2e::{AppInstance, Daemon, STORE_TIMEOUT};
use gonest_sessiond::Config;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

/// A route only these tests add: sets one key in the session.
fn set_key_route() -> Router {
    Router::new().route(
        "/test/set/{key}",
        post(|session: Session, Path(key): Path<String>| async move {
            session.set_value(&key, true).unwrap();
            "set"
        }),
    )
}

async fn two_apps(daemon: &Daemon) -> (AppInstance, AppInstance) {
    (
        AppInstance::start(&daemon.url(), set_key_route()).await,
        AppInstance::start(&daemon.url(), set_key_route()).await,
    )
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    let values: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
    assert!(values.len() <= 1, "{values:?}");
    values.first().map(|v| v.to_str().unwrap().to_owned())
}

fn id_of(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap();
    pair.strip_prefix("gonest.sid=").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_on_one_instance_is_seen_by_the_other_and_logout_everywhere() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    let http = client();

    let response = http.get(format!("{}/profile", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(session_cookie(&response), None);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"statusCode": 401, "message": "not logged in"}));

    let response = http.post(format!("{}/login", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = session_cookie(&response).expect("login sets the cookie");
    // The default options, with GoNest's default lifetime (no "remember me").
    assert_eq!(
        attributes(&cookie),
        ["HttpOnly", "Max-Age=86400", "Path=/", "SameSite=Lax"],
        "{cookie}"
    );
    assert_eq!(id_of(&cookie).len(), 43);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "logged in"}));

    let response = http.get(format!("{}/profile", b.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"user_id": 42})
    );

    let response = http.post(format!("{}/logout", b.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "logged out"})
    );
    let response = http.get(format!("{}/profile", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    daemon.stop().await.unwrap();
}

/// The attributes of a `Set-Cookie` after its `name=value`, sorted.
fn attributes(set_cookie: &str) -> Vec<&str> {
    let mut attributes: Vec<&str> = set_cookie.split("; ").skip(1).collect();
    attributes.sort_unstable();
    attributes
}

/// How long from now the daemon keeps the session with this id.
async fn daemon_ttl(daemon: &Daemon, id: &str) -> Duration {
    let store = gonest_session_client::RemoteSessionStore::connect(daemon.url())
        .await
        .unwrap();
    let record = gonest_session::SessionStore::get(&store, id)
        .await
        .unwrap()
        .expect("the session is on the daemon");
    record
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_24_hours_in_the_cookie_and_on_the_daemon_and_remember_me_30_days() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    let http = client();
    let day = Duration::from_secs(24 * 3600);
    let minute = Duration::from_secs(60);

    let response = http.post(format!("{}/login", a.url)).send().await.unwrap();
    let cookie = session_cookie(&response).unwrap();
    // GoNest's default MaxAge: the browser keeps the login across a restart.
    assert_eq!(
        attributes(&cookie),
        ["HttpOnly", "Max-Age=86400", "Path=/", "SameSite=Lax"]
    );
    let ttl = daemon_ttl(&daemon, &id_of(&cookie)).await;
    assert!(ttl <= day && ttl > day - minute, "{ttl:?}");

    let response = http
        .post(format!("{}/login", b.url))
        .json(&json!({"remember": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = session_cookie(&response).unwrap();
    assert_eq!(
        attributes(&cookie),
        ["HttpOnly", "Max-Age=2592000", "Path=/", "SameSite=Lax"]
    );
    let ttl = daemon_ttl(&daemon, &id_of(&cookie)).await;
    assert!(ttl <= 30 * day && ttl > 30 * day - minute, "{ttl:?}");
    // Another instance writing the session sends the same cookie again.
    let response = http
        .post(format!("{}/test/set/seen", a.url))
        .send()
        .await
        .unwrap();
    let again = session_cookie(&response).unwrap();
    assert_eq!(attributes(&again), attributes(&cookie));
    assert_eq!(id_of(&again), id_of(&cookie));

    for body in [
        "{\"remember\": 1}",
        "not json",
        "{\"remember\": true, \"x\": 1}",
    ] {
        let response = http
            .post(format!("{}/login", a.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(session_cookie(&response), None, "{body}");
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_ends_the_users_other_devices_on_every_instance() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    // Three devices (cookie jars) of user 42, logged in on either instance.
    let devices = [client(), client(), client()];
    for (device, app) in devices.iter().zip([&a, &b, &a]) {
        let response = device
            .post(format!("{}/login", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = devices[1]
        .get(format!("{}/sessions", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let listed: Value = response.json().await.unwrap();
    let listed = listed["sessions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .filter(|s| s["current"] == json!(true))
            .count(),
        1
    );
    for session in &listed {
        assert_eq!(
            session["id"].as_str().unwrap().len(),
            8,
            "ids are shortened"
        );
        assert!(session["expires_at"].as_str().unwrap().ends_with('Z'));
    }

    let response = devices[1]
        .post(format!("{}/logout-everywhere", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"destroyed": 2})
    );
    for (i, device) in devices.iter().enumerate() {
        for app in [&a, &b] {
            let response = device
                .get(format!("{}/profile", app.url))
                .send()
                .await
                .unwrap();
            let expected = if i == 1 {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(response.status(), expected, "device {i} on {}", app.url);
        }
    }
    let response = devices[1]
        .get(format!("{}/sessions", b.url))
        .send()
        .await
        .unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
    let response = client()
        .get(format!("{}/sessions", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_changes_the_id_and_the_old_id_stops_working() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    // No cookie jar: cookies are handed over by hand, as an attacker would.
    let http = reqwest::Client::new();

    let first = http.post(format!("{}/login", a.url)).send().await.unwrap();
    let first = id_of(&session_cookie(&first).unwrap());
    let second = http
        .post(format!("{}/login", b.url))
        .header(COOKIE, format!("gonest.sid={first}"))
        .send()
        .await
        .unwrap();
    let second = id_of(&session_cookie(&second).expect("a new id at login"));
    assert_ne!(first, second);

    for (id, expected) in [
        (&first, StatusCode::UNAUTHORIZED),
        (&second, StatusCode::OK),
    ] {
        for app in [&a, &b] {
            let response = http
                .get(format!("{}/profile", app.url))
                .header(COOKIE, format!("gonest.sid={id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), expected);
        }
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_cookies_get_401_never_5xx() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    let http = reqwest::Client::new();
    let huge = format!("gonest.sid={}", "x".repeat(6000));
    let unknown = format!("gonest.sid={}", "A".repeat(43));
    let padded = format!("gonest.sid={}=", "A".repeat(42));
    let garbage: Vec<Vec<u8>> = vec![
        b"gonest.sid=".to_vec(),
        huge.into_bytes(),
        "gonest.sid=sessão-ñ-日本".as_bytes().to_vec(),
        b"gonest.sid=../../../../etc/passwd".to_vec(),
        unknown.into_bytes(),
        padded.into_bytes(),
        b"gonest.sid=%00%0d%0a".to_vec(),
        b"gonest.sid=\"AAAA\"; gonest.sid=; =;;".to_vec(),
        b"gonest.sid".to_vec(),
        b";;;=;=".to_vec(),
    ];
    assert_eq!(garbage.len(), 10);
    for (i, cookie) in garbage.into_iter().enumerate() {
        let app = if i % 2 == 0 { &a } else { &b };
        let value = reqwest::header::HeaderValue::from_bytes(&cookie).unwrap();
        let response = http
            .get(format!("{}/profile", app.url))
            .header(COOKIE, value)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            String::from_utf8_lossy(&cookie)
        );
        assert_eq!(session_cookie(&response), None);
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_writers_on_two_instances_lose_nothing() {
    let daemon = Daemon::start(Config::default()).await;
    let (a, b) = two_apps(&daemon).await;
    let http = client();
    let response = http.post(format!("{}/login", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let requests = (0..100).map(|i| {
        let http = http.clone();
        let url = format!("{}/test/set/k{i}", if i % 2 == 0 { &a.url } else { &b.url });
        tokio::spawn(async move { http.post(url).send().await.unwrap().status() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }

    let cookie = http.post(format!("{}/login", a.url)).send().await.unwrap();
    let id = id_of(&session_cookie(&cookie).unwrap());
    let store = gonest_session_client::RemoteSessionStore::connect(daemon.url())
        .await
        .unwrap();
    let record = gonest_session::SessionStore::get(&store, &id)
        .await
        .unwrap()
        .unwrap();
    for i in 0..100 {
        assert!(record.data.contains_key(&format!("k{i}")), "k{i} was lost");
    }
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_is_a_503_and_a_restarted_one_serves_without_an_app_restart() {
    let daemon = Daemon::start(Config::default()).await;
    let addr = daemon.addr;
    let (a, b) = two_apps(&daemon).await;
    let http = client();
    let response = http.post(format!("{}/login", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    daemon.stop().await.unwrap();

    for app in [&a, &b] {
        let started = Instant::now();
        let response = http
            .get(format!("{}/profile", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(session_cookie(&response), None);
        assert!(started.elapsed() <= STORE_TIMEOUT + Duration::from_millis(500));
        let response = http
            .post(format!("{}/login", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(session_cookie(&response), None);
    }

    // Back on the same port. The daemon keeps sessions in memory only, so users log in again.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let daemon = Daemon::start_on(listener, Config::default()).await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    // The first call may still meet the broken stream; the store replaces it by itself.
    for _ in 0..3 {
        status = http
            .post(format!("{}/login", b.url))
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(status, StatusCode::OK);
    let response = http.get(format!("{}/profile", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    daemon.stop().await.unwrap();
}

/// Two daemons on one Redis, two app instances that each list both: a login through app A is
/// read through app B, and once the daemon app A used goes away the user stays logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_redis_and_one_going_away_keeps_the_user_logged_in() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let config = || Config {
        backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
        ..Config::default()
    };
    let (first, second) = (Daemon::start(config()).await, Daemon::start(config()).await);
    let a = AppInstance::start(
        &format!("{},{}", first.url(), second.url()),
        set_key_route(),
    )
    .await;
    let b = AppInstance::start(
        &format!("{},{}", second.url(), first.url()),
        set_key_route(),
    )
    .await;
    let http = client();
    let response = http.post(format!("{}/login", a.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = http.get(format!("{}/profile", b.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "user_id": 42 }));

    first.stop().await.unwrap();
    // A request on a stream that was on the stopped daemon may fail (503) while it reopens
    // on the other; the user is never logged out (no 401), and within 5 s every request is
    // answered again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered_in_a_row = 0;
    while answered_in_a_row < 20 {
        assert!(Instant::now() < deadline, "not served again within 5 s");
        for app in [&a, &b] {
            let status = http
                .get(format!("{}/profile", app.url))
                .send()
                .await
                .unwrap()
                .status();
            match status {
                StatusCode::OK => answered_in_a_row += 1,
                StatusCode::SERVICE_UNAVAILABLE => answered_in_a_row = 0,
                other => panic!("the user was logged out: {other}"),
            }
        }
    }
    second.stop().await.unwrap();
}

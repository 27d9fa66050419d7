//! One middleware suite, run against the in-process `MemorySessionStore` and against
//! `RemoteSessionStore` talking to a daemon on `127.0.0.1:0`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::routing::{get, post};
use gonest_session::{
    MemorySessionStore, Save, Session, SessionLayer, SessionOptions, SessionRecord, SessionStore,
    StoreError,
};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Saved, async_trait};
use gonest_session_redis::RedisSessionStore;
use gonest_session_testing::{Daemon, RedisServer};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Counts calls to the store, so tests can tell that a request never reached it.
struct Counting {
    store: Arc<dyn SessionStore>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl SessionStore for Counting {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.get(id).await
    }
    async fn save(&self, save: Save) -> Result<Saved, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.save(save).await
    }
    async fn destroy(&self, id: &str) -> Result<bool, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.destroy(id).await
    }
    async fn touch(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.touch(id, ttl).await
    }
}

/// A store and whatever must live as long as it (the daemon or the redis-server).
struct Backend {
    store: Arc<dyn SessionStore>,
    _daemon: Option<Box<dyn std::any::Any + Send>>,
}

async fn memory() -> Backend {
    Backend {
        store: Arc::new(MemorySessionStore::new(Duration::from_secs(3600))),
        _daemon: None,
    }
}

async fn remote() -> Backend {
    let daemon = Daemon::start(gonest_sessiond::Config::default()).await;
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    Backend {
        store: Arc::new(store),
        _daemon: Some(Box::new(daemon)),
    }
}

async fn redis() -> Backend {
    let server = RedisServer::start().await;
    let store = RedisSessionStore::connect(server.url()).await.unwrap();
    Backend {
        store: Arc::new(store),
        _daemon: Some(Box::new(server)),
    }
}

struct App {
    router: Router,
    calls: Arc<AtomicUsize>,
    store: Arc<dyn SessionStore>,
}

fn app(backend: &Backend, options: SessionOptions) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        store: backend.store.clone(),
        calls: calls.clone(),
    };
    let router = Router::new()
        .route("/plain", get(|| async { "no session here" }))
        .route(
            "/peek",
            get(|session: Session| async move {
                session
                    .get_value::<String>("who")
                    .unwrap_or_else(|| "nobody".into())
            }),
        )
        .route(
            "/set/{key}/{value}",
            post(
                |session: Session, axum::extract::Path((key, value)): axum::extract::Path<(String, String)>| async move {
                    session.set_value(&key, value).unwrap();
                    "ok"
                },
            ),
        )
        .route(
            "/get/{key}",
            get(|session: Session, axum::extract::Path(key): axum::extract::Path<String>| async move {
                session.get_value::<String>(&key).unwrap_or_default()
            }),
        )
        .route(
            "/login",
            post(|session: Session| async move {
                session.regenerate();
                session.set_value("who", "alice").unwrap();
                "logged in"
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move {
                session.destroy();
                "bye"
            }),
        )
        .route(
            "/big/{bytes}",
            post(
                |session: Session, axum::extract::Path(bytes): axum::extract::Path<usize>| async move {
                    session.set_value("blob", "x".repeat(bytes)).unwrap();
                    "stored"
                },
            ),
        )
        .route(
            "/fail",
            post(|session: Session| async move {
                session.set_value("who", "mallory").unwrap();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .layer(SessionLayer::new(store, options));
    App {
        router,
        calls,
        store: backend.store.clone(),
    }
}

impl App {
    async fn send(&self, method: &str, uri: &str, cookie: Option<&str>) -> Response<Body> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn set_cookie(response: &Response<Body>) -> Option<String> {
    let values: Vec<_> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .collect();
    assert!(values.len() <= 1, "more than one Set-Cookie: {values:?}");
    values.first().map(|v| v.to_str().unwrap().to_owned())
}

/// `gonest.sid=VALUE` from a Set-Cookie header, ready for a Cookie header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn id_of(set_cookie: &str) -> String {
    pair(set_cookie).split_once('=').unwrap().1.to_owned()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn routes_that_never_use_the_session_cost_nothing(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let response = app.send("GET", "/plain", Some("gonest.sid=whatever")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(set_cookie(&response), None);
    assert_eq!(app.calls(), 0);
}

async fn a_session_never_written_sets_no_cookie(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let response = app.send("GET", "/peek", None).await;
    assert_eq!(text_and_cookie(response).await, ("nobody".into(), None));
    assert_eq!(
        app.calls(),
        0,
        "no cookie: nothing to look up, nothing to save"
    );
}

async fn text_and_cookie(response: Response<Body>) -> (String, Option<String>) {
    let cookie = set_cookie(&response);
    (text(response).await, cookie)
}

async fn a_written_session_gets_a_cookie_with_the_options_attributes(backend: Backend) {
    let options = SessionOptions {
        cookie_name: "sid".into(),
        max_age: Duration::from_secs(1800),
        secure: true,
        path: "/".into(),
        domain: Some("example.test".into()),
        ..Default::default()
    };
    let app = app(&backend, options);
    let response = app.send("POST", "/set/color/blue", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(&response).expect("a new session sets a cookie");
    for part in [
        "sid=",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Domain=example.test",
        "Max-Age=1800",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    let id = id_of(&cookie);
    assert_eq!(id.len(), 43);
    let record = app.store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        record.data["color"], b"\"blue\"",
        "values are stored as JSON"
    );
    let ttl = record.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(
        ttl <= Duration::from_secs(1800) && ttl > Duration::from_secs(1700),
        "{ttl:?}"
    );

    let response = app.send("GET", "/get/color", Some(&pair(&cookie))).await;
    assert_eq!(
        text_and_cookie(response).await,
        ("blue".into(), None),
        "no cookie re-sent for an unchanged id"
    );
    let response = app.send("POST", "/set/size/xl", Some(&pair(&cookie))).await;
    assert_eq!(set_cookie(&response), None, "an update keeps the id");
    assert_eq!(app.store.get(&id).await.unwrap().unwrap().version, 2);
}

async fn garbage_cookies_are_no_session_and_never_reach_the_store(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let huge = format!("gonest.sid={}", "A".repeat(8000));
    for cookie in [
        "gonest.sid=",
        huge.as_str(),
        "gonest.sid=../../etc/passwd",
        "gonest.sid=%00%01",
        "gonest.sid=aaaa aaaa",
        "gonest.sid=\"quoted\"",
    ] {
        let response = app.send("GET", "/peek", Some(cookie)).await;
        assert_eq!(
            text_and_cookie(response).await,
            ("nobody".into(), None),
            "{cookie}"
        );
    }
    assert_eq!(app.calls(), 0);
    // Well formed but unknown: looked up, found nothing, and never adopted as an id.
    let unknown = format!("gonest.sid={}", "Q".repeat(43));
    let response = app.send("POST", "/set/k/v", Some(&unknown)).await;
    let cookie = set_cookie(&response).unwrap();
    assert_ne!(
        id_of(&cookie),
        "Q".repeat(43),
        "a client-chosen id is never used"
    );
}

async fn login_rotates_the_id_and_the_old_one_stops_working(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let first = set_cookie(&app.send("POST", "/set/cart/3", None).await).unwrap();
    let response = app.send("POST", "/login", Some(&pair(&first))).await;
    let second = set_cookie(&response).expect("a rotated id is sent");
    assert_ne!(id_of(&first), id_of(&second));
    let response = app.send("GET", "/get/cart", Some(&pair(&second))).await;
    assert_eq!(text(response).await, "3", "data survives the rotation");
    let response = app.send("GET", "/peek", Some(&pair(&first))).await;
    assert_eq!(text(response).await, "nobody", "the old id is gone");
    assert_eq!(app.store.get(&id_of(&first)).await.unwrap(), None);
}

async fn logout_destroys_the_session_and_removes_the_cookie(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = set_cookie(&app.send("POST", "/login", None).await).unwrap();
    let response = app.send("POST", "/logout", Some(&pair(&cookie))).await;
    let removal = set_cookie(&response).expect("a removal cookie");
    assert!(
        removal.starts_with("gonest.sid=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert!(removal.contains("Path=/"), "{removal}");
    assert_eq!(app.store.get(&id_of(&cookie)).await.unwrap(), None);
}

async fn a_5xx_response_saves_nothing(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = set_cookie(&app.send("POST", "/login", None).await).unwrap();
    let response = app.send("POST", "/fail", Some(&pair(&cookie))).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(set_cookie(&response), None);
    let response = app.send("GET", "/peek", Some(&pair(&cookie))).await;
    assert_eq!(text(response).await, "alice");
    let response = app.send("POST", "/fail", None).await;
    assert_eq!(
        set_cookie(&response),
        None,
        "a new session is not stored on 5xx either"
    );
}

async fn rolling_sessions_are_touched_and_the_cookie_resent(backend: Backend) {
    let app = app(
        &backend,
        SessionOptions {
            rolling: true,
            max_age: Duration::from_secs(600),
            ..Default::default()
        },
    );
    let cookie = set_cookie(&app.send("POST", "/login", None).await).unwrap();
    let id = id_of(&cookie);
    let before = app.store.get(&id).await.unwrap().unwrap();
    app.store
        .touch(&id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let response = app.send("GET", "/peek", Some(&pair(&cookie))).await;
    assert_eq!(set_cookie(&response).map(|c| id_of(&c)), Some(id.clone()));
    let after = app.store.get(&id).await.unwrap().unwrap();
    assert!(after.expires_at > SystemTime::now() + Duration::from_secs(500));
    assert_eq!(after.version, before.version, "a touch is not a save");
}

async fn concurrent_requests_changing_different_keys_all_land(backend: Backend) {
    let app = Arc::new(app(&backend, SessionOptions::default()));
    let cookie = pair(&set_cookie(&app.send("POST", "/set/start/1", None).await).unwrap());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let app = app.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let response = app
                    .send("POST", &format!("/set/k{i}/{i}"), Some(&cookie))
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let record = app.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    for i in 0..100 {
        assert_eq!(record.data[&format!("k{i}")], format!("\"{i}\"").as_bytes());
    }
    assert_eq!(record.version, 101);
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::memory().await).await;
                }
            )*
        }
        mod remote_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::remote().await).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::redis().await).await;
                }
            )*
        }
    };
}

suite!(
    routes_that_never_use_the_session_cost_nothing,
    a_session_never_written_sets_no_cookie,
    a_written_session_gets_a_cookie_with_the_options_attributes,
    garbage_cookies_are_no_session_and_never_reach_the_store,
    login_rotates_the_id_and_the_old_one_stops_working,
    logout_destroys_the_session_and_removes_the_cookie,
    a_5xx_response_saves_nothing,
    rolling_sessions_are_touched_and_the_cookie_resent,
    concurrent_requests_changing_different_keys_all_land,
    a_session_over_the_size_limit_is_a_500_and_the_stored_one_is_kept,
);

async fn a_session_over_the_size_limit_is_a_500_and_the_stored_one_is_kept(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let response = app.send("POST", "/login", None).await;
    let cookie = pair(&set_cookie(&response).unwrap());
    let response = app.send("POST", "/big/2000000", Some(&cookie)).await;
    assert_eq!(
        response.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "the app's bug, not an outage"
    );
    assert_eq!(set_cookie(&response), None);
    let response = app.send("GET", "/peek", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "alice",
        "the stored session is untouched"
    );
    let response = app.send("GET", "/get/blob", Some(&cookie)).await;
    assert_eq!(text(response).await, "");
}

/// A store that is down.
struct Down;

#[async_trait]
impl SessionStore for Down {
    async fn get(&self, _: &str) -> Result<Option<SessionRecord>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn save(&self, _: Save) -> Result<Saved, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn destroy(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn touch(&self, _: &str, _: Option<Duration>) -> Result<Option<SystemTime>, StoreError> {
        Err(StoreError::Timeout)
    }
}

#[tokio::test]
async fn a_failing_store_is_a_503_without_cookie_and_other_routes_are_unaffected() {
    let backend = Backend {
        store: Arc::new(Down),
        _daemon: None,
    };
    let app = app(&backend, SessionOptions::default());
    let id = "A".repeat(43);
    let response = app
        .send("GET", "/peek", Some(&format!("gonest.sid={id}")))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(set_cookie(&response), None);
    let response = app.send("POST", "/login", None).await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the save failed"
    );
    assert_eq!(set_cookie(&response), None);
    let response = app
        .send("GET", "/plain", Some(&format!("gonest.sid={id}")))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_extractor_without_the_layer_says_how_to_fix_it() {
    let router: Router = Router::new().route("/", get(|_session: Session| async { "never" }));
    let response = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = text(response).await;
    assert!(body.contains("SessionLayer"), "{body}");
}

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
    Expiry, InvalidOptions, MemorySessionStore, OwnerSessions, SameSite, Save, Session,
    SessionError, SessionLayer, SessionOptions, SessionRecord, SessionStore, StoreError,
    StoreLimits,
};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Saved, async_trait};
use gonest_session_redis::RedisSessionStore;
use gonest_session_test_support::{Daemon, RedisServer};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Counts calls to the store, so tests can tell that a request never reached it.
struct Counting {
    store: Arc<dyn SessionStore>,
    calls: Arc<AtomicUsize>,
    /// Say nothing of the store's limits, as a store that cannot tell.
    hide_limits: bool,
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
    async fn list_by_owner(
        &self,
        owner: &str,
        with_data: bool,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.list_by_owner(owner, with_data).await
    }
    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.destroy_by_owner(owner, except).await
    }
    fn limits(&self) -> StoreLimits {
        if self.hide_limits {
            StoreLimits::default()
        } else {
            self.store.limits()
        }
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
    app_with(backend, options, false)
}

/// Answers a refused change as 400 with the reason, as an app would.
fn refused(err: SessionError) -> (StatusCode, String) {
    let status = match err {
        SessionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, err.to_string())
}

fn app_with(backend: &Backend, options: SessionOptions, hide_limits: bool) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        store: backend.store.clone(),
        calls: calls.clone(),
        hide_limits,
    };
    let direct = backend.store.clone();
    let router = Router::new()
        .route("/plain", get(|| async { "no session here" }))
        .route(
            "/peek",
            get(|session: Session| async move {
                session
                    .get_value::<String>("who")
                    .unwrap()
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
                session.get_value::<String>(&key).unwrap().unwrap_or_default()
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
                    session.set_value("blob", "x".repeat(bytes)).map_err(refused)?;
                    Ok::<_, (StatusCode, String)>("stored")
                },
            ),
        )
        .route(
            "/reserved",
            post(|session: Session| async move {
                session.set_value("__gonest.expiry", "forever").map_err(refused)?;
                Ok::<_, (StatusCode, String)>("stored")
            }),
        )
        .route(
            "/expiry/{kind}/{seconds}",
            post(
                |session: Session,
                 axum::extract::Path((kind, seconds)): axum::extract::Path<(String, u64)>| async move {
                    let ttl = Duration::from_secs(seconds);
                    let expiry = match kind.as_str() {
                        "end" => Expiry::OnSessionEnd,
                        "idle" => Expiry::OnInactivity(ttl),
                        _ => Expiry::AtDateTime(SystemTime::UNIX_EPOCH + ttl),
                    };
                    session.set_expiry(expiry).map_err(refused)?;
                    session.set_value("who", "alice").unwrap();
                    Ok::<_, (StatusCode, String)>("set")
                },
            ),
        )
        .route(
            "/keys",
            get(|session: Session| async move {
                let mut keys = session.keys();
                keys.sort();
                format!("{}|{}", keys.join(","), session.is_empty())
            }),
        )
        .route(
            "/clear",
            post(|session: Session| async move {
                session.clear();
                "cleared"
            }),
        )
        .route(
            "/remove/{key}",
            post(|session: Session, axum::extract::Path(key): axum::extract::Path<String>| async move {
                session.remove::<String>(&key).unwrap().unwrap_or_else(|| "(none)".into())
            }),
        )
        .route(
            "/flash/{message}",
            post(|session: Session, axum::extract::Path(message): axum::extract::Path<String>| async move {
                session.flash("notice", message).unwrap();
                "flashed"
            }),
        )
        .route(
            "/take-flash",
            get(|session: Session| async move {
                session.take_flash::<String>("notice").unwrap().unwrap_or_else(|| "(none)".into())
            }),
        )
        .route(
            "/save-now/{key}",
            post(move |session: Session, axum::extract::Path(key): axum::extract::Path<String>| {
                let direct = direct.clone();
                async move {
                    session.set_value(&key, "saved early").unwrap();
                    session.save().await.map_err(|err| (StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
                    // Landed before the handler answers: visible to anyone reading the store.
                    let id = session.id().unwrap();
                    let stored = direct.get(&id).await.unwrap().unwrap();
                    let landed = stored.data.contains_key(&key);
                    // Changes after an explicit save are written by the layer as usual.
                    session.set_value("after", "later").unwrap();
                    Ok::<_, (StatusCode, String)>(format!("landed={landed}"))
                }
            }),
        )
        .route(
            "/own/{owner}",
            post(|session: Session, axum::extract::Path(owner): axum::extract::Path<String>| async move {
                session.regenerate();
                session.set_owner(Some(&owner)).map_err(refused)?;
                Ok::<_, (StatusCode, String)>("owned")
            }),
        )
        .route(
            "/mine",
            get(|session: Session, sessions: OwnerSessions| async move {
                let owner = session.owner().unwrap_or_default();
                let listed = sessions.list(&owner).await.unwrap();
                let current = session.id();
                let mut ids: Vec<String> = listed
                    .iter()
                    .map(|s| {
                        let mark = if Some(&s.id) == current.as_ref() { "*" } else { "" };
                        format!("{}{mark}", &s.id[..6])
                    })
                    .collect();
                ids.sort();
                format!("{owner}:{}", ids.join(","))
            }),
        )
        .route(
            "/revoke-others",
            post(|session: Session, sessions: OwnerSessions| async move {
                let owner = session.owner().unwrap();
                let except: Vec<String> = session.id().into_iter().collect();
                sessions.revoke(&owner, &except).await.unwrap().to_string()
            }),
        )
        .route(
            "/reload",
            post(|session: Session| async move {
                session.set_value("scratch", "unsaved").unwrap();
                session.reload().await.unwrap();
                session.get_value::<String>("scratch").unwrap().unwrap_or_else(|| "(gone)".into())
            }),
        )
        .route(
            "/fail",
            post(|session: Session| async move {
                session.set_value("who", "mallory").unwrap();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .layer(SessionLayer::new(store, options).unwrap());
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
        record.data["color"],
        &b"\"blue\""[..],
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
    let resent = set_cookie(&response).expect("a save restarts the cookie's lifetime too");
    assert_eq!(id_of(&resent), id, "an update keeps the id");
    assert!(resent.contains("Max-Age=1800"), "{resent}");
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
    a_value_over_the_size_limit_is_refused_at_once_and_the_stored_session_kept,
    per_session_expiry_sets_the_cookie_and_the_store_alike_on_every_instance,
    an_expiry_the_store_refuses_is_refused_at_once,
    clear_keys_remove_and_is_empty,
    clear_also_removes_keys_another_request_added_meanwhile,
    an_explicit_save_lands_before_the_handler_answers,
    reload_drops_unsaved_changes,
    a_flash_message_is_read_once,
    a_max_age_over_the_stores_max_ttl_is_refused,
    an_owner_lists_and_revokes_its_other_sessions,
    signed_cookies_verify_rotate_and_refuse_tampering_without_asking_the_store,
);

async fn signed_cookies_verify_rotate_and_refuse_tampering_without_asking_the_store(
    backend: Backend,
) {
    let signed = |secrets: &[&str]| SessionOptions {
        secret: secrets.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let old = app(&backend, signed(&["old secret"]));
    let cookie = pair(&set_cookie(&old.send("POST", "/login", None).await).unwrap());
    let value = cookie.strip_prefix("gonest.sid=").unwrap();
    assert!(value.starts_with("s%3A"), "express-session's form: {value}");
    let id = value[4..].split('.').next().unwrap().to_owned();
    assert!(old.store.get(&id).await.unwrap().is_some());
    assert_eq!(
        text(old.send("GET", "/peek", Some(&cookie)).await).await,
        "alice"
    );

    // Rotation: the new secret signs, the old one still verifies.
    let rotated = app(&backend, signed(&["new secret", "old secret"]));
    let response = rotated.send("POST", "/set/k/v", Some(&cookie)).await;
    let resigned = pair(&set_cookie(&response).unwrap());
    assert_ne!(resigned, cookie, "re-signed with the new secret");
    assert!(resigned.contains(&id), "same session");
    let new_only = app(&backend, signed(&["new secret"]));
    assert_eq!(
        text(new_only.send("GET", "/peek", Some(&resigned)).await).await,
        "alice"
    );
    assert_eq!(
        text(new_only.send("GET", "/peek", Some(&cookie)).await).await,
        "nobody"
    );

    // Tampered, unsigned or signed with another secret: no session, and the store is not asked.
    let unsigned = format!("gonest.sid={id}");
    let mut tampered = cookie.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered, unsigned, cookie.replace(&id[..6], "AAAAAA")] {
        let calls = old.calls();
        let response = old.send("GET", "/peek", Some(&bad)).await;
        assert_eq!(text(response).await, "nobody", "{bad}");
        assert_eq!(
            old.calls(),
            calls,
            "an unverified cookie never reaches the store"
        );
    }
    assert!(
        SessionLayer::new(
            MemorySessionStore::new(Duration::from_secs(60)),
            signed(&[""])
        )
        .is_err()
    );
}

async fn an_owner_lists_and_revokes_its_other_sessions(backend: Backend) {
    let first = app(&backend, SessionOptions::default());
    let second = app(&backend, SessionOptions::default());
    // Three devices of user 42, on two instances; one of someone else.
    let mut devices = Vec::new();
    for (i, app) in [&first, &second, &first].into_iter().enumerate() {
        let planted =
            pair(&set_cookie(&app.send("POST", &format!("/set/n/{i}"), None).await).unwrap());
        let response = app.send("POST", "/own/42", Some(&planted)).await;
        assert_eq!(response.status(), StatusCode::OK);
        devices.push(pair(&set_cookie(&response).unwrap()));
    }
    let other = pair(&set_cookie(&first.send("POST", "/own/7", None).await).unwrap());
    let record = first.store.get(&id_of(&devices[0])).await.unwrap().unwrap();
    assert_eq!(
        record.owner.as_deref(),
        Some("42"),
        "the owner moved with regenerate"
    );
    assert_eq!(record.data["n"], &b"\"0\""[..], "and so did the data");

    let listing = text(second.send("GET", "/mine", Some(&devices[1])).await).await;
    let (owner, ids) = listing.split_once(':').unwrap();
    assert_eq!(owner, "42");
    assert_eq!(ids.split(',').count(), 3, "{listing}");
    assert_eq!(
        ids.matches('*').count(),
        1,
        "the caller's own is marked: {listing}"
    );

    // A later save by a request that never touched the owner keeps it.
    first
        .send("POST", "/set/color/red", Some(&devices[2]))
        .await;
    let response = second
        .send("POST", "/revoke-others", Some(&devices[1]))
        .await;
    assert_eq!(text(response).await, "2");
    for device in [&devices[0], &devices[2]] {
        for app in [&first, &second] {
            let response = app.send("GET", "/peek", Some(device)).await;
            assert_eq!(text(response).await, "nobody");
        }
    }
    let response = first.send("GET", "/mine", Some(&devices[1])).await;
    assert_eq!(
        text(response).await.matches('*').count(),
        1,
        "the caller stays"
    );
    let response = first.send("GET", "/mine", Some(&other)).await;
    assert!(
        text(response).await.starts_with("7:"),
        "other owners are untouched"
    );
    let response = first.send("POST", "/own/bad%0Aowner", None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// The attributes of a `Set-Cookie` after its `name=value`, sorted.
fn attributes(set_cookie: &str) -> Vec<String> {
    let mut attributes: Vec<String> = set_cookie.split("; ").skip(1).map(str::to_owned).collect();
    attributes.sort();
    attributes
}

fn ttl_of(record: &SessionRecord) -> Duration {
    record.expires_at.duration_since(SystemTime::now()).unwrap()
}

fn about(actual: Duration, expected: Duration) -> bool {
    actual <= expected && actual + Duration::from_secs(60) > expected
}

async fn per_session_expiry_sets_the_cookie_and_the_store_alike_on_every_instance(
    backend: Backend,
) {
    let options = SessionOptions {
        max_age: Duration::from_secs(3600),
        session_end_ttl: Some(Duration::from_secs(7200)),
        ..Default::default()
    };
    let first = app(&backend, options.clone());
    let second = app(&backend, options);
    let thirty_days = Duration::from_secs(30 * 24 * 3600);

    // "Remember me": 30 days, in the cookie and in the store.
    let response = first.send("POST", "/expiry/idle/2592000", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(&response).unwrap();
    assert!(
        attributes(&cookie).contains(&"Max-Age=2592000".to_owned()),
        "{cookie}"
    );
    let record = first.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert!(about(ttl_of(&record), thirty_days), "{:?}", ttl_of(&record));
    // A later write on another instance sends the same cookie and keeps the same lifetime.
    let response = second
        .send("POST", "/set/color/red", Some(&pair(&cookie)))
        .await;
    let again = set_cookie(&response).unwrap();
    assert_eq!(attributes(&again), attributes(&cookie));
    let record = second.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert!(about(ttl_of(&record), thirty_days));

    // Until the browser closes: no Max-Age nor Expires, and the store keeps it session_end_ttl.
    let response = first.send("POST", "/expiry/end/0", None).await;
    let cookie = set_cookie(&response).unwrap();
    assert_eq!(
        attributes(&cookie),
        ["HttpOnly", "Path=/", "SameSite=Lax"],
        "{cookie}"
    );
    let record = first.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert!(about(ttl_of(&record), Duration::from_secs(7200)));
    let response = second
        .send("POST", "/set/color/red", Some(&pair(&cookie)))
        .await;
    assert_eq!(
        attributes(&set_cookie(&response).unwrap()),
        attributes(&cookie)
    );

    // At a fixed time: Expires and Max-Age say the same as the store.
    let at = SystemTime::now() + Duration::from_secs(5000);
    let unix = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let response = first
        .send("POST", &format!("/expiry/at/{unix}"), None)
        .await;
    let cookie = set_cookie(&response).unwrap();
    assert!(cookie.contains("Expires="), "{cookie}");
    let max_age: u64 = cookie
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    let record = first.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    let stored = record
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The store owns the clock: it turns the time into a lifetime by its own, a few ms apart.
    assert!(
        stored.abs_diff(unix) <= 1,
        "the store ends it then: {stored} vs {unix}"
    );
    assert!((4900..=5000).contains(&max_age), "{max_age}");
    // A save later does not move a fixed end.
    let response = second
        .send("POST", "/set/color/red", Some(&pair(&cookie)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let record = first.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    let later = record
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        later.abs_diff(stored) <= 1,
        "a save does not move a fixed end"
    );

    // No expiry set: `max_age`, as before.
    let cookie = set_cookie(&first.send("POST", "/set/a/b", None).await).unwrap();
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
}

async fn an_expiry_the_store_refuses_is_refused_at_once(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/login", None).await).unwrap());
    // The stores in this suite keep sessions at most 30 days.
    for uri in ["/expiry/idle/2592001", "/expiry/idle/0", "/expiry/at/1000"] {
        let response = app.send("POST", uri, Some(&cookie)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(set_cookie(&response), None, "{uri}");
    }
    let response = app
        .send("POST", "/expiry/idle/2592001", Some(&cookie))
        .await;
    let body = text(response).await;
    assert!(body.contains("maximum TTL"), "{body}");
    let record = app.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(record.version, 1, "nothing was saved");
}

async fn clear_keys_remove_and_is_empty(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/set/b/2", None).await).unwrap());
    app.send("POST", "/set/a/1", Some(&cookie)).await;
    app.send("POST", "/expiry/idle/600", Some(&cookie)).await;
    app.send("POST", "/flash/hello", Some(&cookie)).await;
    let response = app.send("GET", "/keys", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "a,b,who|false",
        "reserved keys are not listed"
    );

    let response = app.send("POST", "/remove/a", Some(&cookie)).await;
    assert_eq!(text(response).await, "1");
    let response = app.send("POST", "/remove/a", Some(&cookie)).await;
    assert_eq!(text(response).await, "(none)");

    let response = app.send("POST", "/clear", Some(&cookie)).await;
    let resent = set_cookie(&response).unwrap();
    assert_eq!(pair(&resent), cookie, "the id is kept");
    assert!(
        resent.contains("Max-Age=600"),
        "the expiry is kept: {resent}"
    );
    let response = app.send("GET", "/keys", Some(&cookie)).await;
    assert_eq!(text(response).await, "|true");
    let response = app.send("GET", "/take-flash", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "(none)",
        "flash messages go with clear"
    );
    let record = app.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(
        record.data.keys().collect::<Vec<_>>(),
        ["__gonest.expiry"],
        "saved as an empty session"
    );
}

async fn clear_also_removes_keys_another_request_added_meanwhile(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/set/a/1", None).await).unwrap());
    let id = id_of(&cookie);
    // A handler that clears the session while another instance adds a key to it (a direct save
    // between this request's load and its write).
    let store = app.store.clone();
    let other = id.clone();
    let racing = Router::new()
        .route(
            "/clear-while-another-writes",
            post(move |session: Session| {
                let store = store.clone();
                let id = other.clone();
                async move {
                    session.clear();
                    let current = store.get(&id).await.unwrap().unwrap();
                    let mut data = current.data;
                    data.insert("late".into(), b"\"x\"".to_vec().into());
                    store
                        .save(Save::new(&id, data).expected_version(current.version))
                        .await
                        .unwrap();
                    "cleared"
                }
            }),
        )
        .layer(SessionLayer::new(app.store.clone(), SessionOptions::default()).unwrap());
    let response = racing
        .oneshot(
            Request::post("/clear-while-another-writes")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let record = app.store.get(&id).await.unwrap().unwrap();
    assert!(
        record.data.is_empty(),
        "{:?}",
        record.data.keys().collect::<Vec<_>>()
    );
    assert_eq!(record.version, 3, "saved after reloading the newer version");
}

async fn an_explicit_save_lands_before_the_handler_answers(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/set/a/1", None).await).unwrap());
    let response = app.send("POST", "/save-now/early", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let resent = set_cookie(&response).unwrap();
    assert_eq!(pair(&resent), cookie);
    assert_eq!(text(response).await, "landed=true");
    let record = app.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(
        record.data["after"],
        &b"\"later\""[..],
        "later changes are written too"
    );
    assert_eq!(
        record.version, 3,
        "one save each: the explicit one and the layer's"
    );

    // A new session saved early gets its cookie all the same.
    let response = app.send("POST", "/save-now/first", None).await;
    assert_eq!(text_and_cookie(response).await.0, "landed=true");
}

async fn reload_drops_unsaved_changes(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/set/a/1", None).await).unwrap());
    let response = app.send("POST", "/reload", Some(&cookie)).await;
    assert_eq!(text_and_cookie(response).await, ("(gone)".into(), None));
    let record = app.store.get(&id_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(record.version, 1);
}

async fn a_flash_message_is_read_once(backend: Backend) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/flash/saved!", None).await).unwrap());
    let response = app.send("GET", "/keys", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "|true",
        "a flash message is not a key"
    );
    let response = app.send("GET", "/take-flash", Some(&cookie)).await;
    assert_eq!(text(response).await, "saved!");
    let response = app.send("GET", "/take-flash", Some(&cookie)).await;
    assert_eq!(text(response).await, "(none)");
}

async fn a_max_age_over_the_stores_max_ttl_is_refused(backend: Backend) {
    let options = SessionOptions {
        max_age: Duration::from_secs(31 * 24 * 3600),
        ..Default::default()
    };
    let err = SessionLayer::new(backend.store.clone(), options).unwrap_err();
    assert!(
        matches!(
            err,
            InvalidOptions::Lifetime {
                what: "max_age",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("maximum TTL"), "{err}");
    let options = SessionOptions {
        session_end_ttl: Some(Duration::from_secs(31 * 24 * 3600)),
        ..Default::default()
    };
    let err = SessionLayer::new(backend.store.clone(), options).unwrap_err();
    assert!(err.to_string().contains("session_end_ttl"), "{err}");
    let options = SessionOptions {
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    };
    assert!(SessionLayer::new(backend.store.clone(), options).is_ok());
}

#[test]
fn options_browsers_would_drop_are_refused_naming_the_rule() {
    let store = || MemorySessionStore::new(Duration::from_secs(3600));
    let secure = |name: &str| SessionOptions {
        cookie_name: name.into(),
        secure: true,
        ..Default::default()
    };
    for (options, rule) in [
        (
            SessionOptions {
                secure: false,
                ..secure("__Host-sid")
            },
            "__Host-",
        ),
        (
            SessionOptions {
                path: "/app".into(),
                ..secure("__Host-sid")
            },
            "__Host-",
        ),
        (
            SessionOptions {
                domain: Some("example.com".into()),
                ..secure("__Host-sid")
            },
            "__Host-",
        ),
        (
            SessionOptions {
                secure: false,
                ..secure("__Secure-sid")
            },
            "__Secure-",
        ),
        (
            SessionOptions {
                same_site: SameSite::None,
                ..SessionOptions::default()
            },
            "SameSite=None",
        ),
        (secure("bad name"), "not a valid cookie name"),
        (secure(""), "not a valid cookie name"),
        (
            SessionOptions {
                max_age: Duration::ZERO,
                ..secure("sid")
            },
            "zero",
        ),
    ] {
        let err = SessionLayer::new(store(), options.clone()).unwrap_err();
        assert!(err.to_string().contains(rule), "{options:?}: {err}");
    }
    for options in [
        secure("__Host-sid"),
        secure("__Secure-sid"),
        SessionOptions {
            domain: Some("example.com".into()),
            ..secure("__Secure-sid")
        },
        SessionOptions {
            same_site: SameSite::None,
            ..secure("sid")
        },
        SessionOptions::default(),
    ] {
        assert!(
            SessionLayer::new(store(), options.clone()).is_ok(),
            "{options:?}"
        );
    }
}

async fn a_value_over_the_size_limit_is_refused_at_once_and_the_stored_session_kept(
    backend: Backend,
) {
    let app = app(&backend, SessionOptions::default());
    let cookie = pair(&set_cookie(&app.send("POST", "/login", None).await).unwrap());
    let calls = app.calls();
    let response = app.send("POST", "/big/2000000", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(set_cookie(&response), None);
    let body = text(response).await;
    assert!(body.contains("over the store's limit of 1048576"), "{body}");
    assert_eq!(app.calls(), calls + 1, "only the load reached the store");
    let response = app.send("POST", "/reserved", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(text(response).await.contains("reserved"));
    let response = app.send("GET", "/peek", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "alice",
        "the stored session is untouched"
    );
}

async fn a_session_over_the_size_limit_is_a_500_and_the_stored_one_is_kept(backend: Backend) {
    // A store that cannot tell its limit: the save itself is refused.
    let app = app_with(&backend, SessionOptions::default(), true);
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

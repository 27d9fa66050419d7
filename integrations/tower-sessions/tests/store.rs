//! What the store adds to tower-sessions' suite: how it stores a record on the daemon, that
//! `create` never overwrites, owners, and a daemon that is down.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionStore as _};
use gonest_session_test_support::DaemonProcess;
use gonest_session_tower_sessions::SessiondStore;
use http::{Request, StatusCode};
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceExt;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::Error;
use tower_sessions::{Session, SessionManagerLayer, SessionStore};

async fn store() -> SessiondStore {
    let daemon = DaemonProcess::shared();
    SessiondStore::new(RemoteSessionStore::connect(daemon.url()).await.unwrap())
}

fn record(data: serde_json::Value, lifetime: time::Duration) -> Record {
    let serde_json::Value::Object(data) = data else {
        panic!("data is an object")
    };
    Record {
        id: Id::default(),
        data: data.into_iter().collect::<HashMap<_, _>>(),
        expiry_date: OffsetDateTime::now_utc() + lifetime,
    }
}

#[tokio::test]
async fn each_value_is_its_json_under_its_own_key_and_expiry_is_expires_at() {
    let store = store().await;
    let mut session = record(
        json!({"user_id": 42, "name": "ada"}),
        time::Duration::hours(3),
    );
    store.create(&mut session).await.unwrap();

    let stored = store
        .remote()
        .get(&session.id.to_string())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(&stored.data["user_id"][..], b"42");
    assert_eq!(&stored.data["name"][..], b"\"ada\"");
    assert_eq!(stored.data.len(), 2);
    let expected = SystemTime::from(session.expiry_date);
    let off = stored
        .expires_at
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_millis(1),
        "expires_at is off by {off:?}"
    );

    assert_eq!(store.load(&session.id).await.unwrap(), Some(session));
}

#[tokio::test]
async fn create_never_overwrites_a_session_and_takes_another_id() {
    let store = store().await;
    let mut session = record(json!({"user_id": 7}), time::Duration::hours(1));
    let taken = session.id;
    let theirs = HashMap::from([("theirs".to_owned(), bytes::Bytes::from_static(b"true"))]);
    store
        .remote()
        .save(Save::new(taken.to_string(), theirs.clone()))
        .await
        .unwrap();

    store.create(&mut session).await.unwrap();

    assert_ne!(session.id, taken);
    let kept = store
        .remote()
        .get(&taken.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.data, theirs);
    assert_eq!(store.load(&session.id).await.unwrap(), Some(session));
}

#[tokio::test]
async fn a_record_saved_already_expired_is_removed() {
    let store = store().await;
    let mut session = record(json!({"n": 1}), time::Duration::hours(1));
    store.create(&mut session).await.unwrap();
    session.expiry_date = OffsetDateTime::now_utc() - time::Duration::seconds(1);

    store.save(&session).await.unwrap();

    assert_eq!(store.load(&session.id).await.unwrap(), None);
    let mut expired = record(json!({"n": 1}), -time::Duration::seconds(1));
    store.create(&mut expired).await.unwrap();
    assert_eq!(store.load(&expired.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_value_that_is_not_json_is_a_decode_error_naming_its_key() {
    let store = store().await;
    let id = Id::default();
    let data = HashMap::from([("raw".to_owned(), bytes::Bytes::from_static(b"not json"))]);
    store
        .remote()
        .save(Save::new(id.to_string(), data))
        .await
        .unwrap();

    match store.load(&id).await {
        Err(Error::Decode(message)) => assert!(message.contains("\"raw\""), "{message}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn with_an_owner_key_log_out_everywhere_reaches_the_sessions() {
    let store = store().await.with_owner_key("user_id");
    // A user of this run alone: the daemon is shared by every test here.
    let user = Id::default().0.unsigned_abs() % 1_000_000_000_000;
    let mut phone = record(json!({"user_id": user}), time::Duration::hours(1));
    let mut laptop = record(
        json!({"user_id": user, "theme": "dark"}),
        time::Duration::hours(1),
    );
    let mut anonymous = record(json!({"cart": [1, 2]}), time::Duration::hours(1));
    for session in [&mut phone, &mut laptop, &mut anonymous] {
        store.create(session).await.unwrap();
    }

    let destroyed = store
        .remote()
        .destroy_by_owner(&user.to_string(), &[])
        .await
        .unwrap();

    assert_eq!(destroyed, 2);
    assert_eq!(store.load(&phone.id).await.unwrap(), None);
    assert_eq!(store.load(&laptop.id).await.unwrap(), None);
    assert!(store.load(&anonymous.id).await.unwrap().is_some());
}

/// A store whose daemon cannot be reached (`refused`) or never answers.
async fn unreachable(refused: bool) -> (SessiondStore, Option<std::net::TcpListener>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Refused: nothing listens there any more. Silent: the kernel accepts the connection and
    // nobody ever reads it.
    let listener = (!refused).then_some(listener);
    let remote = RemoteSessionStore::builder(url)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy()
        .unwrap();
    (SessiondStore::new(remote), listener)
}

#[tokio::test]
async fn a_daemon_that_is_down_or_silent_is_an_error_with_its_code_never_a_hang() {
    for refused in [true, false] {
        let (store, _listener) = unreachable(refused).await;
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), store.load(&Id::default()))
            .await
            .expect("the store answered within its timeout");
        match answer {
            Err(Error::Backend(message)) => assert!(
                message.starts_with("UNAVAILABLE: ") || message.starts_with("DEADLINE_EXCEEDED: "),
                "{message}"
            ),
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[tokio::test]
async fn an_app_whose_daemon_is_down_answers_500() {
    let (store, _listener) = unreachable(true).await;
    let app = Router::new()
        .route(
            "/insert",
            get(|session: Session| async move {
                match session.insert("foo", 42).await {
                    Ok(()) => StatusCode::OK,
                    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                }
            }),
        )
        .layer(SessionManagerLayer::new(store));
    let cookie = format!("id={}", Id::default());

    let response = app
        .oneshot(
            Request::get("/insert")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();

    // The handler's load fails (503 from the handler); tower-sessions itself answers 500 when
    // the save after the handler fails.
    assert!(
        response.status() == StatusCode::SERVICE_UNAVAILABLE
            || response.status() == StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        response.status()
    );
}

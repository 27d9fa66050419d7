//! What the store adds to actix-session's suite: how it stores a session on the daemon, that an
//! update never brings back a destroyed session, owners, bad keys and a daemon that is down.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use actix_session::config::CookieContentSecurity;
use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore};
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::{Key, time};
use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use gonest_session_actix::SessiondStore;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionStore as _};
use gonest_session_test_support::DaemonProcess;

async fn store(daemon: &DaemonProcess) -> SessiondStore {
    SessiondStore::new(RemoteSessionStore::connect(daemon.url()).await.unwrap())
}

fn state(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn key(value: &str) -> SessionKey {
    SessionKey::try_from(value.to_owned()).unwrap()
}

#[actix_web::test]
async fn each_value_is_its_json_under_its_own_key_for_the_ttl_asked() {
    let daemon = DaemonProcess::shared();
    let store = store(daemon).await;
    let app = test::init_service(
        App::new()
            .wrap(
                SessionMiddleware::builder(store.clone(), Key::generate())
                    .cookie_content_security(CookieContentSecurity::Signed)
                    .build(),
            )
            .route(
                "/login",
                web::post().to(|session: Session| async move {
                    session.insert("user_id", "ferris").unwrap();
                    session.insert("counter", 3).unwrap();
                    "ok"
                }),
            ),
    )
    .await;

    let response =
        test::call_service(&app, test::TestRequest::post().uri("/login").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The cookie is signed; the session key is what follows the signature.
    let cookie = response
        .response()
        .cookies()
        .next()
        .expect("a session cookie");
    let id = &cookie.value()[cookie.value().len() - 43..];

    let stored = store.remote().get(id).await.unwrap().expect("stored");
    assert_eq!(&stored.data["user_id"][..], b"\"ferris\"");
    assert_eq!(&stored.data["counter"][..], b"3");
    // actix-session's default TTL for a browser session's state is one day.
    let lifetime = stored.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(
        lifetime > Duration::from_secs(86_400 - 60) && lifetime <= Duration::from_secs(86_400),
        "{lifetime:?}"
    );
}

#[actix_web::test]
async fn new_sessions_get_new_keys_and_updates_keep_theirs() {
    let daemon = DaemonProcess::shared();
    let store = store(daemon).await;
    let ttl = time::Duration::minutes(5);
    let first = store.save(state(&[("a", "1")]), &ttl).await.unwrap();
    let second = store.save(state(&[("a", "2")]), &ttl).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(first.as_ref().len(), 43);

    let kept = store
        .update(first, state(&[("a", "3")]), &ttl)
        .await
        .unwrap();

    assert_eq!(store.load(&kept).await.unwrap(), Some(state(&[("a", "3")])));
    assert_eq!(
        store.load(&second).await.unwrap(),
        Some(state(&[("a", "2")]))
    );
}

#[actix_web::test]
async fn an_update_never_brings_back_a_destroyed_session() {
    // A daemon of its own: the test counts every live session.
    let daemon = DaemonProcess::start(&[]);
    let store = store(&daemon).await;
    let ttl = time::Duration::minutes(5);
    let session = store
        .save(state(&[("user_id", "\"ferris\"")]), &ttl)
        .await
        .unwrap();
    let id = session.as_ref().to_owned();
    // Logged out elsewhere while a request still holds the session.
    assert!(store.remote().destroy(&id).await.unwrap());

    let answered = store
        .update(
            session,
            state(&[("user_id", "\"ferris\""), ("n", "1")]),
            &ttl,
        )
        .await
        .unwrap();
    store.update_ttl(&answered, &ttl).await.unwrap();

    assert_eq!(answered.as_ref(), id);
    assert_eq!(store.load(&answered).await.unwrap(), None);
    let live = store.remote().stats().await.unwrap().live_sessions;
    assert_eq!(live, Some(0), "no session was made in its place");
}

#[actix_web::test]
async fn update_ttl_moves_the_expiry_of_a_live_session() {
    let daemon = DaemonProcess::shared();
    let store = store(daemon).await;
    let session = store
        .save(state(&[("a", "1")]), &time::Duration::minutes(1))
        .await
        .unwrap();

    store
        .update_ttl(&session, &time::Duration::hours(2))
        .await
        .unwrap();

    let stored = store.remote().get(session.as_ref()).await.unwrap().unwrap();
    let lifetime = stored.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(7_000), "{lifetime:?}");
    assert_eq!(stored.version, 1, "a TTL change is not a save");
}

#[actix_web::test]
async fn with_an_owner_key_log_out_everywhere_reaches_the_sessions() {
    let daemon = DaemonProcess::shared();
    let store = store(daemon).await.with_owner_key("user_id");
    let ttl = time::Duration::minutes(5);
    // A user of this run alone: the daemon is shared by the tests here.
    let user = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let owned = state(&[("user_id", &format!("\"{user}\""))]);
    let phone = store.save(owned.clone(), &ttl).await.unwrap();
    let laptop = store.save(owned, &ttl).await.unwrap();
    let anonymous = store.save(state(&[("cart", "[1,2]")]), &ttl).await.unwrap();

    assert_eq!(
        store.remote().destroy_by_owner(&user, &[]).await.unwrap(),
        2
    );

    assert_eq!(store.load(&phone).await.unwrap(), None);
    assert_eq!(store.load(&laptop).await.unwrap(), None);
    assert!(store.load(&anonymous).await.unwrap().is_some());
}

#[actix_web::test]
async fn keys_the_daemon_cannot_hold_name_no_session_and_bad_values_are_errors() {
    let daemon = DaemonProcess::shared();
    let store = store(daemon).await;
    for bad in ["has space", "tab\tkey", &"k".repeat(300), ""] {
        assert_eq!(store.load(&key(bad)).await.unwrap(), None, "{bad:?}");
        store.delete(&key(bad)).await.unwrap();
    }

    let id = "a-session-with-a-binary-value-0123456789abcdef";
    let binary = HashMap::from([("raw".to_owned(), bytes::Bytes::from_static(&[0xff, 0xfe]))]);
    store.remote().save(Save::new(id, binary)).await.unwrap();
    match store.load(&key(id)).await {
        Err(LoadError::Deserialization(err)) => assert!(err.to_string().contains("\"raw\"")),
        other => panic!("expected a deserialization error, got {other:?}"),
    }

    match store.save(state(&[]), &time::Duration::ZERO).await {
        Err(SaveError::Other(err)) => {
            assert!(err.to_string().starts_with("INVALID_ARGUMENT: "), "{err}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_daemon_that_is_down_is_an_error_with_its_code_and_the_app_answers_500() {
    let url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let remote = RemoteSessionStore::builder(url)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy()
        .unwrap();
    let store = SessiondStore::new(remote);

    match store.load(&key("a-key-of-the-right-form")).await {
        Err(LoadError::Other(err)) => {
            assert!(err.to_string().starts_with("UNAVAILABLE: "), "{err}")
        }
        other => panic!("expected an error, got {other:?}"),
    }

    let app = test::init_service(
        App::new()
            .wrap(SessionMiddleware::new(store, Key::generate()))
            .route(
                "/login",
                web::post().to(|session: Session| async move {
                    session.insert("user_id", "ferris").unwrap();
                    "ok"
                }),
            ),
    )
    .await;
    let request = test::TestRequest::post().uri("/login").to_request();
    let status = match test::try_call_service(&app, request).await {
        Ok(response) => response.status(),
        Err(err) => err.error_response().status(),
    };
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

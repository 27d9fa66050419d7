//! The GoNest sessions controller written as an actix-session app writes it, on the daemon.
//!
//! `POST /login`, `GET /profile` and `POST /logout` answer the same JSON as `example-app`. The
//! only line that knows about the daemon is the store the `SessionMiddleware` is built on (see
//! [`sessions`]).

use actix_session::config::PersistentSession;
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::{Key, time::Duration};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use gonest_session_actix::SessiondStore;
use gonest_session_client::RemoteSessionStore;
use serde_json::json;

/// The user every login logs in, as in `example-app`.
const USER_ID: u64 = 42;

/// The session middleware on `store`'s daemon, signing (and encrypting) cookies with `key`.
/// Sessions belong to their `user_id`, so that "log out everywhere" (`gonest-sessionctl
/// destroy-owner 42`) reaches them.
pub fn sessions(
    store: RemoteSessionStore,
    key: Key,
    secure: bool,
) -> SessionMiddleware<SessiondStore> {
    // With Redis this line was `RedisSessionStore::new(redis_url).await?`.
    let store = SessiondStore::new(store).with_owner_key("user_id");
    SessionMiddleware::builder(store, key)
        .cookie_secure(secure)
        .session_lifecycle(PersistentSession::default().session_ttl(Duration::hours(24)))
        .build()
}

/// The controller's routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/login", web::post().to(login))
        .route("/profile", web::get().to(profile))
        .route("/logout", web::post().to(logout));
}

/// An error answer, with the JSON `example-app` answers.
fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "statusCode": status.as_u16(), "message": message }))
}

async fn login(session: Session) -> HttpResponse {
    // A new key at login, so a key planted before it is worthless afterwards.
    session.renew();
    let stored = session
        .insert("user_id", USER_ID)
        .and_then(|()| session.insert("role", "admin"));
    match stored {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "logged in" })),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the session",
        ),
    }
}

async fn profile(session: Session) -> HttpResponse {
    match session.get::<u64>("user_id") {
        Ok(Some(user_id)) => HttpResponse::Ok().json(json!({ "user_id": user_id })),
        Ok(None) => error(StatusCode::UNAUTHORIZED, "not logged in"),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a session value is not of the type asked for",
        ),
    }
}

async fn logout(session: Session) -> HttpResponse {
    // Deletes the session from the daemon and expires the cookie.
    session.purge();
    HttpResponse::Ok().json(json!({ "status": "logged out" }))
}

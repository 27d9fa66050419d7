//! The GoNest sessions controller written as a tower-sessions app writes it, on the daemon.
//!
//! `POST /login`, `GET /profile` and `POST /logout` answer the same JSON as `example-app`. The
//! only line that knows about the daemon is the store the `SessionManagerLayer` is built on
//! (see [`app`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gonest_session_client::RemoteSessionStore;
use gonest_session_tower_sessions::SessiondStore;
use serde_json::{Value, json};
use time::Duration;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The user every login logs in, as in `example-app`.
const USER_ID: u64 = 42;

/// The app on `store`'s daemon. Sessions belong to their `user_id`, so that "log out
/// everywhere" (`gonest-sessionctl destroy-owner 42`) reaches them.
pub fn app(store: RemoteSessionStore, secure: bool) -> Router {
    // With MemoryStore this line was `SessionManagerLayer::new(MemoryStore::default())`.
    let store = SessiondStore::new(store).with_owner_key("user_id");
    let sessions = SessionManagerLayer::new(store)
        .with_secure(secure)
        .with_expiry(Expiry::OnInactivity(Duration::hours(24)));
    Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .layer(sessions)
}

/// An error answer, with the JSON `example-app` answers.
struct AppError(StatusCode, &'static str);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({ "statusCode": self.0.as_u16(), "message": self.1 });
        (self.0, Json(body)).into_response()
    }
}

/// A store failure: 503, as `example-app` answers one.
fn unavailable(_: tower_sessions::session::Error) -> AppError {
    AppError(StatusCode::SERVICE_UNAVAILABLE, "session store unavailable")
}

async fn login(session: Session) -> Result<Json<Value>, AppError> {
    // A new id at login, so an id planted before it is worthless afterwards.
    session.cycle_id().await.map_err(unavailable)?;
    session
        .insert("user_id", USER_ID)
        .await
        .map_err(unavailable)?;
    session.insert("role", "admin").await.map_err(unavailable)?;
    Ok(Json(json!({ "status": "logged in" })))
}

async fn profile(session: Session) -> Result<Json<Value>, AppError> {
    let user_id: u64 = session
        .get("user_id")
        .await
        .map_err(unavailable)?
        .ok_or(AppError(StatusCode::UNAUTHORIZED, "not logged in"))?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn logout(session: Session) -> Result<Json<Value>, AppError> {
    // Deletes the session from the daemon and expires the cookie.
    session.flush().await.map_err(unavailable)?;
    Ok(Json(json!({ "status": "logged out" })))
}

//! An axum app whose sessions live in gonest-sessiond: log in, read the profile, log out, and
//! log out of every other device.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gonest_session::{Expiry, OwnerSessions, Session, SessionLayer, SessionOptions};
use gonest_session_client::RemoteSessionStore;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Connects on first use, so the app may start before the daemon.
    let store = RemoteSessionStore::builder("http://127.0.0.1:7070").connect_lazy()?;
    // Behind HTTPS, set `secure: true` too.
    let options = SessionOptions::default();
    let app = Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(SessionLayer::new(store, options)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// A JSON answer, or an error status with a message.
type Answer = Result<Json<Value>, (StatusCode, String)>;

async fn login(session: Session) -> Answer {
    let user_id: u64 = 42; // Check the user's credentials here.
    session.regenerate(); // A new id at login: an id planted before it is worthless.
    // The owner is the user: `gonest-sessionctl list --owner 42` and "log out everywhere"
    // find the session by it.
    session
        .set_owner(Some(&user_id.to_string()))
        .map_err(internal)?;
    session
        .set_expiry(Expiry::OnInactivity(Duration::from_secs(30 * 24 * 3600)))
        .map_err(internal)?;
    session.set_value("user_id", user_id).map_err(internal)?;
    Ok(Json(json!({ "status": "logged in" })))
}

async fn profile(session: Session) -> Answer {
    let user_id: u64 = session
        .get_value("user_id")
        .map_err(internal)?
        .ok_or_else(not_logged_in)?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn logout(session: Session) -> Answer {
    session.destroy();
    Ok(Json(json!({ "status": "logged out" })))
}

async fn logout_everywhere(session: Session, sessions: OwnerSessions) -> Answer {
    let owner = session.owner().ok_or_else(not_logged_in)?;
    let current: Vec<String> = session.id().into_iter().collect();
    let destroyed = sessions.revoke(&owner, &current).await.map_err(internal)?;
    Ok(Json(json!({ "destroyed": destroyed })))
}

fn not_logged_in() -> (StatusCode, String) {
    (StatusCode::UNAUTHORIZED, "not logged in".to_owned())
}

fn internal(err: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

//! `tower-sessions-app`: the peer of `example-app` in `gonest-session-bench http`.
//!
//! The same three routes, answering the same JSON, on what Rust teams use for sessions on Redis
//! today: tower-sessions with tower-sessions-redis-store (fred, a pool of 6 connections, as
//! its documentation sets up).
//!
//! ```sh
//! tower-sessions-app --listen 127.0.0.1:8090 --redis redis://127.0.0.1:6379
//! ```

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};

/// The user every login logs in as, as in `example-app`.
const USER_ID: u64 = 42;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8090".to_owned();
    let mut redis = "redis://127.0.0.1:6379".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--redis" => redis = value,
            _ => anyhow::bail!("usage: tower-sessions-app [--listen ADDR] [--redis URL]"),
        }
    }
    let pool = Pool::new(Config::from_url(&redis)?, None, None, None, 6)?;
    let _connection = pool.connect();
    pool.wait_for_connect().await?;
    let sessions = SessionManagerLayer::new(RedisStore::new(pool))
        .with_secure(false)
        .with_expiry(Expiry::OnSessionEnd);
    let app = Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .layer(sessions);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("tower-sessions-app listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A store failure, as `example-app` answers one.
fn unavailable(_: tower_sessions::session::Error) -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

async fn login(session: Session) -> Result<Json<Value>, StatusCode> {
    session.cycle_id().await.map_err(unavailable)?;
    session
        .insert("user_id", USER_ID)
        .await
        .map_err(unavailable)?;
    session.insert("role", "admin").await.map_err(unavailable)?;
    Ok(Json(json!({ "status": "logged in" })))
}

async fn profile(session: Session) -> Result<Json<Value>, StatusCode> {
    let user_id: u64 = session
        .get("user_id")
        .await
        .map_err(unavailable)?
        .ok_or(StatusCode::UNAUTHORIZED)?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn logout(session: Session) -> Result<Json<Value>, StatusCode> {
    session
        .remove::<u64>("user_id")
        .await
        .map_err(unavailable)?;
    session
        .remove::<String>("role")
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "status": "logged out" })))
}

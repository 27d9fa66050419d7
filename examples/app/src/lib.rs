//! The GoNest sessions controller as an axum app: `POST /login` (with an optional
//! `{"remember": true}`), `GET /profile`, `POST /logout`, and the user's devices:
//! `GET /sessions`, `POST /logout-everywhere`. Run several instances against one
//! `gonest-sessiond` and they share sessions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gonest_session::{
    Expiry, InvalidOptions, MemorySessionStore, OwnerSessions, Session, SessionError, SessionLayer,
    SessionOptions, SessionStore, StoreError,
};
use gonest_session_client::RemoteSessionStore;
use serde_json::{Value, json};

/// The example app's command line.
#[derive(Debug, clap::Parser)]
#[command(name = "example-app", version, about)]
pub struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "EXAMPLE_APP_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Where sessions live: `memory`, or a gonest-sessiond URL such as http://127.0.0.1:7070, or
    /// several daemons sharing one Redis, comma-separated (operations go on through the others
    /// while one is down).
    #[arg(long, env = "EXAMPLE_APP_STORE", default_value = "memory")]
    pub store: String,
    /// The daemon's token file, in the daemon's own format (one token per line, `#` comments);
    /// the first token is sent. The daemon's --auth-token-file itself will do.
    #[arg(long, env = "EXAMPLE_APP_STORE_TOKEN_FILE")]
    pub store_token_file: Option<PathBuf>,
    /// Sessions kept in this instance's near cache, answered without a call to the daemon and
    /// kept true by its invalidations; 0 turns the cache off. Only with a daemon `--store`.
    #[arg(long, env = "EXAMPLE_APP_NEAR_CACHE_ENTRIES", default_value_t = 10_000)]
    pub near_cache_entries: usize,
    /// Mark the session cookie Secure (serve over HTTPS when set).
    #[arg(long, env = "EXAMPLE_APP_SECURE")]
    pub secure: bool,
    /// Sign the session cookie as express-session does, with these secrets (comma-separated;
    /// the first signs), so an express app with the same secret shares the login. Prefer the
    /// environment variable: a command line is visible to other users.
    #[arg(
        long,
        env = "EXAMPLE_APP_COOKIE_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub cookie_secret: Vec<String>,
}

/// The controller's routes, without the session layer (tests add routes of their own).
pub fn routes() -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .route("/sessions", get(list_sessions))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/data/{key}", get(get_data).put(put_data))
}

/// The app: its routes behind the session layer. Fails on options the layer refuses.
pub fn app(store: impl SessionStore, options: SessionOptions) -> Result<Router, InvalidOptions> {
    Ok(routes().layer(SessionLayer::new(store, options)?))
}

/// How long a login lasts without a visit: 24 hours, the GoNest sessions' default `MaxAge`. The
/// cookie carries it as `Max-Age`, so the login outlives a browser restart, as it does on GoNest.
pub const LOGIN_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a "remember me" login lasts without a visit: 30 days.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The store named on the command line: `memory`, or a daemon URL such as
/// `http://127.0.0.1:7070`, with the daemon's token if it wants one and a near cache of
/// `near_cache_entries` sessions (0: none). The daemon is connected to lazily, so the app can
/// start first.
pub fn store(
    spec: &str,
    max_age: Duration,
    token_file: Option<&Path>,
    near_cache_entries: usize,
) -> anyhow::Result<Store> {
    if spec == "memory" {
        return Ok(Store::Memory(MemorySessionStore::new(max_age)));
    }
    let mut builder = RemoteSessionStore::builder(spec).near_cache(near_cache_entries);
    if let Some(path) = token_file {
        builder = builder.auth_token_file(path)?;
    }
    Ok(Store::Remote(builder.connect_lazy()?))
}

/// The store the app runs on.
#[derive(Debug, Clone)]
pub enum Store {
    /// In this process.
    Memory(MemorySessionStore),
    /// A daemon's.
    Remote(RemoteSessionStore),
}

impl Store {
    /// The store, for the session layer.
    pub fn shared(&self) -> Arc<dyn SessionStore> {
        match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Remote(store) => Arc::new(store.clone()),
        }
    }

    /// Logs the near cache's counters every `every`, while it is on, until the app stops.
    pub async fn log_near_cache(self, every: Duration) {
        let Self::Remote(store) = self else { return };
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(stats) = store.near_cache_stats() else {
                return;
            };
            tracing::info!(
                hits = stats.hits,
                misses = stats.misses,
                invalidations = stats.invalidations,
                flushes = stats.flushes,
                entries = stats.entries,
                serving = stats.serving,
                "near cache"
            );
        }
    }
}

/// Completes on Ctrl-C or SIGTERM (what Docker sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// An error answered as GoNest's exception JSON: `{"statusCode": 401, "message": "..."}`.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: &'static str,
}

impl AppError {
    /// A 401 with `message`.
    pub fn unauthorized(message: &'static str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({ "statusCode": self.status.as_u16(), "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// The user every login logs in (GoNest's example controller has no user database).
const USER_ID: u64 = 42;

/// `POST /login`'s optional JSON body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    /// Keep the user logged in for [`REMEMBER_FOR`] after the last visit, instead of
    /// [`LOGIN_FOR`].
    #[serde(default)]
    remember: bool,
}

async fn login(session: Session, body: Bytes) -> Result<Json<Value>, AppError> {
    let login: Login = if body.iter().all(u8::is_ascii_whitespace) {
        Login::default()
    } else {
        serde_json::from_slice(&body).map_err(|_| AppError {
            status: StatusCode::BAD_REQUEST,
            message: "the body must be empty or {\"remember\": true|false}",
        })?
    };
    // A new id at login, so an id planted before it is worthless afterwards.
    session.regenerate();
    // Set either way: a login on a session that was remembered before starts afresh.
    let expiry = Expiry::OnInactivity(if login.remember {
        REMEMBER_FOR
    } else {
        LOGIN_FOR
    });
    let stored = session
        .set_expiry(expiry)
        // The owner is the user: "your devices" and "log out everywhere" find sessions by it.
        .and_then(|()| session.set_owner(Some(&USER_ID.to_string())))
        .and_then(|()| session.set_value("user_id", USER_ID))
        .and_then(|()| session.set_value("role", "admin"));
    if let Err(err) = stored {
        tracing::error!(%err, "could not store the login in the session");
        return Err(AppError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "could not store the session",
        });
    }
    Ok(Json(json!({ "status": "logged in" })))
}

async fn profile(session: Session) -> Result<Json<Value>, AppError> {
    let user_id: u64 = session
        .get_value("user_id")
        .map_err(wrong_type)?
        .ok_or(AppError::unauthorized("not logged in"))?;
    Ok(Json(json!({ "user_id": user_id })))
}

/// The logged-in user's owner name, or a 401.
fn logged_in(session: &Session) -> Result<String, AppError> {
    let _: u64 = session
        .get_value("user_id")
        .map_err(wrong_type)?
        .ok_or(AppError::unauthorized("not logged in"))?;
    session
        .owner()
        .ok_or(AppError::unauthorized("not logged in"))
}

/// A session value that does not read as the type a handler asks for: a 500, logged.
fn wrong_type(err: SessionError) -> AppError {
    tracing::error!(%err, "a session value is not of the type asked for");
    AppError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "a session value is not of the type asked for",
    }
}

/// A store failure, answered 503 like the layer's own.
fn unavailable(err: StoreError) -> AppError {
    tracing::error!(%err, "the session store failed");
    AppError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "session store unavailable",
    }
}

/// `GET /sessions`: the caller's sessions ("your devices"), ids shortened to 8 characters.
async fn list_sessions(session: Session, sessions: OwnerSessions) -> Result<Json<Value>, AppError> {
    let owner = logged_in(&session)?;
    let current = session.id();
    let listed = sessions.list(&owner).await.map_err(unavailable)?;
    let rfc3339 = |time: std::time::SystemTime| humantime::format_rfc3339_seconds(time).to_string();
    let listed: Vec<Value> = listed
        .iter()
        .map(|s| {
            json!({
                "id": s.id.chars().take(8).collect::<String>(),
                "created_at": rfc3339(s.created_at),
                "expires_at": rfc3339(s.expires_at),
                "current": Some(&s.id) == current.as_ref(),
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": listed })))
}

/// `POST /logout-everywhere`: destroys the caller's other sessions; the caller stays logged in.
async fn logout_everywhere(
    session: Session,
    sessions: OwnerSessions,
) -> Result<Json<Value>, AppError> {
    let owner = logged_in(&session)?;
    let except: Vec<String> = session.id().into_iter().collect();
    let destroyed = sessions
        .revoke(&owner, &except)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "destroyed": destroyed })))
}

/// `GET /data/{key}`: one value of the session, as JSON; 404 when it has none.
async fn get_data(
    session: Session,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Result<Json<Value>, AppError> {
    let value: Option<Value> = session.get_value(&key).map_err(wrong_type)?;
    value.map(Json).ok_or(AppError {
        status: StatusCode::NOT_FOUND,
        message: "no such key in the session",
    })
}

/// `PUT /data/{key}` with a JSON body: stores it in the session under `key`.
async fn put_data(
    session: Session,
    axum::extract::Path(key): axum::extract::Path<String>,
    Json(value): Json<Value>,
) -> Result<Json<Value>, AppError> {
    session.set_value(&key, value).map_err(|err| {
        tracing::debug!(%err, "value refused");
        AppError {
            status: StatusCode::BAD_REQUEST,
            message: "the session refused the value",
        }
    })?;
    Ok(Json(json!({ "status": "stored" })))
}

async fn logout(session: Session) -> Json<Value> {
    session.delete("user_id");
    session.delete("role");
    // Not the user's any more: "log out everywhere" has nothing left to find here.
    let _ = session.set_owner(None);
    Json(json!({ "status": "logged out" }))
}

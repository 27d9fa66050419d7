//! Cookie sessions for tower and axum apps, kept in any GoNest [`SessionStore`]: the in-process
//! [`MemorySessionStore`] for a single instance, or `RemoteSessionStore` (crate
//! `gonest-session-client`) so that every instance of an app shares its users' sessions through
//! one `gonest-sessiond`.
//!
//! ```no_run
//! use axum::{Json, Router, http::StatusCode, routing::{get, post}};
//! use gonest_session::{MemorySessionStore, Session, SessionLayer, SessionOptions};
//! use serde_json::{Value, json};
//! use std::time::Duration;
//!
//! async fn login(session: Session) -> Json<Value> {
//!     session.regenerate();
//!     session.set_value("user_id", 42).expect("a number serializes");
//!     Json(json!({ "status": "logged in" }))
//! }
//!
//! async fn profile(session: Session) -> Result<Json<Value>, StatusCode> {
//!     // `Err`: the value is not a `u64` (stored as something else); `Ok(None)`: not logged in.
//!     let user_id: Option<u64> = session
//!         .get_value("user_id")
//!         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     let user_id = user_id.ok_or(StatusCode::UNAUTHORIZED)?;
//!     Ok(Json(json!({ "user_id": user_id })))
//! }
//!
//! # async fn demo() {
//! let store = MemorySessionStore::new(Duration::from_secs(24 * 3600));
//! let app: Router = Router::new()
//!     .route("/login", post(login))
//!     .route("/profile", get(profile))
//!     .layer(SessionLayer::new(store, SessionOptions::default()).expect("valid options"));
//! # }
//! ```
//!
//! What the layer does for each request:
//! - It reads the session cookie; a value that is not an id of the form this crate issues is
//!   treated as no session, without asking the store. New ids are 256 bits from the operating
//!   system's CSPRNG, base64url-encoded.
//! - The session is loaded only when a handler asks for it (the [`Session`] extractor does);
//!   routes that never use it cost nothing.
//! - After the handler, a changed session is saved conditionally on the version it was loaded
//!   at. If another request saved it meanwhile, the layer reloads it and applies this request's
//!   own changes on top, so two instances changing different keys both land; if it was destroyed
//!   meanwhile, this request's changes are dropped rather than bringing the session back.
//! - A session that was never written is never stored and sets no cookie. `Set-Cookie` goes out
//!   whenever the session is saved (or, with `rolling`, touched), so the cookie's lifetime
//!   restarts with the store's, and as a removal cookie for a destroyed session. The lifetime of
//!   both is the session's [`Expiry`]: by default `max_age` of inactivity; "remember me" or a
//!   browser-session cookie per session with [`Session::set_expiry`].
//! - Nothing is saved when the handler answers with a 5xx. When the store fails, the request gets
//!   a 503 with no `Set-Cookie` and the error is logged, never with the session id.

mod error;
mod expiry;
mod id;
mod layer;
mod options;
mod owner_sessions;
mod session;
mod signing;

#[cfg(feature = "axum")]
mod extract;

pub use error::{InvalidOptions, SessionError};
pub use expiry::Expiry;
#[cfg(feature = "axum")]
pub use extract::SessionRejection;
pub use gonest_session_core::{
    Bytes, MemorySessionStore, Save, SessionData, SessionRecord, SessionStore, StoreError,
    StoreLimits,
};
pub use layer::{SessionLayer, SessionMiddleware};
pub use options::{SameSite, SessionOptions};
pub use owner_sessions::OwnerSessions;
pub use session::Session;

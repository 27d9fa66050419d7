//! [`RemoteSessionStore`]: the GoNest [`SessionStore`] backed by a `gonest-sessiond` daemon, so
//! that every instance of an app shares its users' sessions.
//!
//! ```no_run
//! use gonest_session_client::RemoteSessionStore;
//! use gonest_session_core::{Save, SessionData, SessionStore};
//!
//! # async fn demo() -> Result<(), gonest_session_core::StoreError> {
//! let store = RemoteSessionStore::connect("http://127.0.0.1:7070").await?;
//! let saved = store.save(Save::new("abc123", SessionData::new()).expected_version(0)).await?;
//! assert_eq!(saved.version, 1);
//! # Ok(())
//! # }
//! ```
//!
//! The store is cheap to clone; clones share one HTTP/2 connection. Operations travel over a few
//! long-lived `Pipeline` streams shared by every caller (see [`RemoteSessionStoreBuilder::streams`]):
//! each operation is tagged and its answer routed back by tag. When the daemon goes away, calls
//! fail with [`StoreError::Unavailable`] (Get, Touch and Destroy are first retried once on a new
//! stream), and the store reconnects by itself when it comes back.

mod auth;
mod builder;
mod lanes;
mod near;
mod remote;
mod stream;

pub use builder::{RemoteSessionStoreBuilder, redact_url};
pub use gonest_session_core::{SessionStore, StoreError};
pub use near::NearCacheStats;
pub use remote::{RemoteSessionStore, RemoteStats};

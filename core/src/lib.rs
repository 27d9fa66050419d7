//! Session records, the [`SessionStore`] contract and [`MemorySessionStore`], the expiring,
//! versioned map that both `gonest-sessiond` and in-process apps use.
//!
//! ```
//! use std::time::Duration;
//! use gonest_session_core::{StoreExpiry, MemorySessionStore, Save, SessionData, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gonest_session_core::StoreError> {
//! let store = MemorySessionStore::new(Duration::from_secs(30 * 60));
//!
//! let mut data = SessionData::new();
//! // Values are `bytes::Bytes`: `Vec<u8>::into()` takes a vector without copying it.
//! data.insert("user_id".to_owned(), b"42".to_vec().into());
//! // Expected version 0: create the session only if it does not exist yet.
//! let saved = store.save(Save::new("abc123", data).expected_version(0)).await?;
//! assert_eq!(saved.version, 1);
//!
//! let record = store.get("abc123").await?.expect("just saved");
//! assert_eq!(record.data["user_id"], &b"42"[..]);
//! assert!(store.destroy("abc123").await?);
//! # Ok(())
//! # }
//! ```
//!
//! # The data model
//!
//! Every [`SessionStore`] follows these rules:
//! - A record whose `expires_at` is not in the future does not exist, for every operation,
//!   whether or not a sweeper has removed it yet.
//! - `version` counts data writes: a new record gets 1, each successful save adds 1. Touch does
//!   not change it.
//! - A save is conditional on its expected version: `None`, an unconditional upsert; `Some(0)`,
//!   only if no live record has this id; `Some(n)`, only if the live record is at version `n`.
//!   Otherwise it fails with [`StoreError::Conflict`] and changes nothing.
//! - `created_at` is set on the first save and kept by later saves.
//! - The store owns the clock: callers give a TTL (or an absolute expiry) and the store
//!   computes `expires_at` from its own clock.

mod clock;
pub mod codec;
mod error;
mod id;
pub mod journal;
mod memory;
mod record;
mod snapshot;
mod store;

pub use clock::Clock;
pub use error::{Result, StoreError};
pub use id::{MAX_ID_LEN, MAX_OWNER_LEN, validate_id, validate_owner, validate_stored_owner};
pub use memory::{
    LIST_SHARDS_PER_PAGE, MemorySessionStore, MemorySessionStoreBuilder, Replayed, StoreStats,
    StoredSession,
};
pub use record::{Save, Saved, SessionData, SessionRecord, StoreExpiry, data_size};
pub use snapshot::SnapshotError;
pub use store::{MAX_PAGE_SESSIONS, SessionPage, SessionStore, StoreLimits};

/// The type of a session's values ([`SessionData`]); re-exported so a custom store or an app
/// needs no dependency of its own.
pub use bytes::Bytes;

/// The attribute that implements [`SessionStore`]'s async methods; re-exported so a custom store
/// needs no dependency of its own.
pub use async_trait::async_trait;

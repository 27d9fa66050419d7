use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Result, Save, Saved, SessionRecord};

/// Where sessions live: the in-process [`MemorySessionStore`](crate::MemorySessionStore), the
/// `gonest-sessiond` daemon through `RemoteSessionStore`, or a store of your own.
///
/// Every implementation follows the data model in the [crate docs](crate): expired records are
/// absent, versions count saves, saves are conditional on `expected_version`, and the store owns
/// the clock.
///
/// A custom store, here one that keeps nothing:
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use gonest_session_core::{async_trait, Result, Save, Saved, SessionRecord, SessionStore, StoreError};
///
/// struct Forgetful;
///
/// #[async_trait]
/// impl SessionStore for Forgetful {
///     async fn get(&self, _id: &str) -> Result<Option<SessionRecord>> {
///         Ok(None)
///     }
///     async fn save(&self, save: Save) -> Result<Saved> {
///         match save.expected_version {
///             None | Some(0) => {
///                 let now = SystemTime::now();
///                 Ok(Saved { version: 1, created_at: now, expires_at: now })
///             }
///             Some(expected) => Err(StoreError::Conflict { expected, actual: None }),
///         }
///     }
///     async fn destroy(&self, _id: &str) -> Result<bool> {
///         Ok(false)
///     }
///     async fn touch(&self, _id: &str, _ttl: Option<Duration>) -> Result<Option<SystemTime>> {
///         Ok(None)
///     }
/// }
/// ```
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Reads the live session with this id; `Ok(None)` when there is none or it expired.
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>>;

    /// Writes a session's data, subject to `save.expected_version`. On success the version is
    /// one more than before (1 for a new session), `created_at` is kept from the first save, and
    /// `expires_at` is computed from `save.expiry` by the store's clock.
    ///
    /// Errors: [`StoreError::Conflict`](crate::StoreError::Conflict) when the expected version
    /// does not match (nothing changed), `InvalidArgument` for a bad id or expiry, `TooLarge` and
    /// `TooManySessions` for the store's limits.
    async fn save(&self, save: Save) -> Result<Saved>;

    /// Removes the session; `Ok(true)` if a live session existed. Idempotent.
    async fn destroy(&self, id: &str) -> Result<bool>;

    /// Extends a live session's expiry to `ttl` from now (`None`: the store's default TTL)
    /// without changing its data or version. Returns the new expiry, or `Ok(None)` when there is
    /// no live session.
    async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>>;

    /// The live sessions of `owner`, with their data if `with_data`. The default: the store
    /// keeps no owner index ([`StoreError::Unsupported`](crate::StoreError::Unsupported)).
    async fn list_by_owner(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        let _ = (owner, with_data);
        Err(crate::StoreError::Unsupported(
            "listing sessions by owner".into(),
        ))
    }

    /// Destroys every session of `owner` except those in `except`, and returns how many live
    /// sessions it destroyed. Once it returns, no session of the owner saved before the call
    /// began is live (except those in `except`). The default: [`StoreError::Unsupported`].
    ///
    /// [`StoreError::Unsupported`]: crate::StoreError::Unsupported
    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        let _ = (owner, except);
        Err(crate::StoreError::Unsupported(
            "destroying sessions by owner".into(),
        ))
    }

    /// One page of every live session, without data, for operators: the page that begins at
    /// `cursor` (`""`: the first) and holds about `limit` sessions (a page may hold somewhat more
    /// or fewer, and be empty before the end). Each page costs the store a bounded amount of
    /// work, whatever it holds in all. Following [`SessionPage::next`] until it is `None` lists
    /// every session that lives from the first page to the last once; one saved or destroyed
    /// meanwhile may or may not be listed. A cursor the store did not hand out is
    /// [`StoreError::InvalidArgument`](crate::StoreError::InvalidArgument). The default:
    /// [`StoreError::Unsupported`](crate::StoreError::Unsupported).
    async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        let _ = (cursor, limit);
        Err(crate::StoreError::Unsupported(
            "listing every session".into(),
        ))
    }

    /// The limits this store enforces, as far as it knows them now. The session layer checks its
    /// options and each change against them, so an app hears of a session that is too large or
    /// too long-lived when it makes it, not when the save fails. The default knows nothing.
    fn limits(&self) -> StoreLimits {
        StoreLimits::default()
    }
}

/// The most sessions a page of [`SessionStore::list_sessions`] is asked for; a larger `limit` is
/// taken as this, and 0 as 1.
pub const MAX_PAGE_SESSIONS: usize = 1000;

/// One page of [`SessionStore::list_sessions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionPage {
    /// The page's sessions, without their data.
    pub sessions: Vec<SessionRecord>,
    /// The cursor of the next page; `None` once every session has been listed.
    pub next: Option<String>,
}

impl SessionPage {
    /// A page of `sessions`, followed by the page at `next` (`None`: the last).
    pub fn new(sessions: Vec<SessionRecord>, next: Option<String>) -> Self {
        Self { sessions, next }
    }
}

/// What a store refuses, from [`SessionStore::limits`]; `None` where it does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// The largest session it stores, keys plus values ([`data_size`](crate::data_size)), in bytes.
    pub max_session_bytes: Option<usize>,
    /// The longest TTL a save or touch may ask for.
    pub max_ttl: Option<Duration>,
}

impl StoreLimits {
    /// Limits of `max_session_bytes` and `max_ttl` (`None`: not known).
    pub fn new(max_session_bytes: Option<usize>, max_ttl: Option<Duration>) -> Self {
        Self {
            max_session_bytes,
            max_ttl,
        }
    }
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        (**self).get(id).await
    }
    async fn save(&self, save: Save) -> Result<Saved> {
        (**self).save(save).await
    }
    async fn destroy(&self, id: &str) -> Result<bool> {
        (**self).destroy(id).await
    }
    async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        (**self).touch(id, ttl).await
    }
    async fn list_by_owner(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        (**self).list_by_owner(owner, with_data).await
    }
    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        (**self).destroy_by_owner(owner, except).await
    }
    async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        (**self).list_sessions(cursor, limit).await
    }
    fn limits(&self) -> StoreLimits {
        (**self).limits()
    }
}

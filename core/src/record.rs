use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A session's values: opaque bytes under string keys.
///
/// Values are [`Bytes`]: `Bytes::from(vec)` takes a `Vec<u8>` without copying, and a value read
/// from a store shares the store's buffer (or the received message) instead of being copied. A
/// value kept long after the request that read it keeps that buffer too; keep a copy
/// (`Bytes::copy_from_slice`) instead.
pub type SessionData = HashMap<String, Bytes>;

/// The size a store counts against its per-session limit: every key plus every value, in bytes.
pub fn data_size(data: &SessionData) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// One stored session, as read back from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id.
    pub id: String,
    /// The session's values.
    pub data: SessionData,
    /// When the session was first saved.
    pub created_at: SystemTime,
    /// When the session stops existing.
    pub expires_at: SystemTime,
    /// How many times the session's data was saved: 1 after the first save.
    pub version: u64,
    /// Who the session belongs to, such as a user id, as the last save set it; `None`: nobody.
    pub owner: Option<String>,
}

/// When a saved session expires, as a save asks its store. (An app says when a session ends with
/// the session layer's `gonest_session::Expiry`, which the layer turns into one of these.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreExpiry {
    /// The store's default TTL, counted from now.
    #[default]
    Default,
    /// This long from now, by the store's clock. Must be positive and at most the store's
    /// maximum TTL.
    Ttl(Duration),
    /// At this time. Must be in the future, and at most the maximum TTL away.
    At(SystemTime),
}

impl StoreExpiry {
    /// The lifetime this asks for at `now`: `default_ttl` for [`StoreExpiry::Default`], checked to be
    /// positive and at most `max_ttl` (an absolute expiry must be in the future). Every store
    /// computes expiries through it, so they refuse alike.
    pub fn lifetime(
        self,
        now: SystemTime,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> crate::Result<Duration> {
        use crate::StoreError;
        let ttl = match self {
            StoreExpiry::Default => default_ttl,
            StoreExpiry::Ttl(ttl) => ttl,
            StoreExpiry::At(at) => match at.duration_since(now) {
                Ok(ttl) if !ttl.is_zero() => ttl,
                _ => return Err(StoreError::invalid("expires_at is not in the future")),
            },
        };
        if ttl.is_zero() {
            return Err(StoreError::invalid("ttl must be positive"));
        }
        if ttl > max_ttl {
            let (ttl, max) = (
                humantime::format_duration(ttl),
                humantime::format_duration(max_ttl),
            );
            return Err(StoreError::invalid(match self {
                StoreExpiry::At(_) => {
                    format!("expires_at is {ttl} from now, over the maximum ttl of {max}")
                }
                StoreExpiry::Default | StoreExpiry::Ttl(_) => {
                    format!("ttl of {ttl} is over the maximum of {max}")
                }
            }));
        }
        Ok(ttl)
    }
}

/// A write of one session's data: what [`SessionStore::save`](crate::SessionStore::save) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Save {
    /// The session id.
    pub id: String,
    /// The complete new data; it replaces what was stored.
    pub data: SessionData,
    /// `None`: unconditional upsert. `Some(0)`: only if no live session has this id.
    /// `Some(n)`: only if the live session is at version `n`.
    pub expected_version: Option<u64>,
    /// When the session expires.
    pub expiry: StoreExpiry,
    /// Who the session belongs to (see [`validate_owner`](crate::validate_owner)); each save
    /// sets it, `None` clearing it. Stores index sessions by owner, for
    /// [`SessionStore::list_by_owner`](crate::SessionStore::list_by_owner) and
    /// [`destroy_by_owner`](crate::SessionStore::destroy_by_owner).
    pub owner: Option<String>,
}

impl Save {
    /// An unconditional save of `data` under `id` with the store's default TTL.
    pub fn new(id: impl Into<String>, data: SessionData) -> Self {
        Self {
            id: id.into(),
            data,
            expected_version: None,
            expiry: StoreExpiry::Default,
            owner: None,
        }
    }

    /// Sets who the session belongs to.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Makes the save conditional on the session being at `version` (0: absent).
    pub fn expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Sets the session's lifetime from now.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.expiry = StoreExpiry::Ttl(ttl);
        self
    }
}

/// What a successful save reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The session's version after the save.
    pub version: u64,
    /// When the session was first saved.
    pub created_at: SystemTime,
    /// When the session now expires.
    pub expires_at: SystemTime,
}

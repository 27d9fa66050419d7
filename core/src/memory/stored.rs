//! A stored session as readers see it: [`StoredSession`], and a record turned into the
//! public [`SessionRecord`].

use std::time::SystemTime;

use bytes::Bytes;

use super::table::Record;
use crate::codec::decode_shared;
use crate::{Result, Saved, SessionData, SessionRecord, StoreError};

/// A live session as the store holds it, shared with the store (no copy): what a Get reads when
/// it only writes the session out again, without building a [`SessionRecord`].
///
/// Its id, owner and keys were checked to be UTF-8 when it was read.
#[derive(Clone)]
pub struct StoredSession(Record);

impl std::fmt::Debug for StoredSession {
    /// Without the id, which is a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("version", &self.version())
            .field("data_bytes", &self.0.data().len())
            .finish_non_exhaustive()
    }
}

impl StoredSession {
    pub(super) fn new(record: &Record) -> Result<Self> {
        std::str::from_utf8(record.id())
            .map_err(|_| StoreError::Internal("stored session id is not UTF-8".into()))?;
        for entry in crate::codec::entries(record.data()) {
            entry?;
        }
        Ok(Self(record.clone()))
    }

    /// The session id.
    pub fn id(&self) -> &str {
        std::str::from_utf8(self.0.id()).unwrap_or_default()
    }

    /// Who the session belongs to; empty for nobody.
    pub fn owner(&self) -> &str {
        std::str::from_utf8(self.0.owner()).unwrap_or_default()
    }

    /// When the session was first saved.
    pub fn created_at(&self) -> SystemTime {
        self.0.created_at().into()
    }

    /// When the session stops existing.
    pub fn expires_at(&self) -> SystemTime {
        self.0.expires_at().into()
    }

    /// How many times the session's data was saved.
    pub fn version(&self) -> u64 {
        self.0.version()
    }

    /// The session's keys and values, in the order they were saved, borrowed from the store.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        // Checked when read: every entry decodes.
        crate::codec::entries(self.0.data()).map_while(Result::ok)
    }

    /// `value`, one of [`entries`](Self::entries)' values, as [`Bytes`] sharing the store's
    /// buffer (no copy).
    pub fn shared_value(&self, value: &[u8]) -> Bytes {
        self.0.shared().slice_ref(value)
    }

    /// The session as a [`SessionRecord`].
    pub fn to_record(&self) -> Result<SessionRecord> {
        self.0.to_record()
    }
}

impl Record {
    pub(super) fn to_record(&self) -> Result<SessionRecord> {
        let id = std::str::from_utf8(self.id())
            .map_err(|_| StoreError::Internal("stored session id is not UTF-8".into()))?;
        Ok(SessionRecord {
            id: id.to_owned(),
            data: self.shared_data()?,
            created_at: self.created_at().into(),
            expires_at: self.expires_at().into(),
            version: self.version(),
            owner: self.owner_string(),
        })
    }

    /// The session's values, each a slice of the stored buffer (no copy).
    pub(super) fn shared_data(&self) -> Result<SessionData> {
        decode_shared(&self.shared(), self.data_start())
    }

    pub(super) fn owner_string(&self) -> Option<String> {
        let owner = std::str::from_utf8(self.owner()).ok()?;
        (!owner.is_empty()).then(|| owner.to_owned())
    }

    pub(super) fn saved(&self) -> Saved {
        Saved {
            version: self.version(),
            created_at: self.created_at().into(),
            expires_at: self.expires_at().into(),
        }
    }
}

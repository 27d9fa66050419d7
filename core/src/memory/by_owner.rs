//! An owner's sessions: listing them, and "log out everywhere".

use std::sync::atomic::Ordering;

use hashbrown::hash_table::Entry;

use super::MemorySessionStore;
use super::table::Nanos;
use crate::{Result, SessionData, SessionRecord};

#[cfg(doc)]
use crate::SessionStore;

impl MemorySessionStore {
    /// The live sessions of `owner`. The same as [`SessionStore::list_by_owner`], without the
    /// future.
    pub fn list_by_owner_now(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        crate::validate_stored_owner(owner)?;
        let now = Nanos::from(self.inner.clock.now());
        let mut sessions = Vec::new();
        for id in self.inner.owners.ids(owner) {
            let found = self.inner.map.read(&id, |record| match record {
                Some(record) if record.is_live(now) && record.owner() == owner.as_bytes() => {
                    let mut found = SessionRecord {
                        id: id.clone(),
                        data: SessionData::new(),
                        created_at: record.created_at().into(),
                        expires_at: record.expires_at().into(),
                        version: record.version(),
                        owner: Some(owner.to_owned()),
                    };
                    if with_data {
                        found.data = record.shared_data()?;
                    }
                    Ok(Some(found))
                }
                _ => Ok(None),
            })?;
            sessions.extend(found);
        }
        sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(sessions)
    }

    /// Destroys the sessions of `owner` but those in `except`. The same as
    /// [`SessionStore::destroy_by_owner`], without the future.
    ///
    /// Every session saved with this owner before the call is in the index when it begins
    /// (the index changes under the same lock as the session), so one pass over it reaches them
    /// all; a session given another owner meanwhile is left alone.
    pub fn destroy_by_owner_now(&self, owner: &str, except: &[String]) -> Result<u64> {
        let destroyed = self.destroy_by_owner_listed_now(owner, except)?;
        Ok(u64::try_from(destroyed.len()).unwrap_or(u64::MAX))
    }

    /// As [`destroy_by_owner_now`](Self::destroy_by_owner_now), returning the ids of the live
    /// sessions it destroyed (for near caches, which drop exactly those).
    pub fn destroy_by_owner_listed_now(
        &self,
        owner: &str,
        except: &[String],
    ) -> Result<Vec<String>> {
        crate::validate_stored_owner(owner)?;
        let now = Nanos::from(self.inner.clock.now());
        let mut destroyed = Vec::new();
        for id in self.inner.owners.ids(owner) {
            if except.contains(&id) {
                continue;
            }
            let removed = self.inner.map.write(&id, |entry| match entry {
                Entry::Occupied(occupied) if occupied.get().owner() == owner.as_bytes() => {
                    let record = occupied.remove().0;
                    self.inner.owners.replace(Some(&record), None);
                    if let Some(journal) = self.inner.journal() {
                        journal.remove(&id);
                    }
                    Some(record)
                }
                _ => None,
            });
            if let Some(record) = removed {
                self.inner.stored.fetch_sub(1, Ordering::Relaxed);
                if record.is_live(now) {
                    destroyed.push(id);
                } else {
                    self.inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(destroyed)
    }
}

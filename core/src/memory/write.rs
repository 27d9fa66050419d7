//! Changing sessions: save, destroy and touch.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use hashbrown::hash_table::Entry;

use super::MemorySessionStore;
use super::sweeper::reclaim_due;
use super::table::{Nanos, Record};
use crate::codec::{encode_into, encoded_len};
use crate::{Result, Save, Saved, StoreError, StoreExpiry, data_size, validate_id, validate_owner};

#[cfg(doc)]
use crate::SessionStore;

impl MemorySessionStore {
    /// Saves a session now. The same as [`SessionStore::save`], without the future.
    ///
    /// A new session that finds the store at `max_sessions` first has the expired sessions
    /// removed (from the shards that hold any), so only live sessions count against the limit.
    pub fn save_now(&self, save: Save) -> Result<Saved> {
        match self.try_save(&save) {
            Err(StoreError::TooManySessions { .. })
                if reclaim_due(&self.inner, self.inner.clock.now()) > 0 =>
            {
                self.try_save(&save)
            }
            result => result,
        }
    }

    fn try_save(&self, save: &Save) -> Result<Saved> {
        let inner = &*self.inner;
        validate_id(&save.id)?;
        let owner = save.owner.as_deref().filter(|owner| !owner.is_empty());
        if let Some(owner) = owner {
            validate_owner(owner)?;
        }
        let size = data_size(&save.data);
        if size > inner.config.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: inner.config.max_session_bytes,
            });
        }
        let clock_now = inner.clock.now();
        let now = Nanos::from(clock_now);
        let expires_at = Nanos::from(inner.expires_at(save.expiry, clock_now)?);
        let data_len = encoded_len(&save.data);
        let record = |created_at, version| {
            Record::new(
                &save.id,
                owner,
                created_at,
                expires_at,
                version,
                data_len,
                |buf| encode_into(buf, &save.data),
            )
        };
        // A session new to its owner takes its place in the owner's index with the check, under
        // the index's lock, so racing new sessions of one owner never pass the limit together.
        let owner_room = |current: Option<&Record>| match owner {
            Some(owner)
                if current.is_none_or(|c| !c.is_live(now) || c.owner() != owner.as_bytes()) =>
            {
                let limit = inner.config.max_sessions_per_owner;
                if inner
                    .owners
                    .reserve(owner, &save.id, limit, now, expires_at)
                {
                    Ok(())
                } else {
                    Err(StoreError::TooManyOwnerSessions { limit })
                }
            }
            _ => Ok(()),
        };
        let check_absent = |expected: Option<u64>| match expected {
            None | Some(0) => Ok(()),
            Some(expected) => Err(StoreError::Conflict {
                expected,
                actual: None,
            }),
        };
        inner
            .map
            .write_expiring(&save.id, Some(expires_at), |entry| match entry {
                Entry::Occupied(mut occupied) => {
                    let current = occupied.get_mut();
                    if current.is_live(now) {
                        if let Some(expected) = save.expected_version
                            && expected != current.version()
                        {
                            return Err(StoreError::Conflict {
                                expected,
                                actual: Some(current.version()),
                            });
                        }
                        // Only a snapshot made up by hand can hold a version this high.
                        let Some(version) = current.version().checked_add(1) else {
                            return Err(StoreError::invalid("session version is at its maximum"));
                        };
                        owner_room(Some(current))?;
                        let old = std::mem::replace(current, record(current.created_at(), version));
                        inner.owners.replace(Some(&old), Some(current));
                        if let Some(journal) = inner.journal() {
                            journal.put(current);
                        }
                    } else {
                        // An expired record is absent: the save creates a new session in its place.
                        check_absent(save.expected_version)?;
                        owner_room(None)?;
                        let old = std::mem::replace(current, record(now, 1));
                        inner.owners.replace(Some(&old), Some(current));
                        inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                        if let Some(journal) = inner.journal() {
                            journal.put(current);
                        }
                    }
                    Ok(current.saved())
                }
                Entry::Vacant(vacant) => {
                    check_absent(save.expected_version)?;
                    owner_room(None)?;
                    if let Err(err) = inner.reserve_slot() {
                        if let Some(owner) = owner {
                            inner.owners.release(owner, &save.id);
                        }
                        return Err(err);
                    }
                    let inserted = vacant.insert(record(now, 1));
                    inner.owners.replace(None, Some(inserted.get()));
                    if let Some(journal) = inner.journal() {
                        journal.put(inserted.get());
                    }
                    Ok(inserted.get().saved())
                }
            })
    }

    /// Destroys a session now. The same as [`SessionStore::destroy`], without the future.
    pub fn destroy_now(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let now = Nanos::from(self.inner.clock.now());
        let removed = self.inner.map.write(id, |entry| match entry {
            Entry::Occupied(occupied) => {
                let record = occupied.remove().0;
                self.inner.owners.replace(Some(&record), None);
                if let Some(journal) = self.inner.journal() {
                    journal.remove(id);
                }
                Some(record)
            }
            Entry::Vacant(_) => None,
        });
        // The record is dropped here, after the shard's lock is released.
        match removed {
            Some(record) => {
                self.inner.stored.fetch_sub(1, Ordering::Relaxed);
                let live = record.is_live(now);
                if !live {
                    self.inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(live)
            }
            None => Ok(false),
        }
    }

    /// Touches a session now. The same as [`SessionStore::touch`], without the future.
    pub fn touch_now(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        validate_id(id)?;
        let clock_now = self.inner.clock.now();
        let now = Nanos::from(clock_now);
        let expires_at = self.inner.expires_at(
            ttl.map_or(StoreExpiry::Default, StoreExpiry::Ttl),
            clock_now,
        )?;
        let at = Some(Nanos::from(expires_at));
        let (touched, expired) = self.inner.map.write_expiring(id, at, |entry| match entry {
            Entry::Occupied(mut occupied) if occupied.get().is_live(now) => {
                occupied.get_mut().set_expires_at(expires_at.into());
                self.inner.owners.replace(None, Some(occupied.get()));
                if let Some(journal) = self.inner.journal() {
                    journal.expire(id, Nanos::from(expires_at).0);
                }
                (Some(expires_at), None)
            }
            // An expired record is absent; remove it while its shard is locked anyway.
            Entry::Occupied(occupied) => {
                let record = occupied.remove().0;
                self.inner.owners.replace(Some(&record), None);
                (None, Some(record))
            }
            Entry::Vacant(_) => (None, None),
        });
        // A removed record is dropped here, after the shard's lock is released.
        if expired.is_some() {
            self.inner.count_expired_removal();
        }
        Ok(touched)
    }
}

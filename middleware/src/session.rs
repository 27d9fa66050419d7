//! The [`Session`] handle a handler works with, and what happens to it after the handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use gonest_session_core::{
    Bytes, Save, SessionData, SessionRecord, SessionStore, StoreError, data_size,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::expiry::EXPIRY_KEY;
use crate::{Expiry, SessionError, SessionOptions, id};

/// How many times a save that lost a race is tried on the newer session before the request gives
/// up with a 503. Between attempts the request waits a random while, doubling its range each
/// time (up to [`MAX_BACKOFF_MS`]), so that instances writing one session at once spread out
/// instead of colliding again.
const SAVE_ATTEMPTS: u32 = 12;
/// The longest random wait between two save attempts, in milliseconds.
const MAX_BACKOFF_MS: u64 = 16;

/// One request's session: GoNest's `GetValue` / `SetValue` / `Delete` in Rust spelling, plus
/// [`regenerate`](Self::regenerate), [`destroy`](Self::destroy), whole-session operations,
/// flash messages, a per-session [`Expiry`] and an explicit [`save`](Self::save).
///
/// In axum, take it as an extractor argument; it arrives loaded. Elsewhere in a tower stack, take
/// it from the request's extensions and call [`load`](Self::load) before reading it. Clones are
/// the same session. Changes are kept in the handle and written by the [`SessionLayer`] after the
/// handler returns, or earlier by [`save`](Self::save).
///
/// Keys beginning with `__` are reserved: the layer keeps the session's expiry and flash
/// messages under them, and other stacks' stores sharing the session keep their own state
/// there. [`keys`](Self::keys) does not list them and [`set_value`](Self::set_value) refuses
/// them.
///
/// [`SessionLayer`]: crate::SessionLayer
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the id: it is the user's credential.
        let state = self.state();
        f.debug_struct("Session")
            .field("loaded", &state.loaded)
            .field("keys", &user_keys(&state.data).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn SessionStore>,
    options: Arc<SessionOptions>,
    /// The app instance's write locks, shared by all its requests.
    write_locks: Arc<WriteLocks>,
    /// The id the request's cookie carried, if it had the form of one of ours.
    cookie_id: Option<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether the store was asked for the cookie's session.
    loaded: bool,
    /// The stored session this request started from (or last saved), if there is one.
    stored: Option<Stored>,
    /// The session as the handler sees it: the stored data with this request's changes applied.
    data: SessionData,
    /// This request's own changes by key (`None`: deleted), to apply again on top of a newer
    /// version when another request saved the session meanwhile.
    changes: HashMap<String, Option<Bytes>>,
    /// Counts changes, so a save knows whether the handler changed more while it was under way.
    generation: u64,
    /// `clear` was called: a newer version's keys are removed too, before `changes` apply.
    cleared: bool,
    /// Who the session belongs to: as stored, or as `set_owner` set it.
    owner: Option<String>,
    /// `set_owner` was called: this request's owner wins over a newer version's.
    owner_changed: bool,
    /// The id a new or regenerated session will be saved under.
    new_id: Option<String>,
    /// `regenerate` was called: move the data to a new id and destroy the old one.
    regenerate: bool,
    /// `destroy` was called and not yet carried out.
    destroy: bool,
    /// The session was destroyed in the store during this request.
    destroyed: bool,
    /// A save landed during this request.
    saved: bool,
}

/// What the store had when the session was loaded or last saved.
#[derive(Clone)]
struct Stored {
    id: String,
    version: u64,
    created_at: SystemTime,
    expires_at: SystemTime,
}

impl Stored {
    fn of(record: &SessionRecord) -> Self {
        Self {
            id: record.id.clone(),
            version: record.version,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }
    }
}

/// What the layer does to the response once the session is written.
pub(crate) enum Outcome {
    /// Nothing to send.
    Unchanged,
    /// Send this id in a `Set-Cookie`, with this lifetime.
    SetCookie(String, Expiry),
    /// Send a removal cookie.
    RemoveCookie,
}

/// Where flash messages are kept: `__gonest.flash.` + the app's key.
const FLASH_PREFIX: &str = "__gonest.flash.";

/// Whether `key` is the app's own (listed by `keys`, removed by `clear`).
fn is_user_key(key: &str) -> bool {
    !key.starts_with("__")
}

/// Whether `clear` keeps `key`: the layer's and other stacks' state, except flash messages.
fn kept_by_clear(key: &str) -> bool {
    !is_user_key(key) && !key.starts_with(FLASH_PREFIX)
}

fn user_keys(data: &SessionData) -> impl Iterator<Item = &String> {
    data.keys().filter(|key| is_user_key(key))
}

impl State {
    fn apply_changes(&mut self) {
        if self.cleared {
            self.data.retain(|key, _| kept_by_clear(key));
        }
        for (key, value) in &self.changes {
            match value {
                Some(value) => self.data.insert(key.clone(), value.clone()),
                None => self.data.remove(key),
            };
        }
    }

    fn change(&mut self, key: &str, value: Option<Bytes>) {
        match &value {
            Some(value) => self.data.insert(key.to_owned(), value.clone()),
            None => self.data.remove(key),
        };
        self.changes.insert(key.to_owned(), value);
        self.generation += 1;
    }

    fn expiry(&self, options: &SessionOptions) -> Expiry {
        self.data
            .get(EXPIRY_KEY)
            .and_then(|bytes| Expiry::from_bytes(bytes))
            .unwrap_or(Expiry::OnInactivity(options.max_age))
    }

    fn touched(&self) -> bool {
        !self.changes.is_empty() || self.regenerate || self.cleared || self.owner_changed
    }

    /// Takes on a stored version: its data with this request's changes applied, and its owner
    /// unless this request set one.
    fn rebase(&mut self, record: SessionRecord) {
        self.data = record.data;
        if !self.owner_changed {
            self.owner = record.owner;
        }
        self.apply_changes();
    }
}

impl Session {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        options: Arc<SessionOptions>,
        write_locks: Arc<WriteLocks>,
        cookie_id: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                write_locks,
                cookie_id,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A std mutex is right here: it is never held across an await.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the request's session from the store, once; later calls do nothing. The axum
    /// extractor calls it for you.
    pub async fn load(&self) -> Result<(), StoreError> {
        if self.state().loaded {
            return Ok(());
        }
        let record = match &self.inner.cookie_id {
            Some(id) => self.inner.store.get(id).await?,
            None => None,
        };
        let mut state = self.state();
        if !state.loaded {
            state.loaded = true;
            if let Some(record) = record {
                state.stored = Some(Stored::of(&record));
                state.rebase(record);
            }
        }
        Ok(())
    }

    /// Reads the session from the store again, dropping the changes not yet saved (like
    /// express-session's `reload`). A session destroyed meanwhile reads back empty, as a new one.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let id = {
            let state = self.state();
            match (&state.stored, state.loaded, state.destroyed) {
                (Some(stored), _, _) => Some(stored.id.clone()),
                (None, false, false) => self.inner.cookie_id.clone(),
                (None, _, _) => None,
            }
        };
        let record = match &id {
            Some(id) => self.inner.store.get(id).await?,
            None => None,
        };
        let mut state = self.state();
        state.loaded = true;
        state.changes.clear();
        state.generation += 1;
        state.cleared = false;
        state.regenerate = false;
        state.new_id = None;
        state.destroy = false;
        state.owner_changed = false;
        match record {
            Some(record) => {
                state.stored = Some(Stored::of(&record));
                state.data = record.data;
                state.owner = record.owner;
            }
            None => {
                state.stored = None;
                state.data.clear();
                state.owner = None;
            }
        }
        Ok(())
    }

    /// The value under `key` as a `T`; `Ok(None)` when there is none. A value of another shape
    /// is [`SessionError::Decode`], never silently `None`: a type mismatch between the code that
    /// stored a value and the code that reads it shows up as an error, not as a logged-out user.
    ///
    /// ```
    /// # fn demo(session: gonest_session::Session) -> Result<(), gonest_session::SessionError> {
    /// session.set_value("user_id", 42u64)?;
    /// assert_eq!(session.get_value::<u64>("user_id")?, Some(42));
    /// assert_eq!(session.get_value::<u64>("missing")?, None);
    /// assert!(matches!(
    ///     session.get_value::<String>("user_id"),
    ///     Err(gonest_session::SessionError::Decode { .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.state();
        state
            .data
            .get(key)
            .map(|bytes| decode(key, bytes))
            .transpose()
    }

    /// Stores `value` under `key`, as JSON.
    ///
    /// Refused at once, leaving the session as it was: a value that does not serialize, a
    /// reserved key (beginning with `__`), and a value that would make the session larger than
    /// the store keeps (as far as the store says; see
    /// [`SessionStore::limits`](gonest_session_core::SessionStore::limits)).
    pub fn set_value<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        if !is_user_key(key) {
            return Err(SessionError::ReservedKey(key.to_owned()));
        }
        self.put(key, serde_json::to_vec(&value)?)
    }

    /// Sets `key` to `bytes` if the session stays within the store's size limit.
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), SessionError> {
        let limit = self.inner.store.limits().max_session_bytes;
        let mut state = self.state();
        if let Some(limit) = limit {
            let old = state.data.get(key).map_or(0, |old| key.len() + old.len());
            let size = data_size(&state.data) - old + key.len() + bytes.len();
            if size > limit {
                return Err(SessionError::TooLarge { size, limit });
            }
        }
        state.change(key, Some(Bytes::from(bytes)));
        Ok(())
    }

    /// Removes `key`; returns whether it was there. Reserved keys are left alone (false).
    pub fn delete(&self, key: &str) -> bool {
        if !is_user_key(key) {
            return false;
        }
        let mut state = self.state();
        let existed = state.data.contains_key(key);
        state.change(key, None);
        existed
    }

    /// Removes `key` and returns its value as a `T`, `Ok(None)` if it was not there. A value of
    /// another shape is removed all the same, and [`SessionError::Decode`].
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let old = self.get_value(key);
        self.delete(key);
        old
    }

    /// Removes every key, keeping the id; the session is saved empty. Its expiry is kept; flash
    /// messages go with the rest. Keys another request adds meanwhile are removed too.
    pub fn clear(&self) {
        let mut state = self.state();
        state.data.retain(|key, _| kept_by_clear(key));
        state.changes.retain(|key, _| kept_by_clear(key));
        state.cleared = true;
        state.generation += 1;
    }

    /// Whether the session holds no keys of the app's (flash messages and the expiry aside).
    pub fn is_empty(&self) -> bool {
        user_keys(&self.state().data).next().is_none()
    }

    /// The app's keys, in no particular order (reserved keys are not listed).
    pub fn keys(&self) -> Vec<String> {
        user_keys(&self.state().data).cloned().collect()
    }

    /// Keeps `value` under `key` until [`take_flash`](Self::take_flash) reads it once: the
    /// message shown on the page after a redirect.
    ///
    /// With concurrent requests a flash message is shown at least once, not exactly once: two
    /// requests that both load the session before either saves can both take it. Each removal
    /// is then a change of the session like any other.
    pub fn flash<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        self.put(&format!("{FLASH_PREFIX}{key}"), serde_json::to_vec(&value)?)
    }

    /// The flash message under `key`, removed from the session; `Ok(None)` when there is none.
    /// One of another shape is removed all the same, and [`SessionError::Decode`].
    pub fn take_flash<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let stored = format!("{FLASH_PREFIX}{key}");
        let mut state = self.state();
        let Some(bytes) = state.data.get(&stored).cloned() else {
            return Ok(None);
        };
        state.change(&stored, None);
        decode(key, &bytes).map(Some)
    }

    /// When this session ends: what [`set_expiry`](Self::set_expiry) set, on this request or an
    /// earlier one, else [`Expiry::OnInactivity`] of the layer's `max_age`.
    pub fn expiry(&self) -> Expiry {
        self.state().expiry(&self.inner.options)
    }

    /// Sets when this session ends, for this and later requests, on any instance: the store's
    /// TTL and the cookie's `Max-Age` / `Expires` follow it. [`Expiry::OnInactivity`] counts
    /// whole seconds, like `Max-Age`.
    ///
    /// Refused at once: a lifetime under one second, a time not in the future, and one further
    /// out than the store keeps sessions.
    pub fn set_expiry(&self, expiry: Expiry) -> Result<(), SessionError> {
        let expiry = match expiry {
            Expiry::OnInactivity(ttl) => Expiry::OnInactivity(Duration::from_secs(ttl.as_secs())),
            other => other,
        };
        let options = &self.inner.options;
        let Some(lifetime) = expiry.lifetime(options, SystemTime::now()) else {
            return Err(SessionError::Expiry(format!(
                "{expiry:?} ends the session at once"
            )));
        };
        if let Some(max) = self.inner.store.limits().max_ttl
            && lifetime > max
        {
            return Err(SessionError::Expiry(format!(
                "{expiry:?} is {lifetime:?} away, over the store's maximum TTL of {max:?}"
            )));
        }
        self.put(EXPIRY_KEY, expiry.to_bytes())
    }

    /// Who the session belongs to, such as a user id: as stored, or as
    /// [`set_owner`](Self::set_owner) set it.
    pub fn owner(&self) -> Option<String> {
        self.state().owner.clone()
    }

    /// Says who the session belongs to (`None`: nobody), so that [`OwnerSessions`](crate::OwnerSessions)
    /// can list and revoke all of an owner's sessions. Set it at login, next to
    /// [`regenerate`](Self::regenerate); it moves with the session to its new id. Refused at once
    /// when it is not 1 to 256 bytes of printable ASCII.
    pub fn set_owner(&self, owner: Option<&str>) -> Result<(), SessionError> {
        if let Some(owner) = owner {
            gonest_session_core::validate_owner(owner)
                .map_err(|err| SessionError::Owner(err.to_string()))?;
        }
        let mut state = self.state();
        state.owner = owner.map(str::to_owned);
        state.owner_changed = true;
        state.generation += 1;
        Ok(())
    }

    /// The session's id: the stored one, or the one a new or regenerated session will get.
    /// `None` for a session that does not exist and was not written.
    pub fn id(&self) -> Option<String> {
        let state = self.state();
        if state.destroy {
            return None;
        }
        match (&state.new_id, &state.stored) {
            (Some(new_id), _) => Some(new_id.clone()),
            (None, Some(stored)) => Some(stored.id.clone()),
            (None, None) => None,
        }
    }

    /// When the stored session was created; `None` for a new one.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.state().stored.as_ref().map(|s| s.created_at)
    }

    /// When the stored session expires; `None` for a new one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.state().stored.as_ref().map(|s| s.expires_at)
    }

    /// Gives the session a new id, keeping its data; the old id is destroyed. Call it when a user
    /// logs in, so an id planted before login is worthless after it.
    pub fn regenerate(&self) {
        let mut state = self.state();
        state.regenerate = true;
        state.new_id = Some(id::generate());
    }

    /// Ends the session: it is removed from the store and the browser gets a removal cookie.
    pub fn destroy(&self) {
        let mut state = self.state();
        state.destroy = true;
        state.data.clear();
        state.changes.clear();
        state.cleared = false;
        state.owner_changed = false;
        state.generation += 1;
    }

    /// Writes the session's changes (or its destruction) to the store now, rather than after the
    /// handler, for a handler that must know the write landed before it answers, such as before
    /// a redirect. Conflicts with other requests are resolved as the layer's own write resolves
    /// them. The handler can go on changing the session; the layer writes what changes after.
    pub async fn save(&self) -> Result<(), StoreError> {
        self.write().await
    }

    /// Writes what the handler did to the store and says which cookie to send. Called by the
    /// layer after the handler.
    pub(crate) async fn commit(&self) -> Result<Outcome, StoreError> {
        self.write().await?;
        let options = &self.inner.options;
        let (stored, expiry, touch) = {
            let state = self.state();
            let Some(stored) = &state.stored else {
                return Ok(match (state.destroyed, &self.inner.cookie_id) {
                    (true, Some(_)) => Outcome::RemoveCookie,
                    _ => Outcome::Unchanged,
                });
            };
            let expiry = state.expiry(options);
            // After a save the cookie goes out again, so its lifetime restarts with the
            // store's: the two always agree.
            let cookie_changed = self.inner.cookie_id.as_deref() != Some(stored.id.as_str());
            if cookie_changed || state.saved {
                return Ok(Outcome::SetCookie(stored.id.clone(), expiry));
            }
            let touch = options.rolling && state.loaded && !state.saved;
            (stored.id.clone(), expiry, touch)
        };
        if !touch {
            return Ok(Outcome::Unchanged);
        }
        let Some(ttl) = expiry.touch_ttl(options) else {
            // A fixed end: activity does not move it.
            return Ok(Outcome::Unchanged);
        };
        Ok(match self.inner.store.touch(&stored, Some(ttl)).await? {
            Some(_) => Outcome::SetCookie(stored, expiry),
            None => Outcome::Unchanged,
        })
    }

    /// Carries out a pending destroy, or saves pending changes; does nothing otherwise.
    async fn write(&self) -> Result<(), StoreError> {
        let (touched, destroy, needs_load) = {
            let state = self.state();
            (state.touched(), state.destroy, !state.loaded)
        };
        if needs_load && (touched || destroy) {
            // Written to without being read (a tower handler that skipped `load`).
            self.load().await?;
        }
        let store = &self.inner.store;
        let options = &self.inner.options;
        let stored = self.state().stored.clone();

        if destroy {
            if let Some(stored) = &stored {
                store.destroy(&stored.id).await?;
            }
            let mut state = self.state();
            state.destroy = false;
            state.destroyed = true;
            state.stored = None;
            state.new_id = None;
            state.regenerate = false;
            state.saved = false;
            return Ok(());
        }
        if !touched {
            return Ok(());
        }

        let (mut target, mut expected, mut data, mut expiry, mut owner, regenerate, mut generation) = {
            let mut state = self.state();
            if stored.is_none() && state.data.is_empty() && state.owner.is_none() {
                // Nothing was ever written: nothing to keep, no cookie.
                return Ok(());
            }
            let regenerate = state.regenerate;
            let (target, expected) = match (&stored, regenerate) {
                (Some(stored), false) => (stored.id.clone(), stored.version),
                _ => (state.new_id.get_or_insert_with(id::generate).clone(), 0),
            };
            let expiry = state.expiry(options).store_expiry(options);
            (
                target,
                expected,
                state.data.clone(),
                expiry,
                state.owner.clone(),
                regenerate,
                state.generation,
            )
        };

        // Requests of this instance write one session one at a time, so a conflict can only come
        // from another instance: the retries below race a handful of instances, not every
        // concurrent request.
        let mut last_saved = self.inner.write_locks.lock(&target).await?;
        // If this instance saved the session since this request loaded it, a save at the loaded
        // version is bound to fail: start by reloading instead.
        let mut reload =
            matches!(*last_saved, Some(version) if version != expected) && expected != 0;
        for attempt in 0..SAVE_ATTEMPTS {
            if reload {
                // Another request saved this session meanwhile: start from its version and
                // apply this request's own changes again.
                let Some(fresh) = store.get(&target).await? else {
                    // It was destroyed (a logout): do not bring it back.
                    tracing::debug!("session destroyed during the request; changes dropped");
                    let mut state = self.state();
                    state.changes.clear();
                    state.cleared = false;
                    state.stored = None;
                    state.data.clear();
                    return Ok(());
                };
                let mut state = self.state();
                expected = fresh.version;
                state.rebase(fresh);
                data = state.data.clone();
                owner = state.owner.clone();
                expiry = state.expiry(options).store_expiry(options);
                generation = state.generation;
            }
            let save = Save {
                id: target.clone(),
                data: data.clone(),
                expected_version: Some(expected),
                expiry,
                owner: owner.clone(),
            };
            match store.save(save).await {
                Ok(saved) => {
                    *last_saved = Some(saved.version);
                    drop(last_saved);
                    {
                        let mut state = self.state();
                        state.stored = Some(Stored {
                            id: target.clone(),
                            version: saved.version,
                            created_at: saved.created_at,
                            expires_at: saved.expires_at,
                        });
                        state.saved = true;
                        state.destroyed = false;
                        state.regenerate = false;
                        state.new_id = None;
                        if state.generation == generation {
                            // Otherwise the handler changed more meanwhile; those changes (and
                            // the ones just saved, harmlessly) go in the next write.
                            state.changes.clear();
                            state.cleared = false;
                            state.owner_changed = false;
                        }
                    }
                    if let (true, Some(old)) = (regenerate, &stored) {
                        // The new session is saved; failing to remove the old one must not log
                        // the user out, so it is logged and left to expire.
                        if let Err(err) = store.destroy(&old.id).await {
                            tracing::warn!(%err, "could not destroy the session replaced by regenerate");
                        }
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) if expected == 0 => {
                    // A fresh id that is taken: astronomically unlikely, but harmless to redo.
                    target = id::generate();
                    self.state().new_id = Some(target.clone());
                }
                Err(StoreError::Conflict { .. }) => {
                    // Another instance saved it between our read and our write.
                    reload = true;
                    backoff(attempt).await;
                }
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Conflict {
            expected,
            actual: None,
        })
    }
}

/// The version this instance's last save of a session left behind, while requests of this
/// instance are writing it.
type LastSaved = Option<u64>;

/// How long a request waits for another request of this instance to finish writing the same
/// session before it gives up with [`StoreError::Timeout`] (answered 503).
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// One lock per session being written, serialising one app instance's writes to that session
/// and nothing else: requests writing other sessions never wait on it. A session's lock also
/// remembers the last save made under it, so the next writer knows whether its loaded version
/// is already stale. A lock lives only while some request holds or waits for it.
pub(crate) struct WriteLocks {
    by_id: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LastSaved>>>>,
}

/// A held [`WriteLocks`] lock; removes the session's entry when nobody else wants it.
struct WriteGuard<'a> {
    locks: &'a WriteLocks,
    id: String,
    lock: Arc<tokio::sync::Mutex<LastSaved>>,
    guard: Option<tokio::sync::OwnedMutexGuard<LastSaved>>,
}

impl WriteLocks {
    pub(crate) fn new() -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<LastSaved>>>> {
        self.by_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks session `id` for writing, waiting at most [`WRITE_LOCK_WAIT`].
    async fn lock(&self, id: &str) -> Result<WriteGuard<'_>, StoreError> {
        let lock = self.map().entry(id.to_owned()).or_default().clone();
        let mut guard = WriteGuard {
            locks: self,
            id: id.to_owned(),
            lock: lock.clone(),
            guard: None,
        };
        match tokio::time::timeout(WRITE_LOCK_WAIT, lock.lock_owned()).await {
            Ok(held) => {
                guard.guard = Some(held);
                Ok(guard)
            }
            Err(_) => {
                tracing::warn!("another request held the session for too long; answering 503");
                Err(StoreError::Timeout)
            }
        }
    }

    /// Sessions with a lock now (held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = LastSaved;
    fn deref(&self) -> &LastSaved {
        self.guard.as_ref().expect("held")
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut LastSaved {
        self.guard.as_mut().expect("held")
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // The map's reference and this guard's: nobody else holds or waits for it. New
        // lockers clone it under the map's lock, so this cannot race them.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.id);
        }
    }
}

/// Waits a random time between zero and `2^attempt` ms (at most [`MAX_BACKOFF_MS`]).
async fn backoff(attempt: u32) {
    let range = (1u64 << attempt.min(16)).min(MAX_BACKOFF_MS);
    let jitter = getrandom::u64().unwrap_or(0) % (range * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
}

/// The value stored under `key` as a `T`.
fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, SessionError> {
    serde_json::from_slice(bytes).map_err(|source| SessionError::Decode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gonest_session_core::MemorySessionStore;

    fn session(store: &MemorySessionStore, cookie: Option<&str>) -> Session {
        Session::new(
            Arc::new(store.clone()),
            Arc::new(SessionOptions::default()),
            Arc::new(WriteLocks::new()),
            cookie.map(str::to_owned),
        )
    }

    #[tokio::test]
    async fn values_round_trip_as_json_and_wrong_types_are_none() {
        let store = MemorySessionStore::new(std::time::Duration::from_secs(60));
        let s = session(&store, None);
        s.load().await.unwrap();
        s.set_value("user_id", 42u64).unwrap();
        s.set_value("role", "admin").unwrap();
        assert_eq!(s.get_value::<u64>("user_id").unwrap(), Some(42));
        assert_eq!(
            s.get_value::<String>("role").unwrap().as_deref(),
            Some("admin")
        );
        let err = s.get_value::<u64>("role").unwrap_err();
        assert!(
            matches!(&err, SessionError::Decode { key, .. } if key == "role"),
            "wrong type is an error: {err}"
        );
        assert_eq!(s.get_value::<u64>("missing").unwrap(), None);
        assert!(s.delete("role"));
        assert!(!s.delete("role"));
        let Outcome::SetCookie(id, _) = s.commit().await.unwrap() else {
            panic!("a new written session sets a cookie");
        };
        let record = store.get(&id).await.unwrap().unwrap();
        assert_eq!(record.data["user_id"], &b"42"[..]);
        assert!(!record.data.contains_key("role"));
    }

    #[tokio::test]
    async fn a_session_never_written_is_not_stored() {
        let store = MemorySessionStore::new(std::time::Duration::from_secs(60));
        let s = session(&store, None);
        s.load().await.unwrap();
        assert_eq!(s.get_value::<u64>("user_id").unwrap(), None);
        s.delete("user_id");
        assert!(matches!(s.commit().await.unwrap(), Outcome::Unchanged));
        assert_eq!(store.stats().live_sessions, 0);
    }

    #[tokio::test]
    async fn a_conflicting_save_reapplies_only_this_requests_changes() {
        let store = MemorySessionStore::new(std::time::Duration::from_secs(60));
        let id = id::generate();
        let mut data = SessionData::new();
        data.insert("a".into(), b"1".to_vec().into());
        store.save(Save::new(&id, data)).await.unwrap();

        let first = session(&store, Some(&id));
        let second = session(&store, Some(&id));
        first.load().await.unwrap();
        second.load().await.unwrap();
        first.set_value("b", 2).unwrap();
        second.set_value("c", 3).unwrap();
        second.delete("a");
        first.commit().await.unwrap();
        second.commit().await.unwrap();

        let record = store.get(&id).await.unwrap().unwrap();
        assert_eq!(record.version, 3);
        assert_eq!(record.data.get("a"), None);
        assert_eq!(record.data["b"], &b"2"[..]);
        assert_eq!(record.data["c"], &b"3"[..]);
    }

    #[tokio::test]
    async fn a_session_destroyed_meanwhile_is_not_brought_back() {
        let store = MemorySessionStore::new(std::time::Duration::from_secs(60));
        let id = id::generate();
        store
            .save(Save::new(&id, SessionData::new()))
            .await
            .unwrap();
        let slow = session(&store, Some(&id));
        slow.load().await.unwrap();
        slow.set_value("late", true).unwrap();
        store.destroy(&id).await.unwrap();
        assert!(matches!(slow.commit().await.unwrap(), Outcome::Unchanged));
        assert_eq!(store.get(&id).await.unwrap(), None);
    }

    /// A store whose saves of one session wait until `release` is notified.
    struct Stuck {
        store: MemorySessionStore,
        stuck_id: String,
        release: Arc<tokio::sync::Notify>,
    }

    #[gonest_session_core::async_trait]
    impl SessionStore for Stuck {
        async fn get(
            &self,
            id: &str,
        ) -> Result<Option<gonest_session_core::SessionRecord>, StoreError> {
            self.store.get(id).await
        }
        async fn save(&self, save: Save) -> Result<gonest_session_core::Saved, StoreError> {
            if save.id == self.stuck_id {
                self.release.notified().await;
            }
            self.store.save(save).await
        }
        async fn destroy(&self, id: &str) -> Result<bool, StoreError> {
            self.store.destroy(id).await
        }
        async fn touch(
            &self,
            id: &str,
            ttl: Option<Duration>,
        ) -> Result<Option<SystemTime>, StoreError> {
            self.store.touch(id, ttl).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_session_holds_up_no_other_session_and_its_own_writers_not_forever() {
        let memory = MemorySessionStore::new(Duration::from_secs(60));
        let stuck_id = id::generate();
        memory
            .save(Save::new(&stuck_id, SessionData::new()))
            .await
            .unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(Stuck {
            store: memory.clone(),
            stuck_id: stuck_id.clone(),
            release: Arc::new(tokio::sync::Notify::new()),
        });
        let locks = Arc::new(WriteLocks::new());
        let options = Arc::new(SessionOptions::default());
        let open = |cookie: &str| {
            Session::new(
                store.clone(),
                options.clone(),
                locks.clone(),
                Some(cookie.to_owned()),
            )
        };
        let stuck = open(&stuck_id);
        stuck.load().await.unwrap();
        stuck.set_value("n", 1).unwrap();
        let stuck = tokio::spawn(async move { stuck.commit().await });
        tokio::task::yield_now().await;

        // Many other sessions, each written while the stuck one holds its lock.
        for _ in 0..2000 {
            let other = id::generate();
            memory
                .save(Save::new(&other, SessionData::new()))
                .await
                .unwrap();
            let session = open(&other);
            session.load().await.unwrap();
            session.set_value("n", 2).unwrap();
            let started = tokio::time::Instant::now();
            session.commit().await.unwrap();
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "waited on another session"
            );
        }

        // A second writer of the stuck session gives up in bounded time.
        let same = open(&stuck_id);
        same.load().await.unwrap();
        same.set_value("n", 3).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(same.commit().await.err(), Some(StoreError::Timeout));
        assert_eq!(started.elapsed(), WRITE_LOCK_WAIT);
        assert_eq!(locks.len(), 1, "only the stuck session's lock is left");
        stuck.abort();
        let _ = stuck.await;
        assert_eq!(locks.len(), 0, "locks go when nobody wants them");
    }

    #[tokio::test]
    async fn regenerate_moves_the_data_and_destroys_the_old_id() {
        let store = MemorySessionStore::new(std::time::Duration::from_secs(60));
        let old = id::generate();
        let mut data = SessionData::new();
        data.insert("cart".into(), b"[1]".to_vec().into());
        store.save(Save::new(&old, data)).await.unwrap();
        let s = session(&store, Some(&old));
        s.load().await.unwrap();
        s.regenerate();
        let new = s.id().unwrap();
        assert_ne!(new, old);
        let Outcome::SetCookie(sent, _) = s.commit().await.unwrap() else {
            panic!("a rotated session sets a cookie")
        };
        assert_eq!(sent, new);
        assert_eq!(store.get(&old).await.unwrap(), None);
        assert_eq!(
            store.get(&new).await.unwrap().unwrap().data["cart"],
            &b"[1]"[..]
        );
    }
}

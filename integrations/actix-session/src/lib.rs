//! An [actix-session] store kept by a `gonest-sessiond` daemon.
//!
//! An actix-web app on actix-session keeps its handlers as they are and changes one line, the
//! store its `SessionMiddleware` is built on:
//!
//! ```no_run
//! use actix_session::SessionMiddleware;
//! use actix_web::cookie::Key;
//! use gonest_session_actix::SessiondStore;
//! use gonest_session_client::RemoteSessionStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let key = Key::generate();
//! // Was: SessionMiddleware::new(RedisSessionStore::new(redis_url).await?, key)
//! let store = SessiondStore::new(RemoteSessionStore::connect("http://127.0.0.1:7070").await?);
//! let sessions = SessionMiddleware::new(store, key);
//! # Ok(()) }
//! ```
//!
//! Then every instance of the app shares one store, the daemon's (in memory, or on Redis or
//! Valkey), with its near cache if the [`RemoteSessionStore`] has one, and `gonest-sessionctl`
//! sees the sessions.
//!
//! # How a session is stored
//! - actix-session keeps each value as its JSON text; the store keeps that text under its own
//!   key, as the GoNest session layer stores values: `gonest-sessionctl get` shows them, and
//!   apps in other languages on the daemon read them.
//! - The TTL actix-session asks for is the session's lifetime on the daemon.
//! - A new session gets a new key (256 random bits), saved only if no live session has it; on a
//!   collision the store takes another key.
//! - An update is conditional on the version it read, so it never brings back a session that
//!   was destroyed in the meantime (logged out, everywhere or on another instance; or expired):
//!   that request's changes are dropped and the session stays gone. (actix-session's Redis
//!   store would save them under a new key instead, which undoes the logout.) Without a near
//!   cache the read costs one more call per update.
//! - With [`SessiondStore::with_owner_key`], a session belongs to the user whose id it holds
//!   under that key, so that `gonest-sessionctl destroy-owner` (log out everywhere) reaches it.
//!
//! # Errors
//! A daemon's refusal, or a daemon that is down or slow, is the error actix-session's trait
//! takes (`LoadError::Other`, …) with a message that starts with the gRPC code the daemon
//! answered (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, …); actix-session answers the request with 500.
//! A call never waits longer than the [`RemoteSessionStore`]'s timeout.
//!
//! [actix-session]: https://docs.rs/actix-session

use std::collections::HashMap;
use std::sync::Arc;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore as _, StoreError, validate_id};
use gonest_session_proto::code_name;

/// actix-session's session state: each value's JSON text under its key.
type SessionState = HashMap<String, String>;

/// How many keys a new session tries before the store gives up: with 256-bit random keys, a
/// second collision means the keys are not random.
const CREATE_ATTEMPTS: usize = 4;

/// How many times an update reads again after another write to the same session came first.
const UPDATE_ATTEMPTS: usize = 8;

/// An actix-session [`SessionStore`] kept by a `gonest-sessiond` daemon. Cheap to clone; clones
/// share the connection.
#[derive(Debug, Clone)]
pub struct SessiondStore {
    store: RemoteSessionStore,
    owner_key: Option<Arc<str>>,
}

impl SessiondStore {
    /// A store on `store`'s daemon.
    pub fn new(store: RemoteSessionStore) -> Self {
        Self {
            store,
            owner_key: None,
        }
    }

    /// Makes each session belong to the user whose id it holds under `key` (a JSON string or
    /// number, such as the `user_id` a login inserts), so that the daemon lists it by owner and
    /// "log out everywhere" (`gonest-sessionctl destroy-owner`) removes it. A session without
    /// the key belongs to nobody.
    pub fn with_owner_key(mut self, key: impl Into<String>) -> Self {
        self.owner_key = Some(key.into().into());
        self
    }

    /// The daemon's client, for what actix-session has no call for (such as listing or
    /// destroying a user's sessions).
    pub fn remote(&self) -> &RemoteSessionStore {
        &self.store
    }

    /// The daemon's write of `state` under `id` for `ttl`.
    fn save_of(&self, id: &str, state: &SessionState, ttl: &Duration) -> anyhow::Result<Save> {
        let ttl = lifetime(ttl)?;
        let data: SessionData = state
            .iter()
            .map(|(key, json)| (key.clone(), Bytes::copy_from_slice(json.as_bytes())))
            .collect();
        let owner = self.owner_key.as_deref().and_then(|key| {
            match serde_json::from_str(state.get(key)?).ok()? {
                serde_json::Value::String(owner) => Some(owner),
                serde_json::Value::Number(owner) => Some(owner.to_string()),
                _ => None,
            }
        });
        let mut save = Save::new(id, data).ttl(ttl);
        save.owner = owner;
        Ok(save)
    }
}

/// A new session key: 256 bits from the operating system, in unpadded base64url (43 bytes).
fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// actix-session's TTL as the daemon takes it: positive.
fn lifetime(ttl: &Duration) -> anyhow::Result<std::time::Duration> {
    match std::time::Duration::try_from(*ttl) {
        Ok(ttl) if !ttl.is_zero() => Ok(ttl),
        _ => Err(anyhow::anyhow!(
            "INVALID_ARGUMENT: a session's ttl must be positive, not {ttl}"
        )),
    }
}

/// A daemon's error as actix-session takes it, with the gRPC code first.
fn daemon_error(err: StoreError) -> anyhow::Error {
    anyhow::anyhow!("{}: gonest-sessiond: {err}", code_name(&err))
}

impl SessionStore for SessiondStore {
    async fn load(&self, session_key: &SessionKey) -> Result<Option<SessionState>, LoadError> {
        let id = session_key.as_ref();
        // A key the daemon could not hold (a forged or foreign cookie) names no session.
        if validate_id(id).is_err() {
            return Ok(None);
        }
        let Some(stored) = self
            .store
            .get(id)
            .await
            .map_err(|err| LoadError::Other(daemon_error(err)))?
        else {
            return Ok(None);
        };
        stored
            .data
            .into_iter()
            .map(|(key, value)| match String::from_utf8(value.to_vec()) {
                Ok(json) => Ok((key, json)),
                Err(_) => Err(LoadError::Deserialization(anyhow::anyhow!(
                    "the value of {key:?} is not UTF-8 text"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn save(
        &self,
        session_state: SessionState,
        ttl: &Duration,
    ) -> Result<SessionKey, SaveError> {
        for _ in 0..CREATE_ATTEMPTS {
            let key = new_key();
            let save = self
                .save_of(&key, &session_state, ttl)
                .map_err(SaveError::Other)?
                .expected_version(0);
            match self.store.save(save).await {
                Ok(_) => return SessionKey::try_from(key).map_err(|e| SaveError::Other(e.into())),
                // The key is taken: leave that session alone and take another key.
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(SaveError::Other(daemon_error(err))),
            }
        }
        Err(SaveError::Other(anyhow::anyhow!(
            "ABORTED: gonest-sessiond: {CREATE_ATTEMPTS} new session keys in a row were taken"
        )))
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: SessionState,
        ttl: &Duration,
    ) -> Result<SessionKey, UpdateError> {
        let id = session_key.as_ref();
        if validate_id(id).is_err() {
            return Ok(session_key);
        }
        let save = self
            .save_of(id, &session_state, ttl)
            .map_err(UpdateError::Other)?;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self
                .store
                .get(id)
                .await
                .map_err(|err| UpdateError::Other(daemon_error(err)))?;
            // Gone since the request read it: it stays gone (see the crate's docs).
            let Some(current) = current else {
                return Ok(session_key);
            };
            match self
                .store
                .save(save.clone().expected_version(current.version))
                .await
            {
                Ok(_) => return Ok(session_key),
                // Another write came first: read again (the last write wins, as with Redis).
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(UpdateError::Other(daemon_error(err))),
            }
        }
        Err(UpdateError::Other(anyhow::anyhow!(
            "ABORTED: gonest-sessiond: {UPDATE_ATTEMPTS} other writes to the session came first"
        )))
    }

    async fn update_ttl(&self, session_key: &SessionKey, ttl: &Duration) -> anyhow::Result<()> {
        let id = session_key.as_ref();
        if validate_id(id).is_err() {
            return Ok(());
        }
        let ttl = lifetime(ttl)?;
        // A session that is gone stays gone: Touch extends only a live one.
        self.store
            .touch(id, Some(ttl))
            .await
            .map(drop)
            .map_err(daemon_error)
    }

    async fn delete(&self, session_key: &SessionKey) -> anyhow::Result<()> {
        let id = session_key.as_ref();
        if validate_id(id).is_err() {
            return Ok(());
        }
        self.store.destroy(id).await.map(drop).map_err(daemon_error)
    }
}

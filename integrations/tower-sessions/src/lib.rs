//! A [tower-sessions] store kept by a `gonest-sessiond` daemon.
//!
//! An axum app on tower-sessions keeps its handlers as they are and changes one line, the store
//! its `SessionManagerLayer` is built on:
//!
//! ```no_run
//! use gonest_session_client::RemoteSessionStore;
//! use gonest_session_tower_sessions::SessiondStore;
//! use tower_sessions::SessionManagerLayer;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Was: SessionManagerLayer::new(MemoryStore::default())
//! let store = SessiondStore::new(RemoteSessionStore::connect("http://127.0.0.1:7070").await?);
//! let sessions = SessionManagerLayer::new(store);
//! # Ok(()) }
//! ```
//!
//! Then every instance of the app shares one store, the daemon's (in memory, or on Redis or
//! Valkey), with its near cache if the [`RemoteSessionStore`] has one, and `gonest-sessionctl`
//! sees the sessions.
//!
//! # How a session is stored
//! - Each value is stored as its JSON encoding under its own key, as the GoNest session layer
//!   stores values: `gonest-sessionctl get` shows them readably, and apps in other languages
//!   on the daemon read them.
//! - The record's expiry is the daemon's `expires_at`; a record saved with an expiry already
//!   past is removed.
//! - [`create`](SessionStore::create) never overwrites a session: it saves only if no live
//!   session has the id, and on a collision it picks a new id.
//! - [`save`](SessionStore::save) replaces the session, as tower-sessions' other stores do.
//! - With [`SessiondStore::with_owner_key`], a session belongs to the user whose id it holds
//!   under that key, so that `gonest-sessionctl destroy-owner` (log out everywhere) reaches it.
//!
//! # Errors
//! A daemon's refusal, or a daemon that is down or slow, is an
//! [`Error::Backend`] whose message starts with the gRPC code
//! the daemon answered (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, …); tower-sessions answers the
//! request with 500. A call never waits longer than the [`RemoteSessionStore`]'s timeout.
//!
//! [tower-sessions]: https://docs.rs/tower-sessions

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore as _, StoreError, StoreExpiry};
use gonest_session_proto::code_name;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, Error, SessionStore};

/// How many ids [`create`](SessionStore::create) tries before it gives up: with 128-bit random
/// ids, a second collision means the ids are not random.
const CREATE_ATTEMPTS: usize = 4;

/// A tower-sessions [`SessionStore`] kept by a `gonest-sessiond` daemon. Cheap to clone; clones
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

    /// The daemon's client, for what tower-sessions has no call for (such as listing or
    /// destroying a user's sessions).
    pub fn remote(&self) -> &RemoteSessionStore {
        &self.store
    }

    /// The daemon's write of `record`; `None` when its expiry has passed already.
    fn save_of(&self, record: &Record) -> session_store::Result<Option<Save>> {
        let expires_at = SystemTime::from(record.expiry_date);
        if expires_at <= SystemTime::now() {
            return Ok(None);
        }
        let data = record
            .data
            .iter()
            .map(|(key, value)| {
                let json = serde_json::to_vec(value)
                    .map_err(|err| Error::Encode(format!("value of {key:?}: {err}")))?;
                Ok((key.clone(), Bytes::from(json)))
            })
            .collect::<session_store::Result<SessionData>>()?;
        let owner = self
            .owner_key
            .as_deref()
            .and_then(|key| match record.data.get(key)? {
                serde_json::Value::String(owner) => Some(owner.clone()),
                serde_json::Value::Number(owner) => Some(owner.to_string()),
                _ => None,
            });
        let mut save = Save::new(record.id.to_string(), data);
        save.expiry = StoreExpiry::At(expires_at);
        save.owner = owner;
        Ok(Some(save))
    }
}

/// A daemon's error as tower-sessions takes it, with the gRPC code first.
fn backend(err: StoreError) -> Error {
    Error::Backend(format!("{}: gonest-sessiond: {err}", code_name(&err)))
}

#[async_trait]
impl SessionStore for SessiondStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        for _ in 0..CREATE_ATTEMPTS {
            let Some(save) = self.save_of(record)? else {
                return Ok(());
            };
            match self.store.save(save.expected_version(0)).await {
                Ok(_) => return Ok(()),
                // The id is taken: leave that session alone and take another id.
                Err(StoreError::Conflict { .. }) => record.id = Id::default(),
                Err(err) => return Err(backend(err)),
            }
        }
        Err(Error::Backend(format!(
            "ABORTED: gonest-sessiond: {CREATE_ATTEMPTS} new session ids in a row were taken"
        )))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self.save_of(record)? {
            Some(save) => self.store.save(save).await.map(drop).map_err(backend),
            None => self.delete(&record.id).await,
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(stored) = self.store.get(&id.to_string()).await.map_err(backend)? else {
            return Ok(None);
        };
        let data = stored
            .data
            .iter()
            .map(|(key, value)| {
                let value = serde_json::from_slice(value)
                    .map_err(|err| Error::Decode(format!("value of {key:?} is not JSON: {err}")))?;
                Ok((key.clone(), value))
            })
            .collect::<session_store::Result<_>>()?;
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date: OffsetDateTime::from(stored.expires_at),
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.store
            .destroy(&id.to_string())
            .await
            .map(drop)
            .map_err(backend)
    }
}

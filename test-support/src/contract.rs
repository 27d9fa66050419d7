//! The store contract: one suite of tests that every [`SessionStore`] passes, run against each
//! store by [`store_contract!`](crate::store_contract) (as tower-sessions runs one suite against
//! every store of its own).
//!
//! Each rule is an async function over a [`Subject`]: a store under test, its clock, and a way
//! to let time pass for it. The subjects here are the memory store (on tokio's paused clock),
//! the Redis store, and the remote store through a daemon on either backend (on real time: a
//! daemon and Redis expire on their own clocks).
//!
//! ```ignore
//! mod memory {
//!     gonest_session_test_support::store_contract!(
//!         gonest_session_test_support::contract::Memory::start()
//!     );
//! }
//! ```
//!
//! Every subject is built with the same limits: [`MAX_SESSION_BYTES`],
//! [`MAX_SESSIONS_PER_OWNER`], [`DEFAULT_TTL`] and [`MAX_TTL`].

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{
    MAX_ID_LEN, MemorySessionStore, Save, SessionData, SessionRecord, SessionStore, StoreError,
    StoreExpiry,
};
use gonest_session_redis::RedisSessionStore;
use gonest_sessiond::{Config, StoreBackend};

use crate::{Daemon, RedisServer};

/// The largest session every subject stores, keys plus values.
pub const MAX_SESSION_BYTES: usize = 64;
/// The most live sessions of one owner, for every subject.
pub const MAX_SESSIONS_PER_OWNER: u64 = 3;
/// The lifetime of a session saved without a ttl.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a save may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far apart the store's times and the subject's may be: rounding to milliseconds (Redis)
/// and the time a call takes.
pub const SLACK: Duration = Duration::from_millis(200);
/// The lifetime of a session a test lets expire.
const BRIEF: Duration = Duration::from_millis(50);

/// A store under test, with its clock.
pub trait Subject: Send + Sync + 'static {
    /// The store.
    type Store: SessionStore + Clone;
    /// The store under test.
    fn store(&self) -> &Self::Store;
    /// The time now on the clock the store computes expiries by (within [`SLACK`]).
    fn now(&self) -> SystemTime;
    /// Lets `by` pass for the store, at least.
    fn pass(&self, by: Duration) -> impl Future<Output = ()> + Send;
}

/// The memory store, on tokio's clock: time passes by pausing and advancing it, so a test of
/// expiry waits for nothing. Tests that let time pass run on a current-thread runtime.
#[derive(Debug)]
pub struct Memory(MemorySessionStore);

impl Memory {
    /// A memory store with the suite's limits.
    pub async fn start() -> Self {
        let store = MemorySessionStore::builder()
            .default_ttl(DEFAULT_TTL)
            .max_ttl(MAX_TTL)
            .max_session_bytes(MAX_SESSION_BYTES)
            .max_sessions_per_owner(MAX_SESSIONS_PER_OWNER)
            .build()
            .expect("valid settings");
        Self(store)
    }
}

impl Subject for Memory {
    type Store = MemorySessionStore;
    fn store(&self) -> &MemorySessionStore {
        &self.0
    }
    fn now(&self) -> SystemTime {
        self.0.clock().now()
    }
    async fn pass(&self, by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    }
}

/// The Redis store, against a `redis-server` of its own.
#[derive(Debug)]
pub struct Redis {
    store: RedisSessionStore,
    _server: RedisServer,
}

impl Redis {
    /// A Redis store with the suite's limits, on a fresh `redis-server`.
    pub async fn start() -> Self {
        let server = RedisServer::start().await;
        let store = RedisSessionStore::builder(server.url())
            .default_ttl(DEFAULT_TTL)
            .max_ttl(MAX_TTL)
            .max_session_bytes(MAX_SESSION_BYTES)
            .max_sessions_per_owner(MAX_SESSIONS_PER_OWNER)
            .connect()
            .await
            .expect("redis-server answers");
        Self {
            store,
            _server: server,
        }
    }
}

impl Subject for Redis {
    type Store = RedisSessionStore;
    fn store(&self) -> &RedisSessionStore {
        &self.store
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    async fn pass(&self, by: Duration) {
        real_time_passes(by).await;
    }
}

/// The remote store, through a daemon served in this process on either backend.
#[derive(Debug)]
pub struct Remote {
    store: RemoteSessionStore,
    _daemon: Daemon,
    _redis: Option<RedisServer>,
}

impl Remote {
    /// A daemon on its memory backend, with the suite's limits.
    pub async fn on_memory() -> Self {
        Self::start(StoreBackend::Memory, None).await
    }

    /// A daemon on a fresh `redis-server`, with the suite's limits.
    pub async fn on_redis() -> Self {
        let redis = RedisServer::start().await;
        Self::start(StoreBackend::Redis(redis.url()), Some(redis)).await
    }

    async fn start(backend: StoreBackend, redis: Option<RedisServer>) -> Self {
        let daemon = Daemon::start(Config {
            default_ttl: DEFAULT_TTL,
            max_ttl: MAX_TTL,
            max_session_bytes: MAX_SESSION_BYTES,
            max_sessions_per_owner: MAX_SESSIONS_PER_OWNER,
            backend,
            ..Config::default()
        })
        .await;
        let store = RemoteSessionStore::connect(daemon.url())
            .await
            .expect("the daemon answers");
        Self {
            store,
            _daemon: daemon,
            _redis: redis,
        }
    }
}

impl Subject for Remote {
    type Store = RemoteSessionStore;
    fn store(&self) -> &RemoteSessionStore {
        &self.store
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    async fn pass(&self, by: Duration) {
        real_time_passes(by).await;
    }
}

/// Waits until `by` has passed on the system clock, which Redis and the daemon expire by.
async fn real_time_passes(by: Duration) {
    let until = SystemTime::now() + by + Duration::from_millis(5);
    while let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

/// Runs the whole contract against the subject `$start` (an expression whose value, awaited,
/// is a fresh [`Subject`]), one `#[tokio::test]` per rule. Invoke it once per module.
#[macro_export]
macro_rules! store_contract {
    ($start:expr) => {
        $crate::store_contract!(@current $start;
            versions_count_saves_and_created_at_is_kept,
            expected_version_guards_saves_and_a_conflict_changes_nothing,
            an_expired_session_is_absent_for_every_operation,
            touch_extends_without_changing_version_or_data,
            destroy_is_idempotent,
            bad_ids_are_invalid_for_every_operation,
            expiry_comes_from_ttl_then_absolute_then_default,
            bad_ttls_and_expiries_are_invalid_and_store_nothing,
            sessions_over_the_size_limit_are_refused_and_the_old_data_kept,
            sessions_are_listed_and_destroyed_by_owner,
            an_owner_has_at_most_its_limit_of_live_sessions,
            every_live_session_is_listed_once_page_by_page
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn compare_and_swap_loses_no_write() {
            let subject = $start.await;
            $crate::contract::compare_and_swap_loses_no_write(&subject).await;
        }
    };
    (@current $start:expr; $($rule:ident),+) => {
        $(
            #[tokio::test]
            async fn $rule() {
                let subject = $start.await;
                $crate::contract::$rule(&subject).await;
            }
        )+
    };
}

fn data(pairs: &[(&str, &str)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
        .collect()
}

fn ids(sessions: &[SessionRecord]) -> BTreeSet<&str> {
    sessions.iter().map(|session| session.id.as_str()).collect()
}

/// Whether `actual` is `expected`, within [`SLACK`].
fn near(actual: SystemTime, expected: SystemTime) -> bool {
    let apart = actual
        .duration_since(expected)
        .unwrap_or_else(|early| early.duration());
    apart <= SLACK
}

/// A new session gets version 1, each save adds 1; `created_at` is kept from the first save.
pub async fn versions_count_saves_and_created_at_is_kept(subject: &impl Subject) {
    let store = subject.store();
    let first = store
        .save(Save::new("s", data(&[("a", "1")])))
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    let second = store
        .save(Save::new("s", data(&[("a", "2")])))
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.created_at, first.created_at, "created_at is kept");
    let record = store.get("s").await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    assert_eq!(record.data, data(&[("a", "2")]));
    assert_eq!(record.created_at, first.created_at);
    assert_eq!(record.expires_at, second.expires_at);
}

/// `Some(0)` creates only, `Some(n)` saves only over version n, `None` always; a conflict
/// names both versions and changes nothing.
pub async fn expected_version_guards_saves_and_a_conflict_changes_nothing(subject: &impl Subject) {
    let store = subject.store();
    store
        .save(Save::new("s", data(&[("k", "v1")])).expected_version(0))
        .await
        .unwrap();
    let err = store
        .save(Save::new("s", data(&[("k", "again")])).expected_version(0))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            expected: 0,
            actual: Some(1)
        }
    );
    let err = store
        .save(Save::new("s", data(&[("k", "stale")])).expected_version(7))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            expected: 7,
            actual: Some(1)
        }
    );
    let record = store.get("s").await.unwrap().unwrap();
    assert_eq!((record.version, record.data), (1, data(&[("k", "v1")])));

    let saved = store
        .save(Save::new("s", data(&[("k", "v2")])).expected_version(1))
        .await
        .unwrap();
    assert_eq!(saved.version, 2);
    let saved = store
        .save(Save::new("s", data(&[("k", "v3")])))
        .await
        .unwrap();
    assert_eq!(
        saved.version, 3,
        "no expected version: saved whatever is there"
    );

    let err = store
        .save(Save::new("absent", data(&[])).expected_version(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            expected: 1,
            actual: None
        }
    );
    assert_eq!(store.get("absent").await.unwrap(), None);
}

/// A session past its `expires_at` is absent for Get, Touch, Destroy and a versioned Save,
/// whether or not anything has removed it yet; a save in its place starts again at version 1.
pub async fn an_expired_session_is_absent_for_every_operation(subject: &impl Subject) {
    let store = subject.store();
    for id in ["g", "t", "d", "v"] {
        store
            .save(Save::new(id, data(&[("old", "x")])).ttl(BRIEF))
            .await
            .unwrap();
    }
    subject.pass(BRIEF).await;
    assert_eq!(store.get("g").await.unwrap(), None);
    assert_eq!(store.touch("t", None).await.unwrap(), None);
    assert!(
        !store.destroy("d").await.unwrap(),
        "expired is not 'existed'"
    );
    let err = store
        .save(Save::new("v", data(&[])).expected_version(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            expected: 1,
            actual: None
        }
    );
    let created = store
        .save(Save::new("v", data(&[("new", "y")])).expected_version(0))
        .await
        .unwrap();
    assert_eq!(created.version, 1, "replaced, not continued");
    let record = store.get("v").await.unwrap().unwrap();
    assert_eq!(record.data, data(&[("new", "y")]));
    assert_eq!(
        store.get("t").await.unwrap(),
        None,
        "touch did not revive it"
    );
}

/// Touch moves the expiry to `ttl` from now and changes neither version nor data; a missing
/// session is `None`.
pub async fn touch_extends_without_changing_version_or_data(subject: &impl Subject) {
    let store = subject.store();
    store
        .save(Save::new("s", data(&[("k", "v")])).ttl(BRIEF * 2))
        .await
        .unwrap();
    let expires = store
        .touch("s", Some(Duration::from_secs(7200)))
        .await
        .unwrap()
        .expect("live");
    assert!(
        near(expires, subject.now() + Duration::from_secs(7200)),
        "{expires:?}"
    );
    subject.pass(BRIEF * 2).await;
    let record = store
        .get("s")
        .await
        .unwrap()
        .expect("touched, so still live");
    assert_eq!(record.version, 1);
    assert_eq!(record.expires_at, expires);
    assert_eq!(record.data, data(&[("k", "v")]));
    let expires = store.touch("s", None).await.unwrap().unwrap();
    assert!(
        near(expires, subject.now() + DEFAULT_TTL),
        "the default ttl"
    );
    assert_eq!(store.touch("missing", None).await.unwrap(), None);
}

/// Destroy says whether a session existed, and can be repeated.
pub async fn destroy_is_idempotent(subject: &impl Subject) {
    let store = subject.store();
    store.save(Save::new("s", data(&[]))).await.unwrap();
    assert!(store.destroy("s").await.unwrap());
    assert!(!store.destroy("s").await.unwrap());
    assert_eq!(store.get("s").await.unwrap(), None);
    assert!(!store.destroy("never").await.unwrap());
}

/// An id that is empty, too long, or holds a space or a control character is
/// `InvalidArgument` for every operation.
pub async fn bad_ids_are_invalid_for_every_operation(subject: &impl Subject) {
    let store = subject.store();
    let long = "x".repeat(MAX_ID_LEN + 1);
    for id in ["", "with space", "\u{7f}", &long] {
        let invalid = |result: Result<(), StoreError>| {
            assert!(
                matches!(result, Err(StoreError::InvalidArgument(_))),
                "{id:?}: {result:?}"
            );
        };
        invalid(store.get(id).await.map(drop));
        invalid(store.save(Save::new(id, data(&[]))).await.map(drop));
        invalid(store.destroy(id).await.map(drop));
        invalid(store.touch(id, None).await.map(drop));
    }
}

/// A save's expiry is its ttl, else its absolute `expires_at`, else the default ttl.
pub async fn expiry_comes_from_ttl_then_absolute_then_default(subject: &impl Subject) {
    let store = subject.store();
    let saved = store.save(Save::new("d", data(&[]))).await.unwrap();
    assert!(near(saved.expires_at, subject.now() + DEFAULT_TTL));
    let saved = store
        .save(Save::new("t", data(&[])).ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(near(
        saved.expires_at,
        subject.now() + Duration::from_secs(30)
    ));
    let at = subject.now() + 2 * DEFAULT_TTL;
    let mut save = Save::new("a", data(&[]));
    save.expiry = StoreExpiry::At(at);
    let saved = store.save(save).await.unwrap();
    assert!(near(saved.expires_at, at), "{:?}", saved.expires_at);
    let record = store.get("a").await.unwrap().unwrap();
    assert_eq!(record.expires_at, saved.expires_at);
}

/// A ttl of zero or over the maximum, and an `expires_at` in the past or too far away, are
/// `InvalidArgument` and store nothing.
pub async fn bad_ttls_and_expiries_are_invalid_and_store_nothing(subject: &impl Subject) {
    let store = subject.store();
    let now = subject.now();
    let cases = [
        StoreExpiry::Ttl(Duration::ZERO),
        StoreExpiry::Ttl(MAX_TTL + Duration::from_secs(1)),
        StoreExpiry::Ttl(Duration::MAX),
        StoreExpiry::At(now - Duration::from_secs(1)),
        StoreExpiry::At(now + MAX_TTL + Duration::from_secs(60)),
    ];
    for expiry in cases {
        let mut save = Save::new("s", data(&[]));
        save.expiry = expiry;
        let err = store.save(save).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{expiry:?}: {err:?}"
        );
    }
    assert_eq!(store.get("s").await.unwrap(), None);
    store.save(Save::new("s", data(&[]))).await.unwrap();
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
        let err = store.touch("s", Some(ttl)).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{ttl:?}");
    }
    let record = store.get("s").await.unwrap().unwrap();
    assert!(
        near(record.expires_at, subject.now() + DEFAULT_TTL),
        "untouched"
    );
}

/// A session over the size limit is `TooLarge` with its size, and what was stored is kept.
pub async fn sessions_over_the_size_limit_are_refused_and_the_old_data_kept(
    subject: &impl Subject,
) {
    let store = subject.store();
    store
        .save(Save::new("s", data(&[("k", "v")])))
        .await
        .unwrap();
    let big = "x".repeat(MAX_SESSION_BYTES);
    let err = store
        .save(Save::new("s", data(&[("k", &big)])))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::TooLarge {
            size: MAX_SESSION_BYTES + 1,
            limit: MAX_SESSION_BYTES
        }
    );
    let record = store.get("s").await.unwrap().unwrap();
    assert_eq!((record.version, record.data), (1, data(&[("k", "v")])));
    let exact = "x".repeat(MAX_SESSION_BYTES - 1);
    store
        .save(Save::new("s", data(&[("k", &exact)])))
        .await
        .expect("exactly at the limit");
}

/// Writers that each read, change and save with the version they read (again on a conflict)
/// lose no write.
pub async fn compare_and_swap_loses_no_write(subject: &impl Subject) {
    const WRITERS: usize = 4;
    const WRITES: usize = 3;
    let store = subject.store();
    store.save(Save::new("s", data(&[]))).await.unwrap();
    race_writers(store, "s", WRITERS, WRITES).await;
    let record = store.get("s").await.unwrap().unwrap();
    assert_eq!(record.data.len(), WRITERS * WRITES, "no write lost");
    assert_eq!(record.version, 1 + (WRITERS * WRITES) as u64);
}

/// Has `writers` tasks each add `writes` keys to the session `id`, each with compare-and-swap
/// (read again and retry on a conflict), and waits for them all.
pub async fn race_writers<S: SessionStore + Clone>(
    store: &S,
    id: &'static str,
    writers: usize,
    writes: usize,
) {
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..writes {
                    loop {
                        let record = store.get(id).await.unwrap().unwrap();
                        let mut data = record.data;
                        data.insert(format!("{writer}:{n}"), b"1".to_vec().into());
                        match store
                            .save(Save::new(id, data).expected_version(record.version))
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(err) => panic!("{err}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn owned(id: &str, owner: &str) -> Save {
    Save::new(id, data(&[("k", id)])).owner(owner)
}

/// An owner's live sessions are listed, with or without data; "log out everywhere" destroys
/// them but the exceptions, and leaves other owners' sessions alone.
pub async fn sessions_are_listed_and_destroyed_by_owner(subject: &impl Subject) {
    let store = subject.store();
    for id in ["a", "b"] {
        store.save(owned(id, "u")).await.unwrap();
    }
    store.save(owned("c", "u").ttl(BRIEF)).await.unwrap();
    store.save(owned("o", "v")).await.unwrap();
    store.save(Save::new("n", data(&[]))).await.unwrap();
    subject.pass(BRIEF).await;

    let listed = store.list_by_owner("u", false).await.unwrap();
    assert_eq!(ids(&listed), BTreeSet::from(["a", "b"]), "not the expired");
    assert!(listed.iter().all(|session| session.data.is_empty()));
    assert!(listed.iter().all(|s| s.owner.as_deref() == Some("u")));
    let with_data = store.list_by_owner("u", true).await.unwrap();
    let a = with_data.iter().find(|session| session.id == "a").unwrap();
    assert_eq!(a.data, data(&[("k", "a")]));
    assert!(
        store
            .list_by_owner("nobody", false)
            .await
            .unwrap()
            .is_empty()
    );

    store.save(owned("d", "u")).await.unwrap();
    let destroyed = store
        .destroy_by_owner("u", &["b".to_owned()])
        .await
        .unwrap();
    assert_eq!(destroyed, 2);
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.get("d").await.unwrap(), None);
    assert!(store.get("b").await.unwrap().is_some(), "the exception");
    assert!(store.get("o").await.unwrap().is_some(), "another owner's");
    assert!(store.get("n").await.unwrap().is_some(), "nobody's");
    assert_eq!(
        ids(&store.list_by_owner("u", false).await.unwrap()),
        BTreeSet::from(["b"])
    );
    assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
    assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 0);
}

/// An owner has at most its limit of live sessions: one more is `TooManyOwnerSessions`, its
/// own sessions still save, and an expired one does not count.
pub async fn an_owner_has_at_most_its_limit_of_live_sessions(subject: &impl Subject) {
    let store = subject.store();
    store.save(owned("s0", "u").ttl(BRIEF)).await.unwrap();
    for n in 1..MAX_SESSIONS_PER_OWNER {
        store.save(owned(&format!("s{n}"), "u")).await.unwrap();
    }
    let err = store.save(owned("new", "u")).await.unwrap_err();
    assert_eq!(
        err,
        StoreError::TooManyOwnerSessions {
            limit: MAX_SESSIONS_PER_OWNER
        }
    );
    assert_eq!(store.get("new").await.unwrap(), None);
    store
        .save(owned("s1", "u"))
        .await
        .expect("its own sessions still save");
    store.save(owned("new", "v")).await.expect("another owner");
    subject.pass(BRIEF).await;
    store
        .save(owned("later", "u"))
        .await
        .expect("an expired session does not count");
}

/// Page after page lists every live session once, without data and with its owner; the
/// expired are left out, and a cursor the store did not hand out is `InvalidArgument`.
pub async fn every_live_session_is_listed_once_page_by_page(subject: &impl Subject) {
    const SESSIONS: usize = 300;
    let store = subject.store();
    for n in 0..SESSIONS {
        let save = Save::new(format!("s{n}"), data(&[("k", "v")]));
        let save = if n.is_multiple_of(3) {
            save.owner(format!("u{n}"))
        } else {
            save
        };
        store.save(save).await.unwrap();
    }
    store
        .save(Save::new("brief", data(&[])).ttl(BRIEF))
        .await
        .unwrap();
    subject.pass(BRIEF).await;
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..10_000 {
        let page = store.list_sessions(&cursor, 50).await.unwrap();
        for session in page.sessions {
            assert!(session.data.is_empty(), "no data in a listing");
            let n: usize = session.id[1..].parse().unwrap();
            let owner = n.is_multiple_of(3).then(|| format!("u{n}"));
            assert_eq!(session.owner, owner);
            assert!(seen.insert(session.id), "listed twice");
        }
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), SESSIONS);
    assert!(!seen.contains("brief"));
    let err = store.list_sessions("x", 50).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
}

//! The memory store's own behaviour, beyond the store contract every store follows.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::{SessionData, StoreError, StoreExpiry};

#[test]
fn reads_share_the_stored_buffer_and_a_touch_leaves_readers_theirs() {
    let store = MemorySessionStore::builder()
        .sweep_interval(None)
        .build()
        .unwrap();
    let value = "v".repeat(16 << 10);
    store
        .save_now(Save::new("s", data(&[("k", &value), ("n", "1")])))
        .unwrap();
    let first = store.get_now("s").unwrap().unwrap();
    let second = store.get_now("s").unwrap().unwrap();
    // Both reads are slices of one buffer: the value was not copied for either.
    assert_eq!(first.data["k"].as_ptr(), second.data["k"].as_ptr());
    assert_eq!(first.data["k"], value.as_bytes());
    // A touch while they are held changes the store's record, not theirs.
    let until = store.touch_now("s", Some(HOUR * 2)).unwrap().unwrap();
    let touched = store.get_now("s").unwrap().unwrap();
    assert_eq!(touched.expires_at, until);
    assert_ne!(first.expires_at, until);
    assert_eq!(touched.data, first.data);
    // A save replaces the record; what a reader holds stays as it read it.
    store
        .save_now(Save::new("s", data(&[("k", "new")])))
        .unwrap();
    assert_eq!(first.data["k"], value.as_bytes());
    assert_eq!(&store.get_now("s").unwrap().unwrap().data["k"][..], b"new");
}

#[test]
fn racing_new_sessions_of_one_owner_never_pass_its_limit() {
    for round in 0..20 {
        let store = MemorySessionStore::builder()
            .max_sessions_per_owner(10)
            .sweep_interval(None)
            .build()
            .unwrap();
        let start = std::sync::Barrier::new(8);
        let saved = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let (store, start, saved) = (&store, &start, &saved);
                scope.spawn(move || {
                    start.wait();
                    for n in 0..4 {
                        let save =
                            Save::new(format!("s{thread}-{n}"), SessionData::new()).owner("u");
                        match store.save_now(save) {
                            Ok(_) => {
                                saved.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(StoreError::TooManyOwnerSessions { limit: 10 }) => {}
                            Err(err) => panic!("{err}"),
                        }
                    }
                });
            }
        });
        assert_eq!(saved.load(Ordering::Relaxed), 10, "round {round}");
        assert_eq!(store.list_by_owner_now("u", false).unwrap().len(), 10);
    }
}

#[test]
fn an_owner_place_taken_by_a_save_refused_for_the_session_limit_is_given_back() {
    let store = MemorySessionStore::builder()
        .max_sessions(1)
        .max_sessions_per_owner(1)
        .sweep_interval(None)
        .build()
        .unwrap();
    let save = |id: &str, owner: &str| Save::new(id, SessionData::new()).owner(owner);
    store.save_now(save("other", "v")).unwrap();
    let err = store.save_now(save("mine", "u")).unwrap_err();
    assert!(matches!(err, StoreError::TooManySessions { .. }), "{err}");
    store.destroy_now("other").unwrap();
    store
        .save_now(save("mine2", "u"))
        .expect("u's place was given back");
}

const HOUR: Duration = Duration::from_secs(3600);

fn data(pairs: &[(&str, &str)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
        .collect()
}

fn store() -> MemorySessionStore {
    MemorySessionStore::builder()
        .default_ttl(HOUR)
        .max_ttl(24 * HOUR)
        .sweep_interval(None)
        .build()
        .unwrap()
}

fn ids(sessions: &[SessionRecord]) -> Vec<&str> {
    let mut ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(start_paused = true)]
async fn the_owner_index_follows_saves_destroys_touches_expiry_and_sweeps_without_a_leak() {
    let store = store();
    let owned = |id: &str, owner: &str| Save::new(id, data(&[("k", "v")])).owner(owner);
    store.save(owned("a", "u1")).await.unwrap();
    store.save(owned("b", "u1")).await.unwrap();
    store.save(owned("c", "u2")).await.unwrap();
    store
        .save(Save::new("d", SessionData::new()))
        .await
        .unwrap();
    let listed = store.list_by_owner("u1", false).await.unwrap();
    assert_eq!(ids(&listed), ["a", "b"]);
    assert!(listed.iter().all(|s| s.data.is_empty() && s.version == 1));
    assert_eq!(listed[0].owner.as_deref(), Some("u1"));
    let with_data = store.list_by_owner("u1", true).await.unwrap();
    assert_eq!(with_data[0].data, data(&[("k", "v")]));
    assert_eq!(
        store.get("a").await.unwrap().unwrap().owner.as_deref(),
        Some("u1")
    );
    assert_eq!(store.get("d").await.unwrap().unwrap().owner, None);

    // A save moves a session to another owner, or to none.
    store.save(owned("b", "u2")).await.unwrap();
    store
        .save(Save::new("c", SessionData::new()))
        .await
        .unwrap();
    assert_eq!(ids(&store.list_by_owner("u1", false).await.unwrap()), ["a"]);
    assert_eq!(ids(&store.list_by_owner("u2", false).await.unwrap()), ["b"]);

    // Destroy, expiry on access, and the sweeper all leave the index.
    store.destroy("a").await.unwrap();
    assert!(store.list_by_owner("u1", false).await.unwrap().is_empty());
    store
        .save(owned("e", "u3").ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    store
        .save(owned("f", "u3").ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    store.touch("f", Some(HOUR)).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(ids(&store.list_by_owner("u3", false).await.unwrap()), ["f"]);
    assert_eq!(store.get("e").await.unwrap(), None);
    tokio::time::advance(HOUR).await;
    assert!(store.list_by_owner("u3", false).await.unwrap().is_empty());
    assert_eq!(
        store.sweep(),
        4,
        "f, and b, c and d after their default hour"
    );
    assert_eq!(store.inner.owners.owners(), 0, "no owner is left behind");
    assert!(store.list_by_owner("", false).await.is_err());
    assert!(store.save(owned("g", "tab\t")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn destroy_by_owner_spares_the_exceptions_and_other_owners_and_blocks_versioned_saves() {
    let store = store();
    for id in ["a", "b", "c"] {
        store
            .save(Save::new(id, SessionData::new()).owner("u1"))
            .await
            .unwrap();
    }
    store
        .save(Save::new("x", SessionData::new()).owner("u2"))
        .await
        .unwrap();
    store
        .save(
            Save::new("old", SessionData::new())
                .owner("u1")
                .ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    let destroyed = store
        .destroy_by_owner("u1", &["b".to_owned()])
        .await
        .unwrap();
    assert_eq!(destroyed, 2, "live ones only: a and c");
    assert_eq!(ids(&store.list_by_owner("u1", false).await.unwrap()), ["b"]);
    assert!(store.get("x").await.unwrap().is_some());
    let err = store
        .save(Save::new("a", SessionData::new()).expected_version(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: None, .. }),
        "{err}"
    );
    assert_eq!(store.destroy_by_owner("nobody", &[]).await.unwrap(), 0);
}

#[test]
fn destroy_by_owner_leaves_no_session_saved_before_it_while_more_are_saved() {
    let store = MemorySessionStore::builder()
        .max_sessions_per_owner(0)
        .sweep_interval(None)
        .build()
        .unwrap();
    // Savers log each session once its save has returned.
    let saved = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let savers: Vec<_> = (0..3)
        .map(|t| {
            let (store, saved) = (store.clone(), saved.clone());
            std::thread::spawn(move || {
                for i in 0..3000 {
                    let id = format!("t{t}-{i}");
                    store
                        .save_now(Save::new(&id, SessionData::new()).owner("victim"))
                        .unwrap();
                    // Re-save the previous one too: a versioned save racing the destroy.
                    if i > 0 {
                        let _ = store.save_now(
                            Save::new(format!("t{t}-{}", i - 1), SessionData::new())
                                .owner("victim")
                                .expected_version(1),
                        );
                    }
                    saved.lock().push(id);
                }
            })
        })
        .collect();
    let mut rounds = 0;
    loop {
        let done = savers.iter().all(|saver| saver.is_finished());
        let before: Vec<String> = std::mem::take(&mut *saved.lock());
        store.destroy_by_owner_now("victim", &[]).unwrap();
        for id in &before {
            assert_eq!(store.get_now(id).unwrap(), None, "{id} survived");
        }
        rounds += 1;
        if done {
            break;
        }
    }
    for saver in savers {
        saver.join().unwrap();
    }
    assert!(
        rounds > 1,
        "the destroys ran while sessions were being saved"
    );
    assert!(store.list_by_owner_now("victim", false).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn huge_ttls_are_refused_without_panicking() {
    let store = MemorySessionStore::builder()
        .max_ttl(MemorySessionStore::MAX_TTL_CAP)
        .sweep_interval(None)
        .build()
        .unwrap();
    let now = store.clock().now();
    let saved = store
        .save(Save::new("s", data(&[])).ttl(MemorySessionStore::MAX_TTL_CAP))
        .await
        .unwrap();
    assert_eq!(saved.expires_at, now + MemorySessionStore::MAX_TTL_CAP);
    for ttl in [
        MemorySessionStore::MAX_TTL_CAP + Duration::from_nanos(1),
        Duration::from_secs(i64::MAX as u64),
        Duration::MAX,
    ] {
        let err = store
            .save(Save::new("s", data(&[])).ttl(ttl))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        let err = store.touch("s", Some(ttl)).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    }
    let err = MemorySessionStore::builder()
        .max_ttl(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cap"), "{err}");
}

#[tokio::test]
async fn a_ttl_just_over_the_maximum_says_by_how_much() {
    let store = store();
    let err = store
        .save(Save::new("s", data(&[])).ttl(24 * HOUR + Duration::from_nanos(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ttl of 1day 1ns is over the maximum of 1day"
    );
}

/// Page after page lists every live session once, without data, each page visiting at
/// most LIST_SHARDS_PER_PAGE shards; the expired are left out, a strange cursor refused.
#[tokio::test(start_paused = true)]
async fn every_session_is_listed_once_page_by_page() {
    let store = store();
    for n in 0..3000 {
        let save = Save::new(format!("s{n}"), data(&[("k", "v")]));
        let save = if n % 3 == 0 { save.owner("u") } else { save };
        store.save(save).await.unwrap();
    }
    store
        .save(Save::new("brief", data(&[])).ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut seen = std::collections::HashSet::new();
    let (mut cursor, mut pages) = (String::new(), 0);
    loop {
        let page = store.list_sessions(&cursor, 100).await.unwrap();
        pages += 1;
        for session in page.sessions {
            assert!(session.data.is_empty(), "no data in a listing");
            assert_eq!(
                session.owner.is_some(),
                session.id[1..].parse::<u32>().unwrap() % 3 == 0
            );
            assert!(seen.insert(session.id), "listed twice");
        }
        match page.next {
            Some(next) => {
                let (before, after): (usize, usize) =
                    (cursor.parse().unwrap_or(0), next.parse().unwrap());
                assert!(after - before <= LIST_SHARDS_PER_PAGE);
                cursor = next;
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 3000);
    assert!(!seen.contains("brief"));
    assert!(pages >= 30, "{pages} pages of about 100");
    for bad in ["x", "-1", "4096", "99999999999999999999"] {
        let err = store.list_sessions(bad, 100).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{bad}: {err:?}"
        );
    }
}

/// An absolute expiry too far away is named as what was sent, not as a ttl.
#[tokio::test]
async fn an_expires_at_too_far_away_is_named_as_such() {
    let store = store();
    let at = SystemTime::now() + 48 * HOUR;
    let err = store
        .save(Save {
            expiry: StoreExpiry::At(at),
            ..Save::new("s", data(&[]))
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("expires_at is ") && err.ends_with("over the maximum ttl of 1day"),
        "{err}"
    );
}

#[tokio::test]
async fn the_session_limit_refuses_new_sessions_but_not_updates() {
    let store = MemorySessionStore::builder()
        .max_sessions(2)
        .sweep_interval(None)
        .build()
        .unwrap();
    store.save(Save::new("a", data(&[]))).await.unwrap();
    store.save(Save::new("b", data(&[]))).await.unwrap();
    let err = store.save(Save::new("c", data(&[]))).await.unwrap_err();
    assert_eq!(err, StoreError::TooManySessions { limit: 2 });
    assert_eq!(
        store
            .save(Save::new("a", data(&[("k", "v")])))
            .await
            .unwrap()
            .version,
        2
    );
    store.destroy("b").await.unwrap();
    store.save(Save::new("c", data(&[]))).await.unwrap();
    assert_eq!(store.stats().live_sessions, 2);
}

#[tokio::test(start_paused = true)]
async fn only_live_sessions_count_against_the_limit_and_in_live_stats() {
    let store = MemorySessionStore::builder()
        .max_sessions(10)
        .sweep_interval(None)
        .build()
        .unwrap();
    for i in 0..10 {
        store
            .save(Save::new(format!("short{i}"), data(&[])).ttl(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    let err = store.save(Save::new("early", data(&[]))).await.unwrap_err();
    assert_eq!(err, StoreError::TooManySessions { limit: 10 });
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(store.live_stats().await.live_sessions, 0, "none is live");

    for i in 0..5 {
        store
            .save(Save::new(format!("gone{i}"), data(&[])).ttl(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    for i in 0..5 {
        store
            .save(Save::new(format!("live{i}"), data(&[])))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // Full with five expired sessions: a new session takes the place of an expired one.
    for i in 0..5 {
        store
            .save(Save::new(format!("new{i}"), data(&[])))
            .await
            .unwrap();
    }
    let err = store
        .save(Save::new("one-more", data(&[])))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooManySessions { limit: 10 });
    assert_eq!(store.live_stats().await.live_sessions, 10);
    for i in 0..5 {
        assert!(store.get(&format!("live{i}")).await.unwrap().is_some());
        assert!(store.get(&format!("new{i}")).await.unwrap().is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn live_stats_agree_with_get_after_touches_and_expiry() {
    let store = store();
    for i in 0..300 {
        store
            .save(Save::new(format!("s{i}"), data(&[])).ttl(Duration::from_secs(10)))
            .await
            .unwrap();
    }
    for i in 0..100 {
        store
            .touch(&format!("s{i}"), Some(Duration::from_secs(60)))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let counted = store.live_stats().await;
    assert_eq!(counted.live_sessions, 100);
    // Counted, not removed: the 200 expired records are still stored, none counted removed.
    assert_eq!(store.stats().live_sessions, 300);
    assert_eq!(counted.expired_removed_total, 0);
    let found = (0..300)
        .filter(|i| store.get_now(&format!("s{i}")).unwrap().is_some())
        .count();
    assert_eq!(found, 100);
    // The reads that found them expired removed them.
    assert_eq!(store.stats().expired_removed_total, 200);
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(store.live_stats().await.live_sessions, 0);
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_removes_expired_records_every_interval() {
    let store = MemorySessionStore::builder()
        .sweep_interval(Some(Duration::from_secs(300)))
        .build()
        .unwrap();
    for i in 0..100 {
        let ttl = Duration::from_secs(if i % 2 == 0 { 60 } else { 3600 });
        store
            .save(Save::new(format!("s{i}"), data(&[])).ttl(ttl))
            .await
            .unwrap();
    }
    assert_eq!(store.stats().sweeps_total, 0);
    tokio::time::advance(Duration::from_secs(301)).await;
    // The sweep yields between shards; wait for it in paused time, which lets the runtime
    // move on as soon as it is otherwise idle.
    while store.stats().sweeps_total == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stats = store.stats();
    assert_eq!(stats.sweeps_total, 1);
    assert_eq!(stats.expired_removed_total, 50);
    assert_eq!(stats.live_sessions, 50);
    assert!(store.get("s1").await.unwrap().is_some());
}

/// On a one-thread runtime, another task must still run while a large sweep is in progress:
/// the sweeper hands the thread back after every shard.
#[tokio::test(start_paused = true)]
async fn requests_are_served_between_shards_of_a_sweep() {
    const SESSIONS: u64 = 20_000;
    let store = MemorySessionStore::builder()
        .sweep_interval(Some(Duration::from_secs(300)))
        .build()
        .unwrap();
    for i in 0..SESSIONS {
        store
            .save_now(Save::new(format!("s{i}"), data(&[])).ttl(Duration::from_secs(60)))
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(301)).await;
    let mut seen_mid_sweep = 0;
    while store.stats().sweeps_total == 0 {
        let live = store.stats().live_sessions;
        if live > 0 && live < SESSIONS {
            seen_mid_sweep += 1;
        }
        // Sleeping, not only yielding, lets paused time move on to the sweeper's pauses.
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    assert_eq!(store.stats().live_sessions, 0);
    assert!(
        seen_mid_sweep > 100,
        "another task ran only {seen_mid_sweep} times during the sweep"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_stops_when_the_store_is_dropped() {
    let store = MemorySessionStore::builder()
        .sweep_interval(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let weak = Arc::downgrade(&store.inner);
    drop(store);
    assert!(weak.upgrade().is_none());
    tokio::time::advance(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn restore_keeps_every_field_and_skips_expired() {
    let store = store();
    let now = store.clock().now();
    let record = SessionRecord {
        id: "r".into(),
        data: data(&[("k", "v")]),
        created_at: now - HOUR,
        expires_at: now + HOUR,
        version: 9,
        owner: Some("user 9".into()),
    };
    assert!(store.restore(record.clone()).unwrap());
    assert_eq!(store.get("r").await.unwrap(), Some(record.clone()));
    let expired = SessionRecord {
        id: "x".into(),
        expires_at: now,
        ..record
    };
    assert!(!store.restore(expired).unwrap());
    let mut seen = Vec::new();
    store.for_each_live(|r| seen.push(r.id));
    assert_eq!(seen, ["r"]);
}

/// An owner a save now refuses (a space at either end) was accepted before that rule: a
/// stored record holding one is restored whole, and is still reached by its owner.
#[tokio::test(start_paused = true)]
async fn a_record_with_an_owner_accepted_before_the_space_rule_is_restored() {
    let store = store();
    let now = store.clock().now();
    let err = store
        .save(Save::new("new", data(&[])).owner(" old"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    let record = SessionRecord {
        id: "r".into(),
        data: data(&[]),
        created_at: now,
        expires_at: now + HOUR,
        version: 1,
        owner: Some(" old".into()),
    };
    assert!(store.restore(record).unwrap());
    assert_eq!(
        store.get("r").await.unwrap().unwrap().owner.as_deref(),
        Some(" old")
    );
    assert_eq!(store.list_by_owner(" old", false).await.unwrap().len(), 1);
    assert_eq!(store.destroy_by_owner(" old", &[]).await.unwrap(), 1);
}

#[test]
fn a_snapshot_never_misses_a_session_moving_to_a_new_id() {
    let store = store();
    let users = 8;
    for user in 0..users {
        store
            .save_now(Save::new(format!("u{user}-0"), data(&[])))
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let movers: Vec<_> = (0..users)
        .map(|user| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // What the session layer does at login: save under a new id, then
                    // destroy the old one.
                    store
                        .save_now(Save::new(format!("u{user}-{}", n + 1), data(&[])))
                        .unwrap();
                    store.destroy_now(&format!("u{user}-{n}")).unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    for _ in 0..50 {
        let (bytes, _) = store.write_snapshot(Vec::new()).unwrap();
        let restored = MemorySessionStore::builder()
            .sweep_interval(None)
            .build()
            .unwrap();
        restored.load_snapshot(&bytes).unwrap();
        let mut found = vec![0; users];
        restored.for_each_live(|record| {
            let user: usize = record.id[1..record.id.find('-').unwrap()].parse().unwrap();
            found[user] += 1;
        });
        assert!(found.iter().all(|&n| n >= 1), "a user vanished: {found:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for mover in movers {
        mover.join().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn snapshots_bring_back_every_field_but_not_expired_sessions() {
    let restored = store();
    let empty = store();
    let store = store();
    store
        .save(Save::new("long", data(&[("k", "v"), ("n", "1")])))
        .await
        .unwrap();
    store
        .save(Save::new("long", data(&[("k", "v2")])))
        .await
        .unwrap();
    store
        .save(Save::new("short", data(&[])).ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    let (bytes, written) = store.write_snapshot(Vec::new()).unwrap();
    assert_eq!(written, 2);

    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(restored.load_snapshot(&bytes).unwrap(), (1, 1));
    let original = store.get("long").await.unwrap().unwrap();
    assert_eq!(restored.get("long").await.unwrap(), Some(original));
    assert_eq!(restored.get("short").await.unwrap(), None);
    assert_eq!(restored.stats().live_sessions, 1);

    let mut damaged = bytes.clone();
    damaged[20] ^= 1;
    assert!(empty.load_snapshot(&damaged).is_err());
    assert_eq!(
        empty.stats().live_sessions,
        0,
        "nothing loaded from a bad snapshot"
    );
}

/// A store's journal, replayed over an empty store, gives the same sessions and owners: every
/// kind of change, in order, and nothing that has expired comes back.
#[tokio::test(start_paused = true)]
async fn a_replayed_journal_gives_the_same_sessions_and_owners() {
    use crate::journal::{Journal, LOG_MAGIC};
    let store = MemorySessionStore::new(Duration::from_secs(3600));
    // Made now, so that its clock moves with the first's.
    let later = MemorySessionStore::new(Duration::from_secs(3600));
    let journal = std::sync::Arc::new(Journal::new());
    store.attach_journal(journal.clone()).unwrap();
    assert!(
        store.attach_journal(journal.clone()).is_err(),
        "one journal"
    );
    let data = |v: &str| -> SessionData { [("k".to_owned(), v.as_bytes().to_vec().into())].into() };
    for i in 0..20 {
        let save = Save::new(format!("s{i}"), data("1")).owner(format!("u{}", i % 3));
        store.save_now(save).unwrap();
    }
    store
        .save_now(Save::new("s1", data("2")).owner("u9"))
        .unwrap();
    store
        .touch_now("s2", Some(Duration::from_secs(60)))
        .unwrap();
    store.touch_now("s3", Some(Duration::from_secs(1))).unwrap();
    assert!(store.destroy_now("s4").unwrap());
    assert_eq!(
        store
            .destroy_by_owner_now("u0", &["s6".to_owned()])
            .unwrap(),
        6
    );
    store
        .save_now(Save::new("short", data("x")).ttl(Duration::from_secs(1)))
        .unwrap();
    // A conflict changes nothing and logs nothing.
    assert!(
        store
            .save_now(Save::new("s1", data("3")).expected_version(1))
            .is_err()
    );
    let (bytes, position) = journal.take(Duration::ZERO).unwrap();
    assert_eq!(position, journal.appended());
    let mut log = LOG_MAGIC.to_vec();
    log.extend(bytes);

    let replayed = MemorySessionStore::new(Duration::from_secs(3600));
    // What a snapshot might hold of a session the log then destroys: gone after the replay.
    replayed.save_now(Save::new("s4", data("old"))).unwrap();
    let outcome = replayed.replay_log(&log).unwrap();
    assert_eq!(outcome.torn_at, None);
    let listed = |store: &MemorySessionStore| {
        let mut all = Vec::new();
        store.for_each_live(|record| all.push(record));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    };
    assert_eq!(listed(&replayed), listed(&store));
    for owner in ["u0", "u1", "u2", "u9"] {
        assert_eq!(
            replayed.list_by_owner_now(owner, true).unwrap(),
            store.list_by_owner_now(owner, true).unwrap(),
            "{owner}"
        );
    }
    // Two seconds on, the sessions given a second to live are gone, on a replay too.
    tokio::time::advance(Duration::from_secs(2)).await;
    later.replay_log(&log).unwrap();
    assert_eq!(later.get_now("s3").unwrap(), None);
    assert_eq!(later.get_now("short").unwrap(), None);
    assert!(later.get_now("s2").unwrap().is_some());
    assert_eq!(listed(&later), listed(&store));
}

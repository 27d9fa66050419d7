//! Fuzz targets: whatever bytes a snapshot file or a stored record holds, and whatever a caller
//! sends, the store answers with a value or an error, never a panic; and what it accepts, it
//! gives back exactly.
//!
//! Each target runs for `GONEST_FUZZ_SECONDS` seconds (default 3) of random cases, so CI runs
//! them briefly and a longer hunt is one command:
//!
//! ```sh
//! GONEST_FUZZ_SECONDS=150 cargo test --release -p gonest-session-core --test fuzz -- --nocapture
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gonest_session_core::codec::{decode_data, encode_data};
use gonest_session_core::{MemorySessionStore, Save, SessionData, SessionRecord, StoreExpiry};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `test` on values of `strategy` until the time is up; panics with the smallest failing
/// case, as proptest shrinks it.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("GONEST_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let config = Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    };
    let mut cases = 0u64;
    while Instant::now() < deadline {
        // A runner runs its number of cases once; each new one draws a new random seed.
        let mut runner = TestRunner::new(config.clone());
        if let Err(err) = runner.run(&strategy, &test) {
            panic!("{name}: {err}");
        }
        cases += 512;
    }
    eprintln!("{name}: {cases} cases in {seconds} s, no failure");
}

fn store() -> MemorySessionStore {
    MemorySessionStore::builder()
        .sweep_interval(None)
        .max_ttl(MemorySessionStore::MAX_TTL_CAP)
        .build()
        .unwrap()
}

/// Loads `bytes` as a snapshot: all or nothing, and whatever loads reads back whole.
fn load(bytes: &[u8]) -> Result<Option<Vec<SessionRecord>>, TestCaseError> {
    let store = store();
    match store.load_snapshot(bytes) {
        Ok((loaded, _)) => {
            let mut records = Vec::new();
            store.for_each_live(|record| records.push(record));
            prop_assert_eq!(
                records.len() as u64,
                loaded,
                "a loaded session does not read back"
            );
            for record in &records {
                let got = store.get_now(&record.id);
                prop_assert!(got.is_ok(), "{got:?}");
                let got = got.unwrap();
                prop_assert_eq!(got.as_ref(), Some(record));
            }
            Ok(Some(records))
        }
        Err(_) => {
            prop_assert_eq!(
                store.stats().live_sessions,
                0,
                "a refused snapshot loaded some"
            );
            Ok(None)
        }
    }
}

fn session_data() -> impl Strategy<Value = SessionData> {
    proptest::collection::hash_map(
        ".{0,12}",
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(bytes::Bytes::from),
        0..6,
    )
}

fn records() -> impl Strategy<Value = Vec<SessionRecord>> {
    let record = (
        "[!-~]{1,40}",
        session_data(),
        // Versions at the edges as often as anywhere.
        prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(0), any::<u64>()],
        0u64..u64::MAX / 2,
        any::<u64>(),
        proptest::option::of("[ -~]{1,40}"),
    )
        .prop_map(
            |(id, data, version, created, expires, owner)| SessionRecord {
                id,
                owner,
                data,
                created_at: UNIX_EPOCH + Duration::from_nanos(created),
                // Live for a while from now, up to far in the future.
                expires_at: SystemTime::now()
                    + Duration::from_secs(3600)
                    + Duration::from_nanos(expires),
                version,
            },
        );
    proptest::collection::vec(record, 0..12)
}

/// A snapshot of `records`, as the store writes it.
fn snapshot_of(records: &[SessionRecord]) -> Vec<u8> {
    let store = store();
    for record in records {
        store.restore(record.clone()).unwrap();
    }
    store.write_snapshot(Vec::new()).unwrap().0
}

#[test]
fn snapshot_decoder_on_random_bytes() {
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    fuzz("snapshot random bytes", bytes, |bytes| {
        load(&bytes)?;
        // The same bytes behind the magic and before a valid checksum reach the record parser.
        let mut framed = b"GNSESS01".to_vec();
        framed.extend_from_slice(&bytes);
        let crc = crc32fast::hash(&framed);
        framed.extend_from_slice(&crc.to_le_bytes());
        load(&framed)?;
        Ok(())
    });
}

#[test]
fn snapshot_decoder_on_damaged_snapshots() {
    let damage = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    fuzz(
        "damaged snapshots",
        (
            records(),
            damage,
            any::<prop::sample::Index>(),
            any::<bool>(),
        ),
        |(records, damage, cut, reseal)| {
            let mut bytes = snapshot_of(&records);
            if damage.is_empty() {
                let back = load(&bytes)?.expect("an undamaged snapshot loads");
                prop_assert_eq!(
                    back.len(),
                    records
                        .iter()
                        .map(|r| &r.id)
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                );
                return Ok(());
            }
            for (at, byte) in damage {
                let at = at.index(bytes.len());
                bytes[at] ^= byte | 1;
            }
            if reseal && bytes.len() > 4 {
                // Damage under a correct checksum: the parser alone must refuse it.
                let end = bytes.len() - 4;
                let crc = crc32fast::hash(&bytes[..end]);
                bytes[end..].copy_from_slice(&crc.to_le_bytes());
            } else {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            load(&bytes)?;
            Ok(())
        },
    );
}

#[test]
fn record_codec_round_trips_and_never_panics() {
    fuzz(
        "record codec",
        (
            session_data(),
            proptest::collection::vec(any::<u8>(), 0..512),
        ),
        |(data, bytes)| {
            prop_assert_eq!(decode_data(&encode_data(&data)).unwrap(), data);
            if let Ok(decoded) = decode_data(&bytes) {
                prop_assert_eq!(decode_data(&encode_data(&decoded)).unwrap(), decoded);
            }
            Ok(())
        },
    );
}

#[test]
fn store_operations_on_any_input() {
    let expiry = prop_oneof![
        Just(StoreExpiry::Default),
        (any::<u64>(), 0u32..1_000_000_000)
            .prop_map(|(s, n)| StoreExpiry::Ttl(Duration::new(s, n))),
        any::<u64>().prop_map(|n| StoreExpiry::At(UNIX_EPOCH + Duration::from_nanos(n))),
    ];
    // An arbitrary id, or one of the restored sessions'.
    let id = prop_oneof![
        ".{0,300}".prop_map(Err),
        any::<prop::sample::Index>().prop_map(Ok),
    ];
    let op = (
        id,
        session_data(),
        proptest::option::of(any::<u64>()),
        expiry,
    );
    fuzz(
        "store operations",
        (records(), proptest::collection::vec(op, 1..16)),
        |(records, ops)| {
            let store = store();
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            for record in records {
                // Any version, even u64::MAX, as a snapshot may hold.
                let _ = store.restore(record);
            }
            for (id, data, expected_version, expiry) in ops {
                let id = match id {
                    Ok(index) if !ids.is_empty() => ids[index.index(ids.len())].clone(),
                    Ok(_) => "none".to_owned(),
                    Err(id) => id,
                };
                let save = Save {
                    id: id.clone(),
                    data,
                    expected_version,
                    expiry,
                    // Any bytes, valid or not, from the same strategy as ids.
                    owner: Some(id.chars().rev().collect()),
                };
                let _ = store.save_now(save.clone());
                let _ = store.save_now(Save {
                    expected_version: None,
                    ..save
                });
                let _ = store.get_now(&id);
                if let StoreExpiry::Ttl(ttl) = expiry {
                    let _ = store.touch_now(&id, Some(ttl));
                }
                let _ = store.destroy_now(&id);
            }
            Ok(())
        },
    );
}

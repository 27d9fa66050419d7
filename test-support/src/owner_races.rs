//! Races between saves and the owner index's clean-ups, for any [`SessionStore`]: once every
//! writer has stopped, each live session with an owner must be listed by `ListByOwner` and
//! destroyed by a fresh `DestroyByOwner`. A session outside its owner's index would escape "log
//! out everywhere" until it expired.

use gonest_session_core::{Save, SessionData, SessionStore};
use tokio::task::JoinSet;

/// Owners the sessions are spread over (each well under the default limit of 1,000 sessions).
const OWNERS: usize = 20;

fn owner(n: usize) -> String {
    format!("owner-{}", n % OWNERS)
}

fn data(n: usize) -> SessionData {
    [("n".to_owned(), n.to_string().into_bytes().into())].into()
}

/// Logins while "your devices" is listed: `sessions` anonymous sessions are saved, then each is
/// given its owner by a save expecting version 1 (through `a`, eight at a time) while every
/// owner is listed over and over (through `b`, which cleans stale ids out of the index as it
/// goes). Afterwards no session escapes its owner.
pub async fn logins_while_listing<S: SessionStore + Clone + 'static>(a: S, b: S, sessions: usize) {
    let ids: Vec<String> = (0..sessions).map(|n| format!("login-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        a.save(Save::new(id.clone(), data(n))).await.unwrap();
    }
    let logins = in_eight_lanes(a.clone(), ids.clone(), 1, |id, n| {
        Save::new(id, data(n)).owner(owner(n)).expected_version(1)
    });
    let listing = {
        let b = b.clone();
        async move {
            let mut lists = 0;
            while !logins.is_finished() {
                for n in 0..OWNERS {
                    b.list_by_owner(&owner(n), false).await.unwrap();
                    lists += 1;
                }
            }
            logins.await.unwrap();
            lists
        }
    };
    let lists = listing.await;
    assert!(lists > 0, "nothing was listed while the logins ran");
    no_session_escapes(&a, &ids).await;
}

/// "Log out everywhere" while sessions are saved again: each of `sessions` sessions is saved
/// with its owner, then saved again unconditionally, over and over (through `a`, eight at a
/// time), while every owner's sessions are destroyed over and over (through `b`). Afterwards no
/// session escapes its owner.
pub async fn saves_while_destroying_by_owner<S: SessionStore + Clone + 'static>(
    a: S,
    b: S,
    sessions: usize,
) {
    let ids: Vec<String> = (0..sessions).map(|n| format!("device-{n}")).collect();
    let save = |n: usize| Save::new(ids[n].clone(), data(n)).owner(owner(n));
    for n in 0..sessions {
        a.save(save(n)).await.unwrap();
    }
    let saves = in_eight_lanes(a.clone(), ids.clone(), 3, |id, n| {
        Save::new(id, data(n)).owner(owner(n))
    });
    let mut destroyed = 0;
    while !saves.is_finished() {
        for n in 0..OWNERS {
            destroyed += b.destroy_by_owner(&owner(n), &[]).await.unwrap();
        }
    }
    saves.await.unwrap();
    assert!(destroyed > 0, "nothing was destroyed while the saves ran");
    no_session_escapes(&a, &ids).await;
}

/// Saves each of `ids` (the `n`th as `save(id, n)`) `rounds` times over, through `store`, eight
/// saves at a time; the handle completes when all have landed.
fn in_eight_lanes<S: SessionStore + Clone + 'static>(
    store: S,
    ids: Vec<String>,
    rounds: usize,
    save: fn(String, usize) -> Save,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running = JoinSet::new();
        for lane in 0..8 {
            let (store, ids) = (store.clone(), ids.clone());
            running.spawn(async move {
                for _round in 0..rounds {
                    for (n, id) in ids.iter().enumerate().skip(lane).step_by(8) {
                        store.save(save(id.clone(), n)).await.unwrap();
                    }
                }
            });
        }
        running.join_all().await;
    })
}

/// Every live session of `ids` is listed by its owner's `ListByOwner`, a fresh `DestroyByOwner`
/// of each owner destroys them all, and none is live after it.
async fn no_session_escapes<S: SessionStore>(store: &S, ids: &[String]) {
    let mut live = Vec::new();
    for id in ids {
        if let Some(record) = store.get(id).await.unwrap() {
            let owner = record.owner.expect("every session here has an owner");
            live.push((owner, record.id));
        }
    }
    let mut unlisted = Vec::new();
    for n in 0..OWNERS {
        let listed: Vec<String> = store
            .list_by_owner(&owner(n), false)
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.id)
            .collect();
        unlisted.extend(
            live.iter()
                .filter(|(o, id)| *o == owner(n) && !listed.contains(id))
                .map(|(_, id)| id.clone()),
        );
    }
    let mut destroyed = 0;
    for n in 0..OWNERS {
        destroyed += store.destroy_by_owner(&owner(n), &[]).await.unwrap();
    }
    let mut escaped = Vec::new();
    for id in ids {
        if store.get(id).await.unwrap().is_some() {
            escaped.push(id.clone());
        }
    }
    assert!(
        unlisted.is_empty() && escaped.is_empty(),
        "of {} live sessions, {} were not listed by their owner ({:?}…) and {} outlived \
         DestroyByOwner ({:?}…)",
        live.len(),
        unlisted.len(),
        unlisted.iter().take(3).collect::<Vec<_>>(),
        escaped.len(),
        escaped.iter().take(3).collect::<Vec<_>>(),
    );
    assert_eq!(
        destroyed,
        live.len() as u64,
        "destroyed each live session once"
    );
}

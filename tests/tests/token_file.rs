//! The example app reads the daemon's own token file, comments and rotation included.

use std::time::Duration;

use gonest_session::{Save, SessionData};
use gonest_session_e2e::Daemon;
use gonest_sessiond::{Config, Tokens};

#[tokio::test]
async fn the_app_uses_the_daemons_token_file_during_a_rotation() {
    let dir = std::env::temp_dir().join(format!("gonest-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessiond.token");
    // The README's rotation: the old token, then the new one, with a comment.
    std::fs::write(
        &path,
        "# rotating: old first, new second\nold-token-0123456789abcdef\n\nnew-token-0123456789abcdef\n",
    )
    .unwrap();
    let daemon = Daemon::start(Config {
        tokens: Tokens::from_file(&path).unwrap(),
        ..Config::default()
    })
    .await;

    let store = example_app::store(&daemon.url(), Duration::from_secs(60), Some(&path), 0)
        .unwrap()
        .shared();
    let saved = store
        .save(Save::new("rotating", SessionData::new()))
        .await
        .unwrap();
    assert_eq!(saved.version, 1);
    assert!(store.get("rotating").await.unwrap().is_some());

    // The app's own file moved on to the new token alone: still accepted.
    let app_file = dir.join("app.token");
    std::fs::write(&app_file, "new-token-0123456789abcdef\n").unwrap();
    let store = example_app::store(&daemon.url(), Duration::from_secs(60), Some(&app_file), 0)
        .unwrap()
        .shared();
    assert!(store.get("rotating").await.unwrap().is_some());

    // A file with no token is refused when the app starts, not at the first request.
    std::fs::write(&app_file, "# nothing yet\n").unwrap();
    let err = example_app::store(&daemon.url(), Duration::from_secs(60), Some(&app_file), 0)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("holds no token"), "{err:#}");

    daemon.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

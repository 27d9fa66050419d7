//! `gonest-sessionctl` against a real daemon on 127.0.0.1:0, with a token.

use std::time::Duration;

use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use gonest_session_test_support::Daemon;
use gonest_sessiond::{Config, Tokens};
use serde_json::{Value, json};

const TOKEN: &str = "ctl-test-token-0123456789abcdef";

struct Run {
    code: i32,
    out: Value,
    err: String,
}

/// Runs the binary with `args` against `daemon` with the token file at `token_file`.
async fn ctl(daemon: &Daemon, token_file: &std::path::Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessionctl"))
        .arg("--addr")
        .arg(daemon.url())
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap(),
        out: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_daemon_with_its_exit_codes() {
    let dir = std::env::temp_dir().join(format!("gonest-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("# the daemon's token\n{TOKEN}\n")).unwrap();
    let daemon = Daemon::start(Config {
        tokens: Tokens::new([TOKEN.to_owned()]),
        ..Config::default()
    })
    .await;
    let store = RemoteSessionStore::builder(daemon.url())
        .auth_token(TOKEN)
        .connect()
        .await
        .unwrap();
    let mut data = SessionData::new();
    data.insert("user_id".into(), b"42".to_vec().into());
    data.insert("raw".into(), vec![0xff, 0x00, 0xfe].into());
    for id in ["device-a", "device-b", "device-c"] {
        store
            .save(
                Save::new(id, data.clone())
                    .owner("user 42")
                    .ttl(Duration::from_secs(600)),
            )
            .await
            .unwrap();
    }

    let run = ctl(&daemon, &token_file, &["get", "device-a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out["id"], "device-a");
    assert_eq!(run.out["owner"], "user 42");
    assert_eq!(run.out["version"], 1);
    assert_eq!(
        run.out["data"],
        json!({"raw": {"base64": "/wD+"}, "user_id": "42"})
    );
    assert!(run.out["expires_at"].as_str().unwrap().ends_with('Z'));

    let run = ctl(&daemon, &token_file, &["list", "--owner", "user 42"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let ids: Vec<&str> = run
        .out
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(run.out[0].get("data").is_none(), "no data in a listing");

    // Every session, with no owner too: page by page, or all at once.
    store
        .save(Save::new("anonymous", SessionData::new()))
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let run = ctl(
            &daemon,
            &token_file,
            &["list", "--limit", "1", "--cursor", &cursor],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.err);
        pages += 1;
        for session in run.out["sessions"].as_array().unwrap() {
            assert!(session.get("data").is_none());
            listed.push(session["id"].as_str().unwrap().to_owned());
        }
        match run.out["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    listed.sort();
    assert_eq!(listed, ["anonymous", "device-a", "device-b", "device-c"]);
    assert!(pages > 1, "listed in pages");
    let run = ctl(&daemon, &token_file, &["list", "--all"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out.as_array().unwrap().len(), 4);
    let run = ctl(&daemon, &token_file, &["list", "--cursor", "nonsense"]).await;
    assert_eq!(run.code, 2);
    assert!(run.err.contains("cursor"), "{}", run.err);
    store.destroy("anonymous").await.unwrap();

    let run = ctl(&daemon, &token_file, &["destroy", "device-c"]).await;
    assert_eq!((run.code, &run.out), (0, &json!({"destroyed": true})));
    let run = ctl(&daemon, &token_file, &["destroy", "device-c"]).await;
    assert_eq!(run.code, 1, "already gone");
    let run = ctl(&daemon, &token_file, &["get", "device-c"]).await;
    assert_eq!(run.code, 1);

    let run = ctl(
        &daemon,
        &token_file,
        &["revoke", "--owner", "user 42", "--except", "device-b"],
    )
    .await;
    assert_eq!((run.code, &run.out), (0, &json!({"destroyed": 1})));
    assert!(store.get("device-a").await.unwrap().is_none());
    assert!(store.get("device-b").await.unwrap().is_some());

    let run = ctl(&daemon, &token_file, &["stats"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out["live_sessions"], 1);
    assert_eq!(run.out["max_session_bytes"], 1 << 20);
    let run = ctl(&daemon, &token_file, &["stats", "--as-stored"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(run.out["live_sessions"], 1);

    // Usage and connection errors: 2, with the reason on stderr.
    let run = ctl(&daemon, &token_file, &["list", "--owner", "u", "--all"]).await;
    assert_eq!(run.code, 2);
    assert!(run.err.contains("--owner"), "{}", run.err);
    let run = ctl(&daemon, &token_file, &["get", "bad id"]).await;
    assert_eq!(run.code, 2);
    assert!(run.err.contains("session id"), "{}", run.err);
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-token-0123456789abcdef\n").unwrap();
    let run = ctl(&daemon, &wrong, &["stats"]).await;
    assert_eq!(run.code, 2);
    assert!(run.err.contains("unauthenticated"), "{}", run.err);
    let addr = daemon.addr;
    daemon.stop().await.unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessionctl"))
        .args([
            "--addr",
            &format!("http://{addr}"),
            "--timeout",
            "1s",
            "stats",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the daemon"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--addr` takes http:// and https:// only, and no error repeats the credentials in it.
#[tokio::test]
async fn other_schemes_are_refused_and_credentials_never_shown() {
    let run = |addr: &'static str| async move {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gonest-sessionctl"))
            .args(["--addr", addr, "--timeout", "1s", "stats"])
            .output()
            .await
            .unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, err) = run("ftp://admin:hunter2@127.0.0.1:7070").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("http:// or https://"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // Nothing listens on port 1: the error names the daemon, without the password.
    let (code, err) = run("http://admin:hunter2@127.0.0.1:1").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

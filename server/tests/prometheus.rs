//! The shipped Prometheus set-up (deploy/prometheus/) against a real daemon: Debian's
//! `prometheus` scrapes it on loopback with the shipped config and rules, and its HTTP API shows
//! the target up, the rules loaded, and the daemon's operations counted; and every query of the
//! Grafana dashboard (deploy/grafana/) runs there and names only metrics the daemon exports.
//!
//! Needs `prometheus` on the PATH (Debian's package of that name; `.ci/run` installs it).

#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Process;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr` over HTTP/1.1; the status line and the body, or `None` if nothing
/// listens yet.
async fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// The `data` of a Prometheus API answer once `ready` accepts it, asked every 200 ms for up
/// to 60 s.
async fn api(
    addr: &str,
    path: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((status, body)) = http_get(addr, path).await
            && status.contains(" 200")
        {
            // Chunked or not, the JSON is the one object in the body.
            let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
            if let Ok(answer) = serde_json::from_str::<serde_json::Value>(json) {
                if ready(&answer["data"]) {
                    return answer["data"].clone();
                }
                last = Some(answer);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never answered {path} as expected; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `text` with every byte but letters and digits percent-encoded, for a URL's query.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon_with_the_shipped_config_and_rules() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Process::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ])
    .await;
    let metrics_addr = daemon.metrics_addr();
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    for i in 0..5 {
        store
            .save(Save::new(format!("p{i}"), SessionData::new()))
            .await
            .unwrap();
        store.get(&format!("p{i}")).await.unwrap();
    }

    // The shipped config, with this daemon as its target and a 1 s interval (15 s shipped).
    let config = std::fs::read_to_string(shipped.join("prometheus.yml"))
        .unwrap()
        .replace("sessiond:9090", &metrics_addr)
        .replace("15s", "1s");
    assert!(config.contains(&metrics_addr), "the shipped target moved");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        shipped.join("gonest-sessiond.rules.yml"),
        dir.path().join("gonest-sessiond.rules.yml"),
    )
    .unwrap();
    // Prometheus cannot say which port it took for :0: take one the OS gives, and free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = format!("127.0.0.1:{port}");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("`prometheus` must be installed (Debian: apt-get install prometheus)");

    let targets = api(&web, "/api/v1/targets", |data| {
        data["activeTargets"][0]["health"] == "up"
    })
    .await;
    let target = &targets["activeTargets"][0];
    assert_eq!(target["labels"]["job"], "gonest-sessiond");
    assert_eq!(target["labels"]["instance"], metrics_addr.as_str());

    let rules = api(&web, "/api/v1/rules", |data| {
        data["groups"][0]["rules"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    assert_eq!(rules["groups"][0]["name"], "gonest-sessiond");
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect();
    for alert in [
        "GonestSessiondDown",
        "GonestSessiondLogFailing",
        "GonestSessiondErrorRatioHigh",
    ] {
        assert!(names.contains(&alert), "{names:?}");
    }
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // The five saves, counted by the daemon and stored by Prometheus.
    let query =
        "/api/v1/query?query=sum(gonest_sessiond_operations_total%7Bmethod%3D%22save%22%7D)";
    let saved = api(&web, query, |data| {
        data["result"][0]["value"][1].as_str() == Some("5")
    })
    .await;
    assert_eq!(saved["resultType"], "vector");

    // The dashboard: every metric it names is scraped, and every query is valid PromQL.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shipped.join("../grafana/dashboards/gonest-sessiond.json"))
            .unwrap(),
    )
    .unwrap();
    let exported = api(&web, "/api/v1/label/__name__/values", |data| {
        data.as_array()
            .is_some_and(|names| names.iter().any(|n| n == "gonest_sessiond_live_sessions"))
    })
    .await;
    let exported: Vec<&str> = exported
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|name| name.as_str())
        .collect();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let named = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("gonest_sessiond_"));
            for name in named {
                assert!(
                    exported.contains(&name),
                    "panel {} uses {name}, which the daemon does not export: {exported:?}",
                    panel["title"]
                );
            }
            let query = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            let path = format!("/api/v1/query?query={}", percent_encoded(&query));
            let answer = api(&web, &path, |data| data["resultType"].is_string()).await;
            assert!(answer["result"].is_array(), "{expr}: {answer}");
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries}");

    // The README's Metrics section names every metric the daemon exports.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let listed = &readme[readme.find("## Metrics").unwrap()..];
    for name in exported
        .iter()
        .filter_map(|n| n.strip_prefix("gonest_sessiond_"))
    {
        let name = ["_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            listed.contains(&format!("`{name}")),
            "the README does not list {name}"
        );
    }

    prometheus.kill().await.unwrap();
    drop(store);
    let (status, _) = daemon.terminate().await;
    assert!(status.success());
}

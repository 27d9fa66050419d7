//! The bench against a daemon on port 0 for about a second, so the tool keeps working.

use std::process::Output;

use gonest_session_test_support::Daemon;
use tokio::net::TcpListener;
use tokio::process::Command;

/// A short `throughput` load: enough operations to measure, over in about a second a target.
const SHORT_LOAD: [&str; 6] = ["--clients", "4", "--keys", "100", "--duration", "1s"];

async fn daemon() -> Daemon {
    Daemon::start(gonest_sessiond::Config::default()).await
}

async fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gonest-session-bench"))
        .args(args)
        .output()
        .await
        .unwrap()
}

/// The standard output of a run that must have succeeded.
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The result line of target `name` (`sessiond`, `redis-store`, `redis`).
fn target_line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"))
}

/// Runs the bench with `args`, and `--reverse` when asked; checks that the result lines of
/// `names` (given in their usual order) came in that order, or the opposite one when reversed.
/// Returns the output.
async fn bench_in_order(mut args: Vec<&str>, reverse: bool, names: &[&str]) -> String {
    if reverse {
        args.push("--reverse");
    }
    let stdout = succeeded(&bench(&args).await);
    let at: Vec<usize> = names
        .iter()
        .map(|name| stdout.find(target_line(&stdout, name)).unwrap())
        .collect();
    let in_order = if reverse {
        at.iter().rev().is_sorted()
    } else {
        at.is_sorted()
    };
    assert!(in_order, "reverse: {reverse}: {stdout}");
    stdout
}

fn figure(line: &str, label: &str) -> f64 {
    let rest = &line[line.find(label).unwrap() + label.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_runs_against_the_daemon() {
    let daemon = daemon().await;
    let url = daemon.url();
    let mut args = vec!["throughput", "--sessiond", &url, "--mix", "get:50,save:50"];
    args.extend(SHORT_LOAD);
    let output = bench(&args).await;
    let stdout = succeeded(&output);
    let line = target_line(&stdout, "sessiond");
    assert!(figure(line, "ops/s:") > 100.0, "{line}");
    assert!(figure(line, "p50:") > 0.0, "{line}");
    assert_eq!(figure(line, "errors:"), 0.0, "{line}");
}

/// The three Redis-side targets in one run: the daemon on Redis, `RedisSessionStore`, raw Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_runs_the_daemon_on_redis_the_redis_store_and_redis_in_one_run() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let daemon = Daemon::start(gonest_sessiond::Config {
        backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
        ..gonest_sessiond::Config::default()
    })
    .await;
    let (url, redis_url) = (daemon.url(), redis.url());
    for reverse in [false, true] {
        let mut args = vec![
            "throughput",
            "--sessiond",
            &url,
            "--redis-store",
            &redis_url,
            "--redis",
            &redis_url,
        ];
        args.extend(SHORT_LOAD);
        let names = ["sessiond", "redis-store", "redis"];
        let stdout = bench_in_order(args, reverse, &names).await;
        for name in names {
            let line = target_line(&stdout, name);
            assert!(figure(line, "ops/s:") > 100.0, "{line}");
            assert_eq!(figure(line, "errors:"), 0.0, "{line}");
        }
        for ratio in [
            "ratio sessiond/redis ops/s:",
            "ratio redis-store/redis ops/s:",
        ] {
            assert!(stdout.contains(ratio), "{ratio} in {stdout}");
        }
    }
}

/// `example-app` on a daemon against `tower-sessions-app` on Redis, both routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_compares_example_app_with_the_tower_sessions_app() {
    let daemon = Daemon::start(gonest_sessiond::Config {
        // Every login is user 42's: no limit on one owner's sessions.
        max_sessions_per_owner: 0,
        ..gonest_sessiond::Config::default()
    })
    .await;
    let store = example_app::store(
        &daemon.url(),
        std::time::Duration::from_secs(600),
        None,
        10_000,
    )
    .unwrap();
    let app = example_app::app(store.shared(), gonest_session::SessionOptions::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let redis = gonest_session_test_support::RedisServer::start_primary().await;
    let peer_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut peer = Command::new(env!("CARGO_BIN_EXE_tower-sessions-app"))
        .args(["--listen", &format!("127.0.0.1:{peer_port}")])
        .args(["--redis", &format!("redis://127.0.0.1:{}", redis.port())])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(peer.stderr.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap_or_default();
        assert!(line.contains("listening"), "{line}");
    }
    let theirs = format!("http://127.0.0.1:{peer_port}");
    for (route, reverse) in [("profile", false), ("login", true)] {
        let args = vec![
            "http",
            "--ours",
            &ours,
            "--theirs",
            &theirs,
            "--route",
            route,
            "--clients",
            "4",
            "--duration",
            "1s",
        ];
        let names = ["ours", "theirs"];
        let stdout = bench_in_order(args, reverse, &names).await;
        for name in names {
            let line = target_line(&stdout, name);
            assert!(figure(line, "req/s:") > 10.0, "{route}: {line}");
            assert_eq!(figure(line, "errors:"), 0.0, "{route}: {line}");
        }
        assert!(stdout.contains("ratio ours/theirs req/s:"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reports_bytes_per_session() {
    let daemon = daemon().await;
    let url = daemon.url();
    let output = bench(&[
        "memory",
        "--sessiond",
        &url,
        "--sessions",
        "2000",
        "--size",
        "256",
    ])
    .await;
    let stdout = succeeded(&output);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("sessiond") && l.contains("bytes per session:")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_compares_latency_during_and_without_a_sweep() {
    let daemon = Daemon::start(gonest_sessiond::Config {
        sweep_interval: std::time::Duration::from_secs(1),
        ..gonest_sessiond::Config::default()
    })
    .await;
    let url = daemon.url();
    let output = bench(&[
        "sweep",
        "--sessiond",
        &url,
        "--sessions",
        "5000",
        "--size",
        "256",
        "--ttl",
        "2s",
        "--rounds",
        "1",
        "--clients",
        "8",
        "--keys",
        "100",
        "--after",
        "1s",
        "--wait",
        "30s",
    ])
    .await;
    let stdout = succeeded(&output);
    assert!(
        stdout.contains("round 1: stored them in") && stdout.contains("the daemon removed them"),
        "{stdout}"
    );
    for label in ["during", "without"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {stdout}"));
        assert!(figure(line, "p99:") > 0.0, "{line}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ratio p99 during/without sweep: ") && figure(last, "sweep:") > 0.0,
        "{stdout}"
    );
}

#[tokio::test]
async fn an_absent_redis_gets_instructions() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let output = bench(&[
        "throughput",
        "--redis",
        &format!("redis://127.0.0.1:{port}"),
        "--duration",
        "1s",
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install redis-server"), "{stderr}");
    assert!(
        stderr.contains("redis-server --port 6379 --save ''"),
        "{stderr}"
    );
}

/// `compare` runs A and B in turn, the order alternating, and prints B's figures as ratios to
/// A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_two_targets_in_turn_and_prints_the_ratios() {
    let (first, second) = (daemon().await, daemon().await);
    let (a, b) = (first.url(), second.url());
    let mut args = vec!["compare", "--a", &a, "--b", &b, "--pairs", "2"];
    args.extend(SHORT_LOAD);
    let stdout = succeeded(&bench(&args).await);
    let runs: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("pair") && line.contains("ops/s:"))
        .map(|line| line.split(':').next().unwrap())
        .collect();
    assert_eq!(
        runs,
        ["pair  1 A", "pair  1 B", "pair  2 B", "pair  2 A"],
        "{stdout}"
    );
    for run in stdout
        .lines()
        .filter(|line| line.starts_with("pair") && line.contains("ops/s:"))
    {
        assert_eq!(figure(run, "errors:"), 0.0, "{run}");
    }
    for name in ["ops/s:", "p50:", "server CPU per op:"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("ratio B/A {name}")))
            .unwrap_or_else(|| panic!("no {name} ratio in {stdout}"));
        let ratio = figure(line, name);
        assert!(ratio > 0.0 && ratio.is_finite(), "{line}");
        assert!(line.contains("standard error"), "{line}");
    }
}

#[tokio::test]
async fn bad_flags_are_refused_clearly() {
    let output = bench(&["throughput", "--mix", "get:90,save:20"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("add up to 100"));
    let output = bench(&["throughput"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--sessiond"));
    let output = bench(&["compare", "--a", "x", "--b", "y", "--pairs", "1"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 2"));
}

/// `invalidation` on two daemons sharing one Redis: every probe's invalidation arrives on the
/// other daemon's `Track` stream (none missed), and the load ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_times_each_probe_across_two_daemons_on_one_redis() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let on_redis = || gonest_sessiond::Config {
        backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
        ..gonest_sessiond::Config::default()
    };
    let (one, two) = (
        Daemon::start(on_redis()).await,
        Daemon::start(on_redis()).await,
    );
    let (via, watch) = (one.url(), two.url());
    let output = bench(&[
        "invalidation",
        "--sessiond",
        &via,
        "--watch",
        &watch,
        "--samples",
        "50",
        "--every",
        "2ms",
        "--trackers",
        "2",
        "--clients",
        "4",
        "--keys",
        "100",
    ])
    .await;
    let stdout = succeeded(&output);
    let load = stdout
        .lines()
        .find(|l| l.starts_with("load "))
        .unwrap_or_else(|| panic!("no load line in {stdout}"));
    assert!(figure(load, "ops/s:") > 0.0, "{load}");
    assert!(load.contains("errors: 0"), "{load}");
    let probes = stdout.lines().last().unwrap_or_default();
    assert!(
        probes.starts_with("invalidation after the save's answer: p50 ")
            && probes.contains("(50 probes;")
            && probes.contains("; 0 missed;"),
        "{stdout}"
    );
}

//! `http`: the same request against two web apps, end to end through their session stores.
//!
//! Each caller holds one HTTP/1.1 keep-alive connection and sends its next request when the
//! last is answered, as wrk does. For `profile`, each caller logs in once first and then sends
//! its session cookie with every request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::cli::{HttpArgs, Route};
use crate::procfs::Process;
use crate::report::{CpuUse, Outcome, histogram};

pub(crate) async fn run(args: HttpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be positive");
    let mut apps: Vec<(&'static str, &str, Option<u16>)> = [
        ("ours", args.ours.as_deref(), args.ours_store),
        ("theirs", args.theirs.as_deref(), args.theirs_store),
    ]
    .into_iter()
    .filter_map(|(name, url, store)| Some((name, url?, store)))
    .collect();
    anyhow::ensure!(
        !apps.is_empty(),
        "name an app: --ours URL and/or --theirs URL"
    );
    println!(
        "http: {} callers, {}, {} per app",
        args.clients,
        match args.route {
            Route::Profile => "GET /profile with a session",
            Route::Login => "POST /login without a cookie",
        },
        humantime::format_duration(args.duration)
    );
    if args.reverse {
        apps.reverse();
    }
    let mut outcomes = Vec::new();
    for (name, url, store) in apps {
        let outcome = run_one(name, url, store, &args).await?;
        println!("{}", outcome.line().replacen(" ops/s:", " req/s:", 1));
        if let Some(cpu) = &outcome.cpu {
            println!("{}", cpu.line(name).replacen("per op", "per request", 1));
        }
        outcomes.push(outcome);
    }
    let named = |name| outcomes.iter().find(|outcome| outcome.name == name);
    if let (Some(ours), Some(theirs)) = (named("ours"), named("theirs")) {
        println!(
            "ratio ours/theirs req/s: {:.2}",
            ours.ops_per_second() / theirs.ops_per_second()
        );
        println!(
            "ratio ours/theirs p50: {:.2}",
            ours.p50_ms() / theirs.p50_ms()
        );
    }
    Ok(())
}

/// `http://host:port` as a socket address and the `Host` header.
fn address(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let authority = url
        .strip_prefix("http://")
        .context("an app URL is http://host:port")?
        .trim_end_matches('/');
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    Ok((address, authority.to_owned()))
}

async fn run_one(
    name: &'static str,
    url: &str,
    store: Option<u16>,
    args: &HttpArgs,
) -> anyhow::Result<Outcome> {
    let (address, host) = address(url)?;
    let port = address.port();
    let mut callers = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        callers.push(
            Caller::connect(address, &host, args.route)
                .await
                .with_context(|| format!("cannot reach the app at {url}"))?,
        );
    }
    let servers: Vec<Process> = [Some(port), store]
        .into_iter()
        .flatten()
        .filter_map(Process::listening_on)
        .collect();
    let me = Process::this();
    let server_cpu = |servers: &[Process]| -> Option<Duration> {
        servers
            .iter()
            .map(Process::cpu_time)
            .sum::<Option<Duration>>()
    };
    let before = (server_cpu(&servers), me.cpu_time());
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| tokio::spawn(async move { caller.run(deadline).await }))
        .collect();
    let mut outcome = Outcome::new(name, 0, 0.0);
    for task in tasks {
        let (ok, errors, latency) = task.await?;
        outcome.ops += ok;
        outcome.errors += errors;
        outcome.latency.add(&latency)?;
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    let per_request = |before: Option<Duration>, after: Option<Duration>| {
        let used = after?.checked_sub(before?)?;
        Some(used.as_secs_f64() * 1e6 / outcome.ops.max(1) as f64)
    };
    outcome.cpu = per_request(before.1, me.cpu_time()).map(|client| CpuUse {
        server: per_request(before.0, server_cpu(&servers))
            .filter(|_| !servers.is_empty())
            .map(|micros| {
                let cpus = servers
                    .iter()
                    .map(|s| s.cpus().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("+");
                (servers[0].pid(), micros, cpus)
            }),
        client: (client, me.cpus().unwrap_or_default()),
    });
    Ok(outcome)
}

/// One caller: a keep-alive connection to the app, and its session cookie for `profile`.
struct Caller {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
    route: Route,
    cookie: Option<String>,
}

impl Caller {
    async fn connect(address: SocketAddr, host: &str, route: Route) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(connection);
        let mut caller = Self {
            sender,
            host: host.to_owned(),
            route,
            cookie: None,
        };
        if route == Route::Profile {
            let (status, cookie) = caller.send("POST", "/login").await?;
            anyhow::ensure!(status.is_success(), "POST /login answered {status}");
            caller.cookie = Some(cookie.context("POST /login set no cookie")?);
        }
        Ok(caller)
    }

    /// Sends one request and reads the whole answer: its status and the cookie it sets.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
    ) -> anyhow::Result<(hyper::StatusCode, Option<String>)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Empty::new())?)
            .await?;
        let status = response.status();
        // "name=value" of the first Set-Cookie, without its attributes.
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::to_owned);
        response.into_body().collect().await?;
        Ok((status, cookie))
    }

    /// Repeats the route until `deadline`: answered requests, failed ones, and latency.
    async fn run(&mut self, deadline: Instant) -> (u64, u64, hdrhistogram::Histogram<u64>) {
        let (method, path) = match self.route {
            Route::Profile => ("GET", "/profile"),
            Route::Login => ("POST", "/login"),
        };
        let (mut ok, mut errors, mut latency) = (0, 0, histogram());
        while Instant::now() < deadline {
            let begun = Instant::now();
            match self.send(method, path).await {
                Ok((status, _)) if status.is_success() => {
                    ok += 1;
                    let micros = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(micros.max(1));
                }
                Ok(_) => errors += 1,
                // The connection is gone: this caller stops.
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        (ok, errors, latency)
    }
}

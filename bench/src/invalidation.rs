//! `invalidation`: how long after a write is acknowledged its invalidation reaches a `Track`
//! stream (what bounds a logged-out session living on in another instance's near cache),
//! while the usual get/save load runs against the same daemon.
//!
//! A probe thread, with a runtime of its own so that the load's tasks do not queue ahead of it,
//! saves one probe session every `--every` through the daemon and times, for each, from the
//! save's answer to the arrival of its invalidation on a `Track` stream it holds open on
//! `--watch` (the same daemon by default; another daemon on the same Redis measures the relay).
//! An invalidation that arrives before the save's answer counts as 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use gonest_session_proto::pb;
use gonest_session_proto::pb::session_store_client::SessionStoreClient;

use crate::InvalidationArgs;
use crate::report::{histogram, millis};
use crate::target::{self, Lifetime, Target, Walk, session_id};

/// Lifetime of the sessions the load writes.
const TTL: Duration = Duration::from_secs(3600);

/// How long a probe waits for its invalidation before it counts as missed.
const MISSED_AFTER: Duration = Duration::from_secs(2);

pub(crate) async fn run(args: InvalidationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.samples > 0 && args.load.keys > 0,
        "--samples and --keys must be positive"
    );
    let target = Target::sessiond(&args.sessiond, args.load.streams, args.load.near_cache).await?;
    let value = gonest_session_core::Bytes::from(vec![b'x'; args.size]);
    target::fill(
        &target,
        args.load.keys,
        session_id,
        &value,
        Lifetime::Ttl(TTL),
        args.load.clients.clamp(1, 64),
    )
    .await?;
    let watch = args.watch.clone().unwrap_or_else(|| args.sessiond.clone());
    println!(
        "invalidation: {} probe saves through {}, one every {}, watched on {}; load: {}",
        args.samples,
        args.sessiond,
        humantime::format_duration(args.every),
        watch,
        load_line(&args)
    );

    // Other near caches: Track streams that only read, each sent every change.
    let mut others = Vec::new();
    for _ in 0..args.trackers {
        let mut stream = open_track(&watch).await?;
        others.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }

    let server =
        crate::throughput::port_of(&args.sessiond).and_then(crate::procfs::Process::listening_on);
    let cpu_before = server.as_ref().and_then(|server| server.cpu_time());
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..args.load.clients)
        .map(|client| {
            let mut target = target.clone();
            let value = value.clone();
            let stop = stop.clone();
            let (keys, mix) = (args.load.keys, args.load.mix);
            tokio::spawn(async move {
                let (mut ops, mut errors) = (0u64, 0u64);
                let mut walk = Walk::new(client, keys, mix);
                while !stop.load(Ordering::Relaxed) {
                    let (key, is_get) = walk.next_op();
                    match target.get_or_save(&key, is_get, &value, TTL).await {
                        Ok(()) => ops += 1,
                        Err(_) => errors += 1,
                    }
                }
                (ops, errors)
            })
        })
        .collect();

    let started = Instant::now();
    let probe_args = args.clone();
    let probe = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the probe's runtime")?
            .block_on(probe(probe_args, watch))
    });
    let probed = tokio::task::spawn_blocking(move || probe.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    stop.store(true, Ordering::Relaxed);
    let (mut ops, mut errors) = (0, 0);
    for caller in callers {
        let (done, failed) = caller.await?;
        ops += done;
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = server
        .as_ref()
        .and_then(|server| server.cpu_time())
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    for other in others {
        other.abort();
    }
    let probed = probed?;
    let latency = &probed.latency;
    let per_op = cpu.map_or_else(
        || "unknown (not a local process)".to_owned(),
        |cpu| format!("{:.2} µs", cpu.as_secs_f64() * 1e6 / ops.max(1) as f64),
    );
    println!(
        "load      ops/s: {:>10.0}  errors: {errors}  server CPU per op: {per_op}  (with {} more \
         Track streams open)",
        ops as f64 / seconds,
        args.trackers
    );
    println!(
        "invalidation after the save's answer: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max \
         {:.3} ms  ({} probes; {} before the answer; {} missed; {} flushes)",
        millis(latency.value_at_quantile(0.5)),
        millis(latency.value_at_quantile(0.9)),
        millis(latency.value_at_quantile(0.99)),
        millis(latency.max()),
        latency.len(),
        probed.early,
        probed.missed,
        probed.flushes
    );
    Ok(())
}

/// The load, for the first line: `50 clients, 1024 byte values, 10000 keys, get:90 save:10`.
fn load_line(args: &InvalidationArgs) -> String {
    format!(
        "{} clients, {} byte values, {} keys, get:{} save:{}",
        args.load.clients,
        args.size,
        args.load.keys,
        args.load.mix.get,
        100 - args.load.mix.get
    )
}

/// What the probe measured.
struct Probed {
    /// From a save's answer to its invalidation, in µs (0: the invalidation came first).
    latency: hdrhistogram::Histogram<u64>,
    early: u64,
    missed: u64,
    flushes: u64,
}

/// When each probe's invalidation arrived, as the stream reader records them.
#[derive(Default)]
struct Arrivals {
    seen: HashMap<String, Instant>,
    flushes: u64,
    /// When the last flush arrived: a flush invalidates every probe waiting.
    flushed: Option<Instant>,
}

async fn probe(args: InvalidationArgs, watch: String) -> anyhow::Result<Probed> {
    let writer = RemoteSessionStore::builder(args.sessiond.as_str())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach gonest-sessiond at {}", args.sessiond))?;
    let mut stream = open_track(&watch).await?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let arrived_any = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let arrivals = arrivals.clone();
        let arrived_any = arrived_any.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let now = Instant::now();
                let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                if message.flush {
                    arrivals.flushes += 1;
                    arrivals.flushed = Some(now);
                }
                for invalidation in message.invalidations {
                    if invalidation.id.starts_with("probe-") {
                        arrivals.seen.insert(invalidation.id, now);
                    }
                }
                arrived_any.notify_waiters();
            }
        })
    };

    let mut probed = Probed {
        latency: histogram(),
        early: 0,
        missed: 0,
        flushes: 0,
    };
    let mut ticks = tokio::time::interval(args.every);
    for n in 0..args.samples {
        ticks.tick().await;
        let id = format!("probe-{n}");
        let sent = Instant::now();
        writer
            .save(Save::new(id.as_str(), SessionData::new()).ttl(Duration::from_secs(60)))
            .await
            .context("a probe save failed")?;
        let answered = Instant::now();
        let arrived = loop {
            let notified = arrived_any.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = arrivals.seen.get(&id) {
                    break Some(*at);
                }
                if let Some(at) = arrivals.flushed.filter(|at| *at >= sent) {
                    break Some(at);
                }
            }
            let left = MISSED_AFTER.saturating_sub(answered.elapsed());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                break None;
            }
        };
        match arrived {
            Some(at) if at <= answered => {
                probed.early += 1;
                probed.latency.record(0)?;
            }
            Some(at) => {
                let micros = u64::try_from(at.duration_since(answered).as_micros())?;
                probed.latency.record(micros.max(1))?;
            }
            None => probed.missed += 1,
        }
        arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .remove(&id);
    }
    reader.abort();
    probed.flushes = arrivals.lock().unwrap_or_else(|p| p.into_inner()).flushes;
    Ok(probed)
}

/// A `Track` stream on `url`, past its first message; retried for 5 s (a daemon on Redis
/// refuses until its relay is live).
async fn open_track(url: &str) -> anyhow::Result<tonic::Streaming<pb::TrackResponse>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let mut client = SessionStoreClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.track(pb::TrackRequest {}).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                stream
                    .message()
                    .await?
                    .context("the Track stream ended at once")?;
                return Ok(stream);
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => anyhow::bail!("{url} does not track: {status}"),
        }
    }
}

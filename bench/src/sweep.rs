//! `sweep`: Get latency while the daemon sweeps many expired sessions, against Get latency
//! without a sweep, measured in one run.
//!
//! A get/save load runs over `--keys` live sessions the whole time. In each round the bench
//! stores `--sessions` more that all expire at one moment, `--ttl` after it starts storing them,
//! then, once they have expired, times one `Stats` (which counts the live sessions without
//! removing any), and polls the daemon's counters as they stand every 10 ms to see when its
//! sweeper (start the daemon with a short `--sweep-interval`) starts removing them and when it
//! has removed them all. Every operation's start and latency are kept, so afterwards each
//! Get is counted as during a sweep (it started inside that round's window), during a fill (left
//! out: storing a million sessions is load of its own) or without either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use gonest_session_client::RemoteSessionStore;
use indicatif::{ProgressBar, ProgressStyle};

use crate::SweepArgs;
use crate::report::Outcome;
use crate::target::{self, Lifetime, Target, Walk, expiring_id, session_id};

/// Lifetime of the sessions the load reads and writes.
const LIVE_TTL: Duration = Duration::from_secs(3600);
/// How often the daemon's counters are read.
const POLL: Duration = Duration::from_millis(10);
/// The load runs this long before the first round: connections and caches warm up, and what
/// happens then is left out.
const WARM_UP: Duration = Duration::from_secs(1);

/// One operation: when it started, after the load began, and how long it took, in µs.
#[derive(Clone, Copy)]
struct Sample {
    start: u32,
    micros: u32,
    is_get: bool,
}

/// A span of the run, in µs after the load began.
type Span = (u32, u32);

pub(crate) async fn run(args: SweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.load.clients > 0 && args.load.keys > 0 && args.sessions > 0 && args.rounds > 0,
        "--clients, --keys, --sessions and --rounds must be positive"
    );
    anyhow::ensure!(
        args.load.mix.get > 0,
        "--mix must have gets: their latency is measured"
    );
    let target = Target::sessiond(&args.sessiond, args.load.streams, args.load.near_cache).await?;
    // Stats counts the live sessions, reading through the shards that hold expired ones.
    let monitor = RemoteSessionStore::builder(args.sessiond.as_str())
        .timeout(args.wait)
        .connect()
        .await
        .with_context(|| format!("cannot reach gonest-sessiond at {}", args.sessiond))?;
    println!(
        "sweep: {} rounds of {} sessions of {} bytes expiring {} after they start being stored; \
         load of {} clients on {} other sessions, get:{} save:{}",
        args.rounds,
        args.sessions,
        args.size,
        humantime::format_duration(args.ttl),
        args.load.clients,
        args.load.keys,
        args.load.mix.get,
        100 - args.load.mix.get
    );
    let value = gonest_session_core::Bytes::from(vec![b'x'; args.size]);
    target::fill(
        &target,
        args.load.keys,
        session_id,
        &value,
        Lifetime::Ttl(LIVE_TTL),
        64,
    )
    .await?;

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..args.load.clients)
        .map(|client| {
            let mut target = target.clone();
            let value = value.clone();
            let stop = stop.clone();
            let (keys, mix) = (args.load.keys, args.load.mix);
            tokio::spawn(async move {
                let (mut samples, mut errors) = (Vec::new(), 0u64);
                let mut walk = Walk::new(client, keys, mix);
                while !stop.load(Ordering::Relaxed) {
                    let (key, is_get) = walk.next_op();
                    let begun = Instant::now();
                    let result = target.get_or_save(&key, is_get, &value, LIVE_TTL).await;
                    match result {
                        Ok(()) => samples.push(Sample {
                            start: micros(begun.duration_since(started)),
                            micros: micros(begun.elapsed()).max(1),
                            is_get,
                        }),
                        Err(_) => errors += 1,
                    }
                }
                (samples, errors)
            })
        })
        .collect();

    let rounds = rounds(&target, &monitor, &args, &value, started).await;
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut errors) = (Vec::new(), 0);
    for caller in callers {
        let (some, failed) = caller.await?;
        samples.extend(some);
        errors += failed;
    }
    let (fills, sweeps) = rounds?;
    let ended = micros(started.elapsed());
    report(&samples, errors, &fills, &sweeps, ended)
}

/// Runs the rounds; returns the spans of the fills and of the sweeps.
async fn rounds(
    target: &Target,
    monitor: &RemoteSessionStore,
    args: &SweepArgs,
    value: &gonest_session_core::Bytes,
    started: Instant,
) -> anyhow::Result<(Vec<Span>, Vec<Span>)> {
    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid"));
    tokio::time::sleep(WARM_UP).await;
    let (mut fills, mut sweeps) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        progress.set_message(format!("round {round}: storing sessions to expire"));
        let before = monitor.stats_as_stored().await?;
        let filling = Instant::now();
        let expires_at = SystemTime::now() + args.ttl;
        target::fill(
            target,
            args.sessions,
            expiring_id,
            value,
            Lifetime::Until(expires_at),
            64,
        )
        .await?;
        anyhow::ensure!(
            SystemTime::now() < expires_at,
            "storing the sessions took {:.1} s, longer than --ttl; give a longer --ttl",
            filling.elapsed().as_secs_f64()
        );
        fills.push((
            micros(filling.duration_since(started)),
            micros(started.elapsed()),
        ));
        // Stats right after they expired, before the sweeper has removed them.
        let expired = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(expired + Duration::from_millis(50)).await;
        let asked = Instant::now();
        let counted = monitor.stats().await?;
        let answered = asked.elapsed();
        let removed_meanwhile =
            expired_removed(&monitor.stats_as_stored().await?)? - expired_removed(&before)?;
        println!(
            "round {round}: Stats with {} sessions just expired answered in {:.1} ms \
             (live_sessions {}, {} of them removed by then)",
            args.sessions,
            answered.as_secs_f64() * 1e3,
            counted.live_sessions.unwrap_or(0),
            removed_meanwhile
        );
        progress.set_message(format!("round {round}: waiting for the sweep"));
        let sweep = watch(monitor, args, expired_removed(&before)?, started, &progress).await?;
        println!(
            "round {round}: stored them in {:.1} s; the daemon removed them in {:.2} s (seen \
             from here, to within {} ms)",
            f64::from(fills[round - 1].1 - fills[round - 1].0) / 1e6,
            f64::from(sweep.1 - sweep.0) / 1e6,
            POLL.as_millis()
        );
        sweeps.push(sweep);
    }
    progress.set_message("load after the last sweep");
    tokio::time::sleep(args.after).await;
    progress.finish_and_clear();
    Ok((fills, sweeps))
}

/// Polls the daemon's counters until it has removed `args.sessions` more expired sessions than
/// `removed_before`. Returns the span from just before the last poll that saw none of them
/// removed to the first poll that saw all of them removed.
async fn watch(
    monitor: &RemoteSessionStore,
    args: &SweepArgs,
    removed_before: u64,
    started: Instant,
    progress: &ProgressBar,
) -> anyhow::Result<Span> {
    let deadline = Instant::now() + args.wait;
    let mut quiet_since = Instant::now();
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon did not remove the expired sessions within {}; was it started with a \
             --sweep-interval shorter than that?",
            humantime::format_duration(args.wait)
        );
        tokio::time::sleep(POLL).await;
        progress.tick();
        let sent = Instant::now();
        let removed = expired_removed(&monitor.stats_as_stored().await?)? - removed_before;
        if removed == 0 {
            quiet_since = sent;
        } else if removed >= args.sessions as u64 {
            return Ok((
                micros(quiet_since.duration_since(started)),
                micros(started.elapsed()),
            ));
        }
    }
}

/// Prints Get latency during each sweep, during all of them and without them, and the ratios.
fn report(
    samples: &[Sample],
    errors: u64,
    fills: &[Span],
    sweeps: &[Span],
    ended: u32,
) -> anyhow::Result<()> {
    let length = |spans: &[Span]| {
        spans
            .iter()
            .map(|(a, b)| f64::from(b - a) / 1e6)
            .sum::<f64>()
    };
    let within = |spans: &[Span], at: u32| spans.iter().position(|(a, b)| (*a..=*b).contains(&at));
    let mut each: Vec<Outcome> = sweeps
        .iter()
        .map(|span| Outcome::new("sweep", 0, length(std::slice::from_ref(span))))
        .collect();
    let mut during = Outcome::new("during", 0, length(sweeps));
    let outside = f64::from(ended - micros(WARM_UP)) / 1e6 - length(sweeps) - length(fills);
    let mut without = Outcome::new("without", errors, outside);
    let warm = micros(WARM_UP);
    for sample in samples.iter().filter(|s| s.start >= warm) {
        let outcome = match within(sweeps, sample.start) {
            Some(round) => {
                during.ops += 1;
                if sample.is_get {
                    during.latency.saturating_record(u64::from(sample.micros));
                }
                &mut each[round]
            }
            None if within(fills, sample.start).is_some() => continue,
            None => &mut without,
        };
        outcome.ops += 1;
        if sample.is_get {
            outcome.latency.saturating_record(u64::from(sample.micros));
        }
    }
    anyhow::ensure!(
        each.iter().all(|o| !o.latency.is_empty()) && !without.latency.is_empty(),
        "too few operations to compare; run more --clients"
    );
    println!("Get latency (ops/s counts gets and saves):");
    println!("{}", during.line());
    println!("{}", without.line());
    let base = without.p99_ms();
    let mut ratios: Vec<f64> = each.iter().map(|o| o.p99_ms() / base).collect();
    println!(
        "p99 during/without, each sweep: {}; all sweeps together: {:.2}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        during.p99_ms() / base
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio p99 during/without sweep: {:.2}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

/// The daemon's count of sessions removed on expiry; an error from a daemon that counts none
/// (one on Redis), whose sweeps this cannot watch.
fn expired_removed(stats: &gonest_session_client::RemoteStats) -> anyhow::Result<u64> {
    stats.expired_removed_total.ok_or_else(|| {
        anyhow::anyhow!("the daemon counts no expired sessions (is its backend Redis?); sweep needs one in memory")
    })
}

//! `throughput`: the same concurrent get/save mix against each target.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::procfs::Process;
use crate::report::{self, CpuUse, Outcome, histogram};
use crate::target::{self, Lifetime, Target, Walk, session_id};
use crate::{LoadArgs, ThroughputArgs};

/// Lifetime of the sessions the bench writes.
const TTL: Duration = Duration::from_secs(3600);

pub(crate) async fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    let mut targets = target::connect(
        args.sessiond.as_deref(),
        args.redis_store.as_deref(),
        args.redis.as_deref(),
        args.load.streams,
        args.load.near_cache,
    )
    .await?;
    anyhow::ensure!(
        args.load.clients > 0 && args.load.keys > 0,
        "--clients and --keys must be positive"
    );

    println!(
        "throughput: {} per target",
        describe(&args.load, args.size, args.duration)
    );
    if args.reverse {
        targets.reverse();
    }
    let mut outcomes = Vec::new();
    for target in targets {
        let url = match &target {
            Target::Sessiond(_) => args.sessiond.as_deref(),
            Target::Redis(_) => args.redis.as_deref(),
            Target::RedisStore(_) => args.redis_store.as_deref(),
        };
        let server = url.and_then(port_of).and_then(Process::listening_on);
        let near_cache = match &target {
            Target::Sessiond(store) => Some(store.clone()),
            _ => None,
        };
        let outcome = run_one(target, &args, server).await?;
        println!("{}", outcome.line());
        if let Some(stats) = near_cache.and_then(|store| store.near_cache_stats()) {
            let asked = (stats.hits + stats.misses).max(1);
            println!(
                "{:<9} near cache: {} hits, {} misses ({:.1} % hits), {} invalidations, {} flushes",
                outcome.name,
                stats.hits,
                stats.misses,
                100.0 * stats.hits as f64 / asked as f64,
                stats.invalidations,
                stats.flushes
            );
        }
        if let Some(cpu) = &outcome.cpu {
            println!("{}", cpu.line(outcome.name));
        }
        outcomes.push(outcome);
    }
    // Raw Redis, when it ran, is the yardstick of every other target.
    if let Some(redis) = outcomes.iter().find(|outcome| outcome.name == "redis") {
        for ours in outcomes.iter().filter(|outcome| outcome.name != "redis") {
            print_ratios(ours, redis);
        }
    }
    Ok(())
}

fn print_ratios(ours: &Outcome, redis: &Outcome) {
    let name = ours.name;
    println!(
        "ratio {name}/redis p50: {:.2}",
        ours.p50_ms() / redis.p50_ms()
    );
    println!(
        "ratio {name}/redis ops/s: {:.2}",
        ours.ops_per_second() / redis.ops_per_second()
    );
    if let (Some(ours), Some(theirs)) = (&ours.cpu, &redis.cpu) {
        if let (Some((_, ours_server, _)), Some((_, theirs_server, _))) =
            (&ours.server, &theirs.server)
        {
            println!(
                "ratio {name}/redis server CPU per op: {:.2}",
                ours_server / theirs_server
            );
        }
        println!(
            "ratio {name}/redis load generator CPU per op: {:.2}",
            ours.client.0 / theirs.client.0
        );
    }
}

/// The load, for the first line of a run: `50 clients, 1024 byte values, …, 10s`.
pub(crate) fn describe(load: &LoadArgs, size: usize, duration: Duration) -> String {
    format!(
        "{} clients, {} byte values, {} keys, get:{} save:{}, {}",
        load.clients,
        size,
        load.keys,
        load.mix.get,
        100 - load.mix.get,
        humantime::format_duration(duration)
    )
}

/// The port of a URL such as `http://127.0.0.1:7070` or `redis://host:6379/0`.
pub(crate) fn port_of(url: &str) -> Option<u16> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// What one caller measured.
struct Tally {
    ops: u64,
    errors: u64,
    latency: hdrhistogram::Histogram<u64>,
    /// Per second of the run: operations and their latency.
    seconds: Vec<(u64, hdrhistogram::Histogram<u64>)>,
}

pub(crate) async fn run_one(
    target: Target,
    args: &ThroughputArgs,
    server: Option<Process>,
) -> anyhow::Result<Outcome> {
    let value = gonest_session_core::Bytes::from(vec![b'x'; args.size]);
    // Every key once, so that gets find something.
    target::fill(
        &target,
        args.load.keys,
        session_id,
        &value,
        Lifetime::Ttl(TTL),
        args.load.clients.clamp(1, 64),
    )
    .await?;

    let progress = ProgressBar::new(args.duration.as_secs().max(1));
    progress.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len}s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    progress.set_prefix(target.name());

    let me = Process::this();
    let cpu_before = (server.and_then(|s| s.cpu_time()), me.cpu_time());
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = (0..args.load.clients)
        .map(|client| {
            let mut target = target.clone();
            let value = value.clone();
            let (keys, mix, per_second) = (args.load.keys, args.load.mix, args.per_second);
            tokio::spawn(async move {
                let mut tally = Tally {
                    ops: 0,
                    errors: 0,
                    latency: histogram(),
                    seconds: Vec::new(),
                };
                let mut walk = Walk::new(client, keys, mix);
                while Instant::now() < deadline {
                    let (key, is_get) = walk.next_op();
                    let begun = Instant::now();
                    let result = target.get_or_save(&key, is_get, &value, TTL).await;
                    let micros = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
                    match result {
                        Ok(()) => {
                            tally.ops += 1;
                            tally.latency.saturating_record(micros.max(1));
                            if per_second {
                                let second =
                                    usize::try_from(begun.duration_since(started).as_secs())
                                        .unwrap_or(usize::MAX);
                                if tally.seconds.len() <= second {
                                    tally.seconds.resize_with(second + 1, || (0, histogram()));
                                }
                                tally.seconds[second].0 += 1;
                                tally.seconds[second].1.saturating_record(micros.max(1));
                            }
                        }
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            })
        })
        .collect();

    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                progress.inc(1);
            }
        })
    };
    let mut total = Tally {
        ops: 0,
        errors: 0,
        latency: histogram(),
        seconds: Vec::new(),
    };
    for task in tasks {
        let tally = task.await?;
        total.ops += tally.ops;
        total.errors += tally.errors;
        total.latency.add(&tally.latency)?;
        for (second, (ops, latency)) in tally.seconds.into_iter().enumerate() {
            if total.seconds.len() <= second {
                total.seconds.resize_with(second + 1, || (0, histogram()));
            }
            total.seconds[second].0 += ops;
            total.seconds[second].1.add(&latency)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_op = |before: Option<Duration>, after: Option<Duration>| {
        let used = after?.checked_sub(before?)?;
        Some(used.as_secs_f64() * 1e6 / total.ops.max(1) as f64)
    };
    let cpu = per_op(cpu_before.1, me.cpu_time()).map(|client| CpuUse {
        server: server.and_then(|process| {
            let micros = per_op(cpu_before.0, process.cpu_time())?;
            Some((process.pid(), micros, process.cpus().unwrap_or_default()))
        }),
        client: (client, me.cpus().unwrap_or_default()),
    });
    ticker.abort();
    progress.finish_and_clear();
    for (second, (ops, latency)) in total.seconds.iter().enumerate() {
        println!(
            "{:<9} second {second:>3}: ops/s: {ops:>8}  p99: {:>7.3} ms",
            target.name(),
            report::millis(latency.value_at_quantile(0.99))
        );
    }
    Ok(Outcome {
        name: target.name(),
        ops: total.ops,
        errors: total.errors,
        seconds,
        latency: total.latency,
        cpu,
    })
}

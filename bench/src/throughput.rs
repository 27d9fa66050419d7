//! `throughput`: the same concurrent get/save mix against each target.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::ThroughputArgs;
use crate::report::{self, Outcome, histogram};
use crate::target::{self, Lifetime, Target, Walk, session_id};

/// Lifetime of the sessions the bench writes.
const TTL: Duration = Duration::from_secs(3600);

pub(crate) async fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    let targets = target::connect(
        args.sessiond.as_deref(),
        args.redis.as_deref(),
        args.load.streams,
    )
    .await?;
    anyhow::ensure!(
        args.load.clients > 0 && args.load.keys > 0,
        "--clients and --keys must be positive"
    );

    println!(
        "throughput: {} clients, {} byte values, {} keys, get:{} save:{}, {} per target",
        args.load.clients,
        args.size,
        args.load.keys,
        args.load.mix.get,
        100 - args.load.mix.get,
        humantime::format_duration(args.duration)
    );
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = run_one(target, &args).await?;
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    if let [sessiond, redis] = outcomes.as_slice() {
        println!(
            "ratio sessiond/redis p50: {:.2}",
            sessiond.p50_ms() / redis.p50_ms()
        );
        println!(
            "ratio sessiond/redis ops/s: {:.2}",
            sessiond.ops_per_second() / redis.ops_per_second()
        );
    }
    Ok(())
}

/// What one caller measured.
struct Tally {
    ops: u64,
    errors: u64,
    latency: hdrhistogram::Histogram<u64>,
    /// Per second of the run: operations and their latency.
    seconds: Vec<(u64, hdrhistogram::Histogram<u64>)>,
}

async fn run_one(target: Target, args: &ThroughputArgs) -> anyhow::Result<Outcome> {
    let value = vec![b'x'; args.size];
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
    })
}

//! `soak`: a realistic churn against a daemon for a long time, reported every `--every`: the
//! daemon's resident memory, the sessions it holds, operations per second, p50 / p99 and errors;
//! as lines, as CSV, and at the end as an SVG plot of RSS and p99 over time, then a verdict.
//!
//! Each caller keeps the sessions it logged in and, paced so that all callers together make
//! `--rate` operations a second, does in every thousand operations: 748 reads of one of them,
//! 150 saves changing one, 80 logins (a new session of one of `--users` owners; half live
//! `--short-ttl`, so that they expire and the sweeper has real work, half `--long-ttl`),
//! 20 logouts and 2 "log out everywhere" of an owner. The sessions held grow for about
//! `--long-ttl`, then hold steady: logins and saves renew, lifetimes and logouts end them. A read that finds nothing (a session
//! expired, or logged out by another caller's "everywhere") is an answer, not an error; any
//! failed call is an error.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Bytes, Save, SessionData, SessionStore};
use hdrhistogram::Histogram;

use crate::SoakArgs;
use crate::report::{histogram, millis};

/// Sessions one caller remembers at most (the oldest are forgotten, and left to expire).
const KEPT: usize = 2_000;

/// One report of the run.
#[derive(Debug, Clone, Copy)]
struct Row {
    seconds: f64,
    rss_bytes: u64,
    live_sessions: u64,
    ops_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// What every caller adds to.
struct Tally {
    latency: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
}

pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.users > 0,
        "--clients and --users must be positive"
    );
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    anyhow::ensure!(!args.every.is_zero(), "--every must be longer than zero");
    let store = RemoteSessionStore::connect(args.sessiond.as_str())
        .await
        .with_context(|| format!("cannot reach the daemon at {}", args.sessiond))?;
    println!(
        "soak: {} callers, {} ops/s in all, {} owners, {}-byte values, ttl {:?} / {:?}, {:?}, a report every {:?}",
        args.clients,
        args.rate,
        args.users,
        args.size,
        args.short_ttl,
        args.long_ttl,
        args.duration,
        args.every
    );
    let tally = Arc::new(Tally {
        latency: Mutex::new(histogram()),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let end = started + args.duration;
    let value = Bytes::from(vec![b'x'; args.size]);
    let pace = Duration::from_secs_f64(args.clients as f64 / args.rate as f64);
    let callers: Vec<_> = (0..args.clients)
        .map(|caller| {
            let (store, tally, value, args) =
                (store.clone(), tally.clone(), value.clone(), args.clone());
            tokio::spawn(async move { churn(caller, store, tally, value, args, pace, end).await })
        })
        .collect();

    let mut csv = std::fs::File::create(&args.csv)
        .with_context(|| format!("cannot create {}", args.csv.display()))?;
    writeln!(
        csv,
        "seconds,rss_bytes,live_sessions,ops_per_second,p50_ms,p99_ms,errors"
    )?;
    let mut rows = Vec::new();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + args.every, args.every);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let latency = std::mem::replace(&mut *tally.latency.lock().unwrap(), histogram());
        let (ops, errors) = (
            tally.ops.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
        let stats = store.stats_as_stored().await;
        let (rss, live) = match &stats {
            Ok(stats) => (
                stats.resident_memory_bytes.unwrap_or(0),
                stats.live_sessions.unwrap_or(0),
            ),
            Err(_) => (0, 0),
        };
        if stats.is_err() {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
        let row = Row {
            seconds: now.duration_since(started).as_secs_f64(),
            rss_bytes: rss,
            live_sessions: live,
            ops_per_second: (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64(),
            p50_ms: millis(latency.value_at_quantile(0.5)),
            p99_ms: millis(latency.value_at_quantile(0.99)),
            errors: errors - last.2,
        };
        last = (now, ops, errors);
        println!(
            "{:>7.0} s  rss {:>8.1} MiB  sessions {:>8}  ops/s {:>8.0}  p50 {:.3} ms  p99 {:.3} ms  errors {}",
            row.seconds,
            row.rss_bytes as f64 / (1 << 20) as f64,
            row.live_sessions,
            row.ops_per_second,
            row.p50_ms,
            row.p99_ms,
            row.errors
        );
        writeln!(
            csv,
            "{:.1},{},{},{:.1},{:.3},{:.3},{}",
            row.seconds,
            row.rss_bytes,
            row.live_sessions,
            row.ops_per_second,
            row.p50_ms,
            row.p99_ms,
            row.errors
        )?;
        rows.push(row);
        if now >= end {
            break;
        }
    }
    for caller in callers {
        caller.await?;
    }
    plot(&rows, &args.svg)?;
    println!("csv: {}, plot: {}", args.csv.display(), args.svg.display());
    let verdict = Verdict::of(&rows, tally.errors.load(Ordering::Relaxed));
    println!(
        "memory: {:.1} MiB at the end, {:.0} bytes per live session",
        verdict.rss_end as f64 / (1 << 20) as f64,
        verdict.bytes_per_session
    );
    println!(
        "soak: rss growth {:.2} %, errors {}, p99 drift {:.2}",
        verdict.rss_growth_percent, verdict.errors, verdict.p99_drift
    );
    anyhow::ensure!(
        verdict.errors == 0,
        "the soak saw {} errors",
        verdict.errors
    );
    Ok(())
}

/// The end of a run, in figures.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// RSS growth over the second half: the last report against the first one of that half.
    rss_growth_percent: f64,
    rss_end: u64,
    bytes_per_session: f64,
    errors: u64,
    /// p99 over the last tenth of the reports against p99 over the first tenth (each a mean,
    /// over at least one report).
    p99_drift: f64,
}

impl Verdict {
    fn of(rows: &[Row], errors: u64) -> Self {
        let Some(end) = rows.last() else {
            return Self {
                rss_growth_percent: 0.0,
                rss_end: 0,
                bytes_per_session: 0.0,
                errors,
                p99_drift: 0.0,
            };
        };
        let half = &rows[rows.len() / 2];
        let tenth = (rows.len() / 10).max(1);
        let mean = |rows: &[Row]| rows.iter().map(|r| r.p99_ms).sum::<f64>() / rows.len() as f64;
        let (first, last) = (mean(&rows[..tenth]), mean(&rows[rows.len() - tenth..]));
        Self {
            rss_growth_percent: if half.rss_bytes == 0 {
                0.0
            } else {
                (end.rss_bytes as f64 - half.rss_bytes as f64) / half.rss_bytes as f64 * 100.0
            },
            rss_end: end.rss_bytes,
            bytes_per_session: end.rss_bytes as f64 / end.live_sessions.max(1) as f64,
            errors,
            p99_drift: if first > 0.0 { last / first } else { 0.0 },
        }
    }
}

/// One caller's churn until `end`.
async fn churn(
    caller: usize,
    store: RemoteSessionStore,
    tally: Arc<Tally>,
    value: Bytes,
    args: SoakArgs,
    pace: Duration,
    end: Instant,
) {
    // xorshift64*, seeded per caller: the same run makes the same choices.
    let mut state =
        0x9E37_79B9_7F4A_7C15_u64 ^ (caller as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut kept: VecDeque<(String, String)> = VecDeque::new();
    let mut logins = 0u64;
    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        ticks.tick().await;
        let roll = next() % 1000;
        let pick =
            |kept: &VecDeque<(String, String)>, n: u64| (n % kept.len().max(1) as u64) as usize;
        let started = Instant::now();
        let ok = if roll < 898 && !kept.is_empty() {
            let (id, owner) = kept[pick(&kept, next())].clone();
            if roll < 748 {
                store.get(&id).await.is_ok()
            } else {
                let mut data = SessionData::with_capacity(2);
                data.insert("data".to_owned(), value.clone());
                data.insert("n".to_owned(), Bytes::from(next().to_string()));
                store
                    .save(Save::new(id, data).owner(owner).ttl(args.long_ttl))
                    .await
                    .is_ok()
            }
        } else if roll < 978 || kept.is_empty() {
            logins += 1;
            let id = format!("soak-{caller}-{logins}-{:016x}", next());
            let owner = format!("user-{}", next() % args.users as u64);
            let ttl = if next() % 2 == 0 {
                args.short_ttl
            } else {
                args.long_ttl
            };
            let mut data = SessionData::with_capacity(1);
            data.insert("data".to_owned(), value.clone());
            let saved = store
                .save(Save::new(id.clone(), data).owner(owner.clone()).ttl(ttl))
                .await;
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back((id, owner));
            saved.is_ok()
        } else if roll < 998 {
            let (id, _) = kept
                .swap_remove_back(pick(&kept, next()))
                .expect("not empty");
            store.destroy(&id).await.is_ok()
        } else {
            let (_, owner) = kept[pick(&kept, next())].clone();
            kept.retain(|(_, o)| *o != owner);
            store.destroy_by_owner(&owner, &[]).await.is_ok()
        };
        let took = started.elapsed().as_micros() as u64;
        tally.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            let _ = tally.latency.lock().unwrap().record(took.max(1));
        } else {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Draws RSS (MiB) and p99 (ms) over the run, one above the other, as SVG.
fn plot(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let minutes: Vec<f64> = rows.iter().map(|r| r.seconds / 60.0).collect();
    let span = minutes.last().copied().unwrap_or(1.0).max(1.0 / 60.0);
    let series = [
        (
            top,
            "daemon RSS (MiB)",
            rows.iter()
                .map(|r| r.rss_bytes as f64 / (1 << 20) as f64)
                .collect::<Vec<_>>(),
            BLUE,
        ),
        (
            bottom,
            "p99 (ms)",
            rows.iter().map(|r| r.p99_ms).collect(),
            RED,
        ),
    ];
    for (area, label, values, color) in series {
        let high = values
            .iter()
            .copied()
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(label, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span, 0.0..high)?;
        chart.configure_mesh().x_desc("minutes").draw()?;
        chart.draw_series(LineSeries::new(minutes.iter().copied().zip(values), &color))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seconds: f64, rss: u64, live: u64, p99: f64) -> Row {
        Row {
            seconds,
            rss_bytes: rss,
            live_sessions: live,
            ops_per_second: 1.0,
            p50_ms: 0.1,
            p99_ms: p99,
            errors: 0,
        }
    }

    #[test]
    fn the_verdict_compares_the_halves_and_the_tenths() {
        let rows: Vec<Row> = (0..20_u32)
            .map(|i| {
                row(
                    f64::from(i) * 60.0,
                    1000 + u64::from(i) * 10,
                    100,
                    if i < 2 { 1.0 } else { 3.0 },
                )
            })
            .collect();
        let verdict = Verdict::of(&rows, 2);
        // Half: row 10 (1,100 bytes) to the last (1,190): +8.18 %.
        assert!((verdict.rss_growth_percent - 90.0 / 1100.0 * 100.0).abs() < 1e-9);
        assert_eq!(verdict.p99_drift, 3.0);
        assert_eq!(verdict.errors, 2);
        assert_eq!(verdict.bytes_per_session, 11.9);
        assert_eq!(Verdict::of(&[], 0).errors, 0);
    }

    #[test]
    fn the_plot_is_an_svg_with_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.svg");
        let rows: Vec<Row> = (0..5_u32)
            .map(|i| row(f64::from(i) * 60.0, 1 << 20, 10, 0.5))
            .collect();
        plot(&rows, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("daemon RSS (MiB)") && svg.contains("p99 (ms)"));
        // The two lines: RSS in blue, p99 in red.
        let lines: Vec<&str> = svg.split("<polyline").skip(1).collect();
        assert!(
            lines.iter().any(|l| l.contains("stroke=\"#0000FF\"")),
            "no RSS line"
        );
        assert!(
            lines.iter().any(|l| l.contains("stroke=\"#FF0000\"")),
            "no p99 line"
        );
    }
}

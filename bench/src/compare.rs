//! `compare`: two targets (two builds of the daemon, or two set-ups of one) under the same load,
//! in turn, pair after pair, the order alternating; B's figures as ratios to A's.
//!
//! On a shared machine the speed moves from one minute to the next, and by more than many a
//! change is worth: one run of each says little. Runs taken in turn, with the order alternating
//! so that neither side always runs first, give one ratio per pair; their mean and standard
//! error say what the change is worth and how sure that is. Comparing a target with itself
//! shows the machine's noise.

use crate::procfs::Process;
use crate::report::Outcome;
use crate::target::Target;
use crate::throughput::{self, port_of};
use crate::{CompareArgs, ThroughputArgs};

/// The figures of one run that are compared.
#[derive(Debug, Clone, Copy)]
struct Figures {
    ops_per_second: f64,
    p50_ms: f64,
    /// Server CPU time per operation, in µs, when the server was found.
    server_micros: Option<f64>,
    /// The load generator's CPU time per operation, in µs.
    generator_micros: Option<f64>,
}

impl Figures {
    fn of(outcome: &Outcome) -> Self {
        let cpu = outcome.cpu.as_ref();
        Self {
            ops_per_second: outcome.ops_per_second(),
            p50_ms: outcome.p50_ms(),
            server_micros: cpu.and_then(|cpu| cpu.server.as_ref().map(|server| server.1)),
            generator_micros: cpu.map(|cpu| cpu.client.0),
        }
    }
}

pub(crate) async fn run(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.load.clients > 0 && args.load.keys > 0,
        "--clients and --keys must be positive"
    );
    let targets = [
        connect(&args.a, args.load.streams).await?,
        connect(&args.b, args.load.streams).await?,
    ];
    let servers = [&args.a, &args.b].map(|url| port_of(url).and_then(Process::listening_on));
    let load = ThroughputArgs {
        sessiond: None,
        redis: None,
        redis_store: None,
        load: args.load.clone(),
        size: args.size,
        duration: args.duration,
        per_second: false,
        reverse: false,
    };
    println!(
        "compare: A {} and B {}, {} pairs (A then B, then B then A, …): {} per run",
        args.a,
        args.b,
        args.pairs,
        throughput::describe(&args.load, args.size, args.duration)
    );
    let mut figures: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let outcome = throughput::run_one(targets[side].clone(), &load, servers[side]).await?;
            anyhow::ensure!(
                outcome.ops > 0,
                "no operation of {} succeeded ({} errors)",
                [&args.a, &args.b][side],
                outcome.errors
            );
            println!(
                "pair {:>2} {}: {}",
                pair + 1,
                ["A", "B"][side],
                outcome.line()
            );
            if let Some(cpu) = &outcome.cpu {
                println!(
                    "pair {:>2} {}: {}",
                    pair + 1,
                    ["A", "B"][side],
                    cpu.line("cpu")
                );
            }
            figures[side].push(Figures::of(&outcome));
        }
    }
    let [a, b] = &figures;
    print_ratio("ops/s", a, b, |f| Some(f.ops_per_second));
    print_ratio("p50", a, b, |f| Some(f.p50_ms));
    print_ratio("server CPU per op", a, b, |f| f.server_micros);
    print_ratio("load generator CPU per op", a, b, |f| f.generator_micros);
    Ok(())
}

/// A target by its URL's scheme: redis://… or rediss://… is Redis, anything else a daemon.
async fn connect(url: &str, streams: usize) -> anyhow::Result<Target> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Target::redis(url).await
    } else {
        Target::sessiond(url, streams, 0).await
    }
}

/// Prints B's `figure` as a ratio to A's, pair by pair, with their mean and standard error;
/// nothing if a run lacks the figure.
fn print_ratio(name: &str, a: &[Figures], b: &[Figures], figure: impl Fn(&Figures) -> Option<f64>) {
    let ratios: Option<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(a, b)| Some(figure(b)? / figure(a)?))
        .collect();
    let Some(ratios) = ratios.filter(|ratios| !ratios.is_empty()) else {
        return;
    };
    let (mean, error) = mean_and_standard_error(&ratios);
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "ratio B/A {name}: {mean:.3} (standard error {error:.3}; pairs: {})",
        each.join(" ")
    );
}

/// The mean of `values` and its standard error (the sample standard deviation over the square
/// root of the count; 0 for a single value).
fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error_of_known_values() {
        let (mean, error) = mean_and_standard_error(&[1.0, 2.0, 3.0]);
        assert!((mean - 2.0).abs() < 1e-12);
        assert!((error - 1.0 / 3f64.sqrt()).abs() < 1e-12, "{error}");
        assert_eq!(mean_and_standard_error(&[0.9]), (0.9, 0.0));
        let (mean, error) = mean_and_standard_error(&[1.1, 1.1, 1.1, 1.1]);
        assert!((mean - 1.1).abs() < 1e-12 && error.abs() < 1e-12);
    }
}

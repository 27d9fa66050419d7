use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load for gonest-sessiond, with Redis as the yardstick.
#[derive(Debug, Parser)]
#[command(name = "gonest-session-bench", version, about)]
pub struct Cli {
    /// Threads the load generator runs on.
    #[arg(long, global = true, default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Requests per second of two web apps, each on its session store: `example-app` on the
    /// daemon against a peer (such as `tower-sessions-app` on Redis).
    Http(HttpArgs),
    /// Operations per second and latency under concurrent load.
    Throughput(ThroughputArgs),
    /// Two targets (such as two builds of the daemon) under the same load, in turn, pair after
    /// pair, the order alternating: B's figures as ratios to A's, with their mean and standard
    /// error.
    Compare(CompareArgs),
    /// Resident memory per stored session.
    Memory(MemoryArgs),
    /// Latency while the daemon sweeps many expired sessions, against latency without a sweep.
    Sweep(SweepArgs),
    /// Time from a write's answer to its invalidation on a `Track` stream, under load.
    Invalidation(InvalidationArgs),
    /// A realistic churn for a long time: memory, sessions, ops/s, p50 / p99 and errors every
    /// minute, as CSV and an SVG plot, and a verdict at the end.
    Soak(SoakArgs),
}

/// Flags of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The daemon, such as http://127.0.0.1:7070.
    #[arg(long)]
    pub sessiond: String,
    /// How long the churn runs.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time between two reports.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Operations per second, all callers together (each paced to its share).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Owners (users) the sessions belong to; several devices each.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Bytes in each session's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Lifetime of half the logins: short, so that they expire and the sweeper works.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub short_ttl: Duration,
    /// Lifetime of the other half, renewed by each save. The sessions held grow for about this
    /// long (plus a sweep interval), then hold steady: keep it well under half of --duration,
    /// or the second half's RSS growth measures the filling, not the daemon.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub long_ttl: Duration,
    /// Where the reports go as CSV.
    #[arg(long, default_value = "soak.csv")]
    pub csv: std::path::PathBuf,
    /// Where the plot of RSS and p99 over time goes.
    #[arg(long, default_value = "soak.svg")]
    pub svg: std::path::PathBuf,
}

/// Flags of `invalidation`.
#[derive(Debug, Clone, Args)]
pub struct InvalidationArgs {
    /// The daemon the load and the probe's saves go to, such as http://127.0.0.1:7070.
    #[arg(long)]
    pub sessiond: String,
    /// The daemon whose `Track` stream the probe watches (default: --sessiond). Another daemon
    /// on the same Redis measures the relay between daemons.
    #[arg(long)]
    pub watch: Option<String>,
    /// The load that runs meanwhile: callers, mix, keys and streams.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Bytes in each session's value (the load's).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Probe saves, each timed.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// How often the probe saves.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// More `Track` streams to hold open on --watch, each reading every invalidation, as the
    /// near caches of that many more app instances (each costs the daemon every change).
    #[arg(long, default_value_t = 0)]
    pub trackers: usize,
}

/// Flags of `throughput`.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// The daemon, such as http://127.0.0.1:7070.
    #[arg(long)]
    pub sessiond: Option<String>,
    /// Redis, such as redis://127.0.0.1:6379, to run the same workload against.
    #[arg(long)]
    pub redis: Option<String>,
    /// Redis again, through `RedisSessionStore` (the session contract, as an app without the
    /// daemon uses it): redis://…, rediss://…, redis+cluster://…
    #[arg(long)]
    pub redis_store: Option<String>,
    /// The load: callers, mix, keys and streams.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Bytes in each session's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// How long to run against each target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Also print ops/s and p99 for every second of the run (to see a sweep or a snapshot).
    #[arg(long)]
    pub per_second: bool,
    /// Run the targets in the opposite order (the last first). On a shared machine the target
    /// that runs first can fare better or worse for that alone: run both orders and compare.
    #[arg(long)]
    pub reverse: bool,
}

/// Flags of `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Target A, the baseline: a daemon (http://127.0.0.1:7071) or Redis (redis://…).
    #[arg(long)]
    pub a: String,
    /// Target B, compared with A (it may be A again, to see the machine's noise).
    #[arg(long)]
    pub b: String,
    /// Pairs of runs: A then B, then B then A, and so on.
    #[arg(long, default_value_t = 8, value_parser = parse_pairs)]
    pub pairs: usize,
    /// The load: callers, mix, keys and streams.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Bytes in each session's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// How long each run lasts.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// Flags of the get/save load `throughput` and `sweep` run.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Share of each operation, in percent: get:N,save:M (they must add up to 100).
    #[arg(long, default_value = "get:90,save:10", value_parser = parse_mix)]
    pub mix: Mix,
    /// Distinct sessions the load is spread over (stored before the run).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// `Pipeline` streams the daemon's client spreads calls over.
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    /// Sessions the daemon's client keeps in its near cache (0: none); its hit ratio is printed
    /// after the run.
    #[arg(long, default_value_t = 0)]
    pub near_cache: usize,
}

/// Flags of `http`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// `example-app`, such as http://127.0.0.1:8080.
    #[arg(long)]
    pub ours: Option<String>,
    /// The app to compare with, such as `tower-sessions-app` at http://127.0.0.1:8090.
    #[arg(long)]
    pub theirs: Option<String>,
    /// The port of the session store behind `--ours` (the daemon), to count its CPU too.
    #[arg(long)]
    pub ours_store: Option<u16>,
    /// The port of the session store behind `--theirs` (Redis), to count its CPU too.
    #[arg(long)]
    pub theirs_store: Option<u16>,
    /// What each request is: `profile` (GET /profile with a logged-in session, one per caller)
    /// or `login` (POST /login without a cookie: a new session each time).
    #[arg(long, value_enum, default_value_t = Route::Profile)]
    pub route: Route,
    /// Concurrent callers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// How long to run against each app.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run the apps in the opposite order (the last first). On a shared machine the target
    /// that runs first can fare better or worse for that alone: run both orders and compare.
    #[arg(long)]
    pub reverse: bool,
}

/// The request `http` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// `GET /profile` with the caller's session cookie.
    Profile,
    /// `POST /login` without a cookie.
    Login,
}

/// Flags of `memory`.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// The daemon, such as http://127.0.0.1:7070.
    #[arg(long)]
    pub sessiond: Option<String>,
    /// Redis, such as redis://127.0.0.1:6379.
    #[arg(long)]
    pub redis: Option<String>,
    /// Sessions to store.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Bytes in each session's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Lifetime of the stored sessions (short, to watch the daemon sweep them).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Flags of `sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The daemon, such as http://127.0.0.1:7070. Start it with a short --sweep-interval (such as
    /// 60s) so the sweep comes soon.
    #[arg(long)]
    pub sessiond: String,
    /// Sessions stored to expire and be swept.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: usize,
    /// Bytes in each session's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Lifetime of the sessions to be swept, counted from when the bench starts storing them
    /// (they all expire at the same moment): long enough to store them all.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Sweeps to measure, one per sweep interval of the daemon; the result is their median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The get/save load that runs across the sweeps, on sessions that do not expire.
    #[command(flatten)]
    pub load: LoadArgs,
    /// How long to wait for the daemon's sweep before giving up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// How long the load goes on after the sweep.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub after: Duration,
}

/// The share of gets and saves, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Percent of operations that are gets; the rest are saves.
    pub get: u8,
}

fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a positive number of threads")),
        Ok(threads) => Ok(threads),
    }
}

fn parse_pairs(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(pairs) if pairs >= 2 => Ok(pairs),
        _ => Err(format!(
            "`{text}` is not a number of pairs of at least 2 (one pair has no standard error)"
        )),
    }
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut get = None;
    let mut save = None;
    for part in text.split(',') {
        let (name, share) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not op:percent (like get:90,save:10)"))?;
        let share: u8 = share
            .trim()
            .parse()
            .map_err(|_| format!("`{share}` is not a percentage"))?;
        match name.trim() {
            "get" => get = Some(share),
            "save" => save = Some(share),
            other => return Err(format!("unknown operation `{other}` (use get and save)")),
        }
    }
    let (get, save) = (get.unwrap_or(0), save.unwrap_or(0));
    if u16::from(get) + u16::from(save) != 100 {
        return Err(format!("get:{get} and save:{save} do not add up to 100"));
    }
    Ok(Mix { get })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_must_add_up() {
        assert_eq!(parse_mix("get:90,save:10").unwrap(), Mix { get: 90 });
        assert_eq!(parse_mix("save:100").unwrap(), Mix { get: 0 });
        assert!(parse_mix("get:90,save:20").unwrap_err().contains("add up"));
        assert!(parse_mix("put:100").unwrap_err().contains("unknown"));
        assert!(parse_mix("get").is_err());
    }
}

//! `gonest-session-bench`: load for gonest-sessiond, with Redis as the yardstick.

use anyhow::Context;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = gonest_session_bench::Cli::parse();
    // As an app sets one up. Without a subscriber, the clients' libraries (h2, with tracing's
    // `log` feature on, as tower-sessions turns it on) pass every span they open to `log`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Like redis-benchmark, one thread by default: the load generator should spend as little of
    // the machine as it can, since the servers it measures run on the same cores.
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(gonest_session_bench::run(cli))
}

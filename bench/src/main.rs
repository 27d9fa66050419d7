//! `gonest-session-bench`: load for gonest-sessiond, with Redis as the yardstick.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = gonest_session_bench::Cli::parse();
    gonest_session_bench::run(cli).await
}

//! A redis-benchmark-style load tool: the same session workload against `gonest-sessiond`
//! (through `RemoteSessionStore`) and against Redis (GET and SET with PX over one multiplexed
//! connection, as a Redis session store does), with the figures side by side.

mod cli;
mod compare;
mod http;
mod invalidation;
mod memory;
mod procfs;
mod report;
mod soak;
mod sweep;
mod target;
mod throughput;

pub use cli::{
    Cli, Command, CompareArgs, HttpArgs, InvalidationArgs, LoadArgs, MemoryArgs, Route, SoakArgs,
    SweepArgs, ThroughputArgs,
};

/// Runs the command the flags name.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Http(args) => http::run(args).await,
        Command::Throughput(args) => throughput::run(args).await,
        Command::Compare(args) => compare::run(args).await,
        Command::Memory(args) => memory::run(args).await,
        Command::Sweep(args) => sweep::run(args).await,
        Command::Invalidation(args) => invalidation::run(args).await,
        Command::Soak(args) => soak::run(args).await,
    }
}

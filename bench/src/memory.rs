//! `memory`: resident bytes per stored session.
//!
//! Both servers' memory is read the same way when they run on this machine: the `VmRSS` of the
//! process listening on the target's port, at the moment of asking. Elsewhere each server's own
//! figure is used (see [`Target::resident_bytes`]).

use crate::MemoryArgs;
use crate::procfs::Process;
use crate::target::{self, Lifetime, Target};
use crate::throughput::port_of;

pub(crate) async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let targets =
        target::connect(args.sessiond.as_deref(), None, args.redis.as_deref(), 2, 0).await?;
    anyhow::ensure!(args.sessions > 0, "--sessions must be positive");
    println!(
        "memory: {} sessions of {} bytes, ttl {}",
        args.sessions,
        args.size,
        humantime::format_duration(args.ttl)
    );

    // The servers in the order of `targets`, where they run on this machine.
    let processes = [args.sessiond.as_deref(), args.redis.as_deref()]
        .into_iter()
        .flatten()
        .map(|url| port_of(url).and_then(Process::listening_on));

    let mut per_session = Vec::new();
    for (mut target, process) in targets.into_iter().zip(processes) {
        let before = resident(&mut target, process).await?;
        let value = gonest_session_core::Bytes::from(vec![b'x'; args.size]);
        target::fill(
            &target,
            args.sessions,
            target::session_id,
            &value,
            Lifetime::Ttl(args.ttl),
            64,
        )
        .await?;
        let after = resident(&mut target, process).await?;
        let bytes = after.saturating_sub(before) as f64 / args.sessions as f64;
        println!(
            "{:<9} resident before: {before} after: {after} bytes per session: {bytes:.0}",
            target.name()
        );
        per_session.push(bytes);
    }
    if let [sessiond, redis] = per_session.as_slice() {
        println!(
            "ratio sessiond/redis bytes per session: {:.2}",
            sessiond / redis
        );
    }
    Ok(())
}

/// The resident memory of the server behind `target`: from /proc when it runs here, else as the
/// server reports it.
async fn resident(target: &mut Target, process: Option<Process>) -> anyhow::Result<u64> {
    match process.and_then(|process| process.resident_bytes()) {
        Some(bytes) => Ok(bytes),
        None => target.resident_bytes().await,
    }
}

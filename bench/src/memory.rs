//! `memory`: resident bytes per stored session.

use crate::MemoryArgs;
use crate::target::{self, Lifetime};

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

    let mut per_session = Vec::new();
    for mut target in targets {
        let before = target.resident_bytes().await?;
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
        let after = target.resident_bytes().await?;
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

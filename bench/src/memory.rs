//! `memory`: resident bytes per stored session.

use crate::MemoryArgs;
use crate::target::{Target, session_id};

pub(crate) async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    if let Some(url) = &args.sessiond {
        targets.push(Target::sessiond(url, 2).await?);
    }
    if let Some(url) = &args.redis {
        targets.push(Target::redis(url).await?);
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "name a target: --sessiond URL and/or --redis URL"
    );
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
        store_all(&target, &args).await?;
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

async fn store_all(target: &Target, args: &MemoryArgs) -> anyhow::Result<()> {
    const WORKERS: usize = 64;
    let value = vec![b'x'; args.size];
    let tasks: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut target = target.clone();
            let value = value.clone();
            let (sessions, ttl) = (args.sessions, args.ttl);
            tokio::spawn(async move {
                for n in (worker..sessions).step_by(WORKERS) {
                    target.save(&session_id(n), &value, ttl).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

//! `gonest-sessiond health`: asks a daemon's health service, for container health checks.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Asks the daemon at `addr` whether it is serving; `Ok(())` when it says SERVING, otherwise
/// an error saying what it answered or why it could not be asked.
pub async fn check(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|err| anyhow::anyhow!("invalid address `{addr}`: {err}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach {addr}: {err}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("health check failed: {}", status.message()))?
        .into_inner();
    if answer.status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        anyhow::bail!("{addr} is not serving (status {})", answer.status)
    }
}

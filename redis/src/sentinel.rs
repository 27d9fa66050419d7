//! A connection to the master that Redis Sentinel names, which follows it through failovers.
//!
//! redis-rs finds the master through the sentinels (and checks its `ROLE`) but gives a plain
//! connection to that address, which keeps talking to the old master after a failover. This
//! wraps one: when a command fails because the connection is gone or the server has become a
//! replica (`READONLY`), the master is looked up again and later commands go to the new one.
//! The failing command's error is returned as it is: a write may or may not have landed, and
//! is not sent twice.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, RedisFuture, Value};

/// Where a `redis+sentinel://` URL points.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// The sentinels, as `redis://host:port`.
    pub(crate) sentinels: Vec<String>,
    /// The name the sentinels know the master by.
    pub(crate) service: String,
    /// Username, password and db for the master, as a `redis://` URL would give them.
    pub(crate) master: String,
}

/// Reads `redis+sentinel://[user:pass@]host:port[,host:port…]/service[/db]`; `None` for
/// another scheme.
pub(crate) fn parse_url(url: &str) -> Option<Result<SentinelUrl, String>> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut path = path.trim_end_matches('/').split('/');
    let service = path.next().unwrap_or_default();
    let db = path.next();
    if hosts.is_empty() || service.is_empty() || path.next().is_some() {
        return Some(Err(
            "write redis+sentinel://[user:pass@]host:port[,host:port…]/service[/db]".into(),
        ));
    }
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(|host| format!("redis://{host}"))
        .collect();
    let first = hosts.split(',').next().unwrap_or_default();
    let master = format!(
        "redis://{}{first}/{}",
        userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
        db.unwrap_or("0")
    );
    Some(Ok(SentinelUrl {
        sentinels,
        service: service.to_owned(),
        master,
    }))
}

/// A connection to the current master; see the module docs. Cheap to clone; clones share it.
#[derive(Clone)]
pub(crate) struct SentinelConnection {
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    /// The connection to the master as last found, and how many times it has been found.
    current: Arc<RwLock<(u64, MultiplexedConnection)>>,
    config: AsyncConnectionConfig,
    timeout: Duration,
}

impl SentinelConnection {
    /// Asks the sentinels for the master of `url.service` and connects to it.
    pub(crate) async fn connect(url: SentinelUrl, timeout: Duration) -> redis::RedisResult<Self> {
        let master = url.master.as_str().into_connection_info()?;
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(master.redis),
        };
        let mut sentinel = SentinelClient::build(
            url.sentinels,
            url.service,
            Some(node),
            SentinelServerType::Master,
        )?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let connection = sentinel.get_async_connection_with_config(&config).await?;
        Ok(Self {
            sentinel: Arc::new(tokio::sync::Mutex::new(sentinel)),
            current: Arc::new(RwLock::new((0, connection))),
            config,
            timeout,
        })
    }

    fn current(&self) -> (u64, MultiplexedConnection) {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A client of the master as the sentinels name it now.
    pub(crate) async fn master_client(&self) -> redis::RedisResult<redis::Client> {
        self.sentinel.lock().await.async_get_client().await
    }

    /// After `error` on the connection found `generation`th, finds the master again if the
    /// error says it may have moved (and no other caller has found it meanwhile).
    async fn recover(&self, generation: u64, error: &RedisError) {
        let moved = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.kind() == redis::ErrorKind::ReadOnly;
        if !moved {
            return;
        }
        let mut sentinel = self.sentinel.lock().await;
        if self.current().0 != generation {
            return;
        }
        let found = tokio::time::timeout(
            self.timeout,
            sentinel.get_async_connection_with_config(&self.config),
        )
        .await;
        if let Ok(Ok(connection)) = found {
            *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = (generation + 1, connection);
            tracing::info!("redis sentinel: connected to the current master");
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut connection) = self.current();
            let result = connection.req_packed_command(cmd).await;
            if let Err(error) = &result {
                self.recover(generation, error).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut connection) = self.current();
            let result = connection.req_packed_commands(cmd, offset, count).await;
            if let Err(error) = &result {
                self.recover(generation, error).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_service_and_the_masters_credentials() {
        let url = parse_url("redis+sentinel://app:secret@10.0.0.1:26379,10.0.0.2:26379/sessions/3")
            .unwrap()
            .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                service: "sessions".into(),
                master: "redis://app:secret@10.0.0.1:26379/3".into(),
            }
        );
        let plain = parse_url("redis+sentinel://h:1/m").unwrap().unwrap();
        assert_eq!(plain.master, "redis://h:1/0");
        assert!(parse_url("redis://h:1").is_none());
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///m",
            "redis+sentinel://h:1/m/0/x",
        ] {
            assert!(parse_url(bad).unwrap().is_err(), "{bad}");
        }
    }
}

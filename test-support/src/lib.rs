//! The one test harness every crate's tests share: a `gonest-sessiond` served in the test's own
//! process on a port the OS picks, ready when [`Daemon::start`] returns, stopped by
//! [`Daemon::stop`].
//!
//! ```no_run
//! use gonest_session_test_support::Daemon;
//!
//! # async fn demo() {
//! let daemon = Daemon::start(gonest_sessiond::Config::default()).await;
//! // ... connect to daemon.url() ...
//! daemon.stop().await.unwrap();
//! # }
//! ```

mod binary;
pub mod contract;
pub mod owner_races;

pub use binary::{DaemonProcess, log_addr};

use std::net::SocketAddr;

use gonest_session_proto::pb::session_store_client::SessionStoreClient;
use gonest_sessiond::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A daemon served in this process. Dropping it without [`stop`](Self::stop) aborts it.
#[derive(Debug)]
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A channel to it (connected on first use; tonic reconnects it as needed).
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    /// Starts a daemon with `config` on a free port of 127.0.0.1.
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0");
        Self::start_on(listener, config).await
    }

    /// Starts a daemon with `config` on `listener` (to come back on a port used before).
    /// Connections made from now on are served: the listener is bound already, so nothing
    /// races the daemon's start.
    pub async fn start_on(listener: TcpListener, config: Config) -> Self {
        let addr = listener.local_addr().expect("listener has an address");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gonest_sessiond::run(listener, config, async {
            stopped.await.ok();
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid url")
            .connect_lazy();
        Self {
            addr,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A listener on `addr` again, once a stopped daemon's listener there is gone (its server
    /// task is dropped a moment after [`stop`](Self::stop) returns): tries for 5 s.
    pub async fn listen_again(addr: SocketAddr) -> TcpListener {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return listener,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(err) => panic!("cannot listen on {addr} again: {err}"),
            }
        }
    }

    /// Its URL for clients, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC client of its session store, on [`channel`](Self::channel).
    pub fn client(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(self.channel.clone())
    }

    /// Signals shutdown, waits for it, and returns what the daemon's `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A `redis-server` of its own for a test: on a Unix socket in a fresh directory (no port to
/// race for), without persistence, killed when dropped. Needs `redis-server` on the `PATH`
/// (Debian: `apt-get install redis-server`).
#[derive(Debug)]
pub struct RedisServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
    /// A loopback TCP port too, for replicas (0: none).
    port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a primary that replicas can reach: it also listens on a loopback TCP port.
    pub async fn start_primary() -> Self {
        let port = free_cluster_ports(1)[0];
        let mut server = Self::start_with(&["--port".to_owned(), port.to_string()]).await;
        server.port = port;
        server
    }

    /// Starts a replica of `primary` (from [`start_primary`](Self::start_primary)) and waits
    /// until it is in sync.
    pub async fn start_replica_of(primary: &RedisServer) -> Self {
        assert!(primary.port != 0, "a primary from start_primary");
        // On a loopback port too, so that Sentinel can reach it and promote it.
        let port = free_cluster_ports(1)[0];
        let mut replica = Self::start_with(&[
            "--port".to_owned(),
            port.to_string(),
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port.to_string(),
        ])
        .await;
        replica.port = port;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let info = std::process::Command::new("redis-cli")
                .arg("-s")
                .arg(&replica.socket)
                .args(["INFO", "replication"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica not in sync: {info}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn start_with(extra: &[String]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gonest-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        let socket = dir.join("redis.sock");
        let child = Self::spawn(&dir, &socket, extra);
        let server = Self {
            child,
            dir,
            socket,
            port: 0,
        };
        server.wait_until_ready().await;
        server
    }

    fn spawn(
        dir: &std::path::Path,
        socket: &std::path::Path,
        extra: &[String],
    ) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--unixsocket")
            .arg(socket)
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start redis-server: install it (apt-get install redis-server)")
    }

    /// Waits (10 s at most) until it answers `PING`.
    async fn wait_until_ready(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = tokio::net::UnixStream::connect(&self.socket).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut answer).await.is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Kills it, as a crash would (its data is gone: it runs with `--save ''`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Makes it hang: it stops answering (SIGSTOP) with its connections left open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets it answer again after [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} failed");
    }

    /// Starts it again after [`kill`](Self::kill), on the same socket, and waits until it
    /// answers.
    pub async fn start_again(&mut self) {
        let port = (self.port != 0).then(|| ["--port".to_owned(), self.port.to_string()]);
        self.child = Self::spawn(
            &self.dir,
            &self.socket,
            port.as_ref().map_or(&[], |p| &p[..]),
        );
        self.wait_until_ready().await;
    }

    /// Its URL for clients, `unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its loopback TCP port (0 unless started with [`start_primary`](Self::start_primary)).
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// What `redis-cli -h 127.0.0.1 -p PORT ARGS…` prints (empty if it cannot run).
fn redis_cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// A Redis Sentinel (`redis-server --sentinel`) on a free loopback port, watching one master as
/// `service` with a quorum of 1: it calls a master down after 1 s without an answer and fails
/// over to a replica. Killed when dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
    service: String,
}

impl RedisSentinel {
    /// Starts one watching `primary` (from [`RedisServer::start_primary`]), and waits until it
    /// knows `replicas` replicas of it.
    pub async fn start(primary: &RedisServer, service: &str, replicas: usize) -> Self {
        assert!(primary.port != 0, "a primary from start_primary");
        let port = free_cluster_ports(1)[0];
        let dir =
            std::env::temp_dir().join(format!("gonest-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the sentinel");
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {service} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n",
                primary = primary.port
            ),
        )
        .expect("the sentinel's configuration");
        let child = std::process::Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start redis-server --sentinel: install redis-server");
        let sentinel = Self {
            child,
            dir,
            port,
            service: service.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let known = sentinel.cli(&["SENTINEL", "REPLICAS", service]);
            if known.lines().filter(|line| line.trim() == "name").count() >= replicas {
                return sentinel;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sentinel did not find {replicas} replicas: {known}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The port of the master it names now.
    pub fn master_port(&self) -> Option<u16> {
        let answer = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.service]);
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// The URL of the master it watches: `redis+sentinel://127.0.0.1:PORT/SERVICE`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/{}", self.port, self.service)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters for a test, on loopback ports chosen free (each node's port
/// and its bus port, port + 10000), created with `redis-cli --cluster create` and ready when
/// returned; killed when dropped. Needs `redis-server` and `redis-cli`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<(u16, std::process::Child)>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three nodes and makes them one cluster.
    pub async fn start() -> Self {
        Self::start_nodes(3, 0).await
    }

    /// Starts six nodes: three masters, each with one replica.
    pub async fn start_with_replicas() -> Self {
        Self::start_nodes(6, 1).await
    }

    async fn start_nodes(count: usize, replicas: usize) -> Self {
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gonest-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        let mut nodes = Vec::new();
        for port in free_cluster_ports(count) {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("a directory for a node");
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("cannot start redis-server: install it (apt-get install redis-server)");
            nodes.push((port, child));
        }
        let cluster = Self { nodes, dir };
        for port in cluster.ports() {
            cluster.wait_for(port, "PING", "PONG").await;
        }
        let addresses: Vec<String> = cluster
            .ports()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("cannot run redis-cli: install it (apt-get install redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in cluster.ports() {
            cluster
                .wait_for(port, "CLUSTER INFO", "cluster_state:ok")
                .await;
        }
        cluster
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().map(|(port, _)| *port)
    }

    /// Waits (30 s at most) until `command` on the node at `port` answers with `expected` in it.
    async fn wait_for(&self, port: u16, command: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let answer = self.cli(port, command);
            if answer.contains(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {port} did not answer {expected} to {command}: {answer}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// What `redis-cli -p PORT COMMAND` prints.
    pub fn cli(&self, port: u16, command: &str) -> String {
        redis_cli(port, &command.split_whitespace().collect::<Vec<_>>())
    }

    /// Has a replica take over from its master (`CLUSTER FAILOVER`, the graceful, lossless
    /// kind), and waits until it is a master and the cluster is whole. Returns its port.
    pub async fn fail_over(&self) -> u16 {
        let port = self
            .ports()
            .find(|&port| self.cli(port, "ROLE").starts_with("slave"))
            .expect("a cluster started with replicas");
        // Only a replica in sync can take over.
        self.wait_for(port, "INFO replication", "master_link_status:up")
            .await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.cli(port, "ROLE").starts_with("master") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {port} did not take over"
            );
            // Asked again now and then: a request made before every node knew the replica
            // times out without a word.
            let answer = self.cli(port, "CLUSTER FAILOVER");
            assert!(answer.contains("OK"), "CLUSTER FAILOVER: {answer}");
            for _ in 0..40 {
                if self.cli(port, "ROLE").starts_with("master") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        for port in self.ports() {
            self.wait_for(port, "CLUSTER INFO", "cluster_state:ok")
                .await;
        }
        port
    }

    /// Keys held by each master.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports()
            .map(|port| self.cli(port, "DBSIZE").trim().parse().unwrap_or(0))
            .collect()
    }

    /// Its URL for clients: `redis+cluster://` and every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` loopback ports, each free along with its cluster bus port (port + 10000).
fn free_cluster_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    while ports.len() < count {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = listener.local_addr().expect("an address").port();
        let Some(bus) = port.checked_add(10000) else {
            continue;
        };
        if let Ok(bus_listener) = std::net::TcpListener::bind(("127.0.0.1", bus)) {
            ports.push(port);
            held.push(bus_listener);
        }
        held.push(listener);
    }
    ports
}

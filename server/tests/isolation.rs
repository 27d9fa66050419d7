//! No peer holds what other clients need: connections that never finish their handshake are
//! closed, the number of connections is capped, and a peer that asks for answers and never
//! reads them costs the daemon a bounded amount of memory.

mod common;

use std::time::Duration;

use common::{Daemon, Process};
use gonest_session_proto::pb;
use gonest_sessiond::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connects and sends `bytes`, then nothing more.
async fn half_open(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Waits for the daemon to close `stream` (a minute at most: the test fails if it does not).
async fn closed_by_daemon(mut stream: TcpStream) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buffer))
            .await
            .expect("the daemon kept a half-open connection");
        match read {
            Ok(0) | Err(_) => return,
            // A daemon may answer the preface with its own SETTINGS before giving up.
            Ok(_) => {}
        }
    }
}

async fn served(daemon: &Daemon) {
    let mut client = daemon.client();
    let saved = client
        .save(pb::SaveRequest {
            session: Some(pb::Session {
                id: "normal".into(),
                ..Default::default()
            }),
            expected_version: None,
            ttl: None,
        })
        .await
        .unwrap();
    assert!(saved.into_inner().version >= 1);
}

// Paused time: the handshake timeout passes as soon as everything is idle, no real waiting.
#[tokio::test(start_paused = true)]
async fn a_handshake_left_unfinished_is_closed() {
    let daemon = Daemon::start(Config::default()).await;
    let mut settings = PREFACE.to_vec();
    settings.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0]); // SETTINGS of 6 bytes, 3 sent:
    settings.extend_from_slice(&[0, 3, 0]);
    for bytes in [
        &b"P"[..],
        &PREFACE[..10],
        PREFACE,
        &settings[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        closed_by_daemon(half_open(daemon.addr, bytes).await).await;
    }
    served(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_while_2000_half_open_connections_are_held() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    // Both ends of every connection are in this process.
    rlimit::increase_nofile_limit(8192).unwrap();
    let daemon = Daemon::start(Config {
        handshake_timeout: Duration::from_secs(120),
        ..Config::default()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..2000 {
        let bytes: &[u8] = if i % 2 == 0 { b"P" } else { &PREFACE[..20] };
        held.push(half_open(daemon.addr, bytes).await);
    }
    tokio::time::timeout(Duration::from_secs(10), served(&daemon))
        .await
        .expect("a normal client waited behind half-open connections");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let daemon = Daemon::start(Config {
        max_connections: Some(10),
        handshake_timeout: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(half_open(daemon.addr, b"P").await);
    }
    let started = tokio::time::Instant::now();
    closed_by_daemon(half_open(daemon.addr, PREFACE).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed at once, not at the handshake timeout"
    );
    // Once the held ones go, clients are served again.
    drop(held);
    served(&daemon).await;
}

/// Taken by the tests that load the daemon with an attack and time or weigh what it does
/// meanwhile, so that no two of them share the machine's cores.
static ONE_ATTACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The daemon process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A `Pipeline` request body of `gets` Gets of session `id`: as many messages, or one batch.
fn gets_body(id: &str, gets: u64, batched: bool) -> bytes::Bytes {
    use bytes::BufMut;
    use prost::Message;
    let requests = (1..=gets).map(|tag| pb::PipelineRequest {
        tag,
        op: Some(pb::pipeline_request::Op::Get(pb::GetRequest {
            id: id.into(),
        })),
        batch: Vec::new(),
    });
    let messages: Vec<pb::PipelineRequest> = if batched {
        vec![pb::PipelineRequest {
            tag: 0,
            op: None,
            batch: requests.collect(),
        }]
    } else {
        requests.collect()
    };
    let mut body = bytes::BytesMut::new();
    for message in messages {
        let message = message.encode_to_vec();
        body.put_u8(0);
        body.put_u32(u32::try_from(message.len()).unwrap());
        body.put_slice(&message);
    }
    body.freeze()
}

type Client = pb::session_store_client::SessionStoreClient<tonic::transport::Channel>;

/// A daemon process started with `flags`, holding one session `id` of one `value_len`-byte
/// value, and a client of it.
async fn daemon_holding(flags: &[&str], id: &str, value_len: usize) -> (Process, Client) {
    let daemon = Process::start(flags).await;
    let channel = tonic::transport::Channel::from_shared(daemon.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = Client::new(channel).max_decoding_message_size(usize::MAX);
    let value = vec![b'x'; value_len];
    client
        .save(pb::SaveRequest {
            session: Some(pb::Session {
                id: id.into(),
                data: [("blob".to_owned(), value.into())].into(),
                ..Default::default()
            }),
            expected_version: None,
            ttl: None,
        })
        .await
        .unwrap();
    (daemon, client)
}

/// A normal client, meanwhile, reads session `id` within 5 s.
async fn reads_within_5_s(client: &mut Client, id: &str) {
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(pb::GetRequest { id: id.into() }),
    )
    .await
    .expect("a normal client was not served meanwhile")
    .unwrap();
    assert!(got.into_inner().session.is_some());
}

/// One connection that opens as many `Pipeline` streams as the daemon allows (up to 256), asks
/// each for `gets` Gets of session `id` (as many messages, or as one batch), and never reads an
/// answer. Its HTTP/2 connection is
/// driven (so the daemon sees its window updates and pings answered) until dropped.
struct NeverReads {
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)>,
    connection: tokio::task::JoinHandle<()>,
}

impl NeverReads {
    async fn open(addr: &str, id: &str, gets: u64, batched: bool) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let body = gets_body(id, gets, batched);
        let mut streams = Vec::new();
        for _ in 0..256 {
            // The daemon allows fewer streams than asked for: stop when no more are granted.
            let Ok(Ok(ready)) =
                tokio::time::timeout(Duration::from_millis(500), client.clone().ready()).await
            else {
                break;
            };
            client = ready;
            let request = common::pipeline_request(addr).body(()).unwrap();
            let (response, mut send) = client.send_request(request, false).unwrap();
            send.send_data(body.clone(), false).unwrap();
            streams.push((response, send));
        }
        assert!(streams.len() >= 16, "only {} streams opened", streams.len());
        Self {
            _streams: streams,
            connection,
        }
    }
}

impl Drop for NeverReads {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// One connection that opens windows as wide as HTTP/2 allows, asks for `gets` Gets of session
/// `id` on every stream the daemon allows, reads until each stream has had its first answer,
/// then never reads its socket again (its HTTP/2 connection is kept, not driven).
struct StopsReading {
    _streams: Vec<(h2::RecvStream, h2::SendStream<bytes::Bytes>)>,
    _connection: h2::client::Connection<TcpStream, bytes::Bytes>,
}

impl StopsReading {
    async fn open(addr: &str, id: &str, gets: u64) -> Self {
        const WIDEST: u32 = (1 << 31) - 1;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, mut connection) = h2::client::Builder::new()
            .initial_window_size(WIDEST)
            .initial_connection_window_size(WIDEST)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let body = gets_body(id, gets, false);
        // Driven here only until every stream has its first answer: its requests were all sent.
        let opened = async {
            let mut pending = Vec::new();
            for _ in 0..gonest_sessiond::MAX_STREAMS_PER_CONNECTION {
                client = client.ready().await.unwrap();
                let request = common::pipeline_request(addr).body(()).unwrap();
                let (response, mut send) = client.send_request(request, false).unwrap();
                send.send_data(body.clone(), false).unwrap();
                pending.push((response, send));
            }
            let mut streams = Vec::new();
            for (response, send) in pending {
                let mut answers = response.await.unwrap().into_body();
                answers.data().await.unwrap().unwrap();
                streams.push((answers, send));
            }
            streams
        };
        let streams = tokio::select! {
            streams = opened => streams,
            ended = &mut connection => panic!("connection ended: {ended:?}"),
        };
        Self {
            _streams: streams,
            _connection: connection,
        }
    }
}

/// Answers small enough to be copied into the response frames, asked for on every stream of
/// three connections whose windows are wide open and whose sockets are never read: each stream
/// alone could hold hyper's send buffer (400 KiB) of them, but the daemon produces at most its
/// answer budget per connection beyond what the socket took. (With the budget ignored, the
/// daemon grew by 72 MiB here.) Run at two budgets, the growth shows the bytes of memory each
/// budget byte costs and the part that does not depend on it (`--nocapture` prints them;
/// docs/security.md has the figures). The budgets are 15 MiB apart: the daemon's memory grows in
/// the 2 MiB steps of huge pages, which over 7 MiB moved the figure by up to 0.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_answers_nobody_reads_are_held_to_the_connections_budget() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    const MIB: u64 = 1 << 20;
    let mut grown = Vec::new();
    for budget in [1, 16] {
        let growth = stopped_readers_growth(budget).await;
        eprintln!(
            "budget {budget} MiB per connection: the daemon grew by {:.1} MiB",
            growth as f64 / MIB as f64
        );
        // Three budgets of answers, and room for what does not depend on them.
        assert!(
            growth < 5 * 3 * budget * MIB / 2 + 16 * MIB,
            "RSS grew by {} MiB under three connections that stopped reading, at a budget of \
             {budget} MiB",
            growth / MIB
        );
        grown.push(growth as f64);
    }
    let per_budget_byte = (grown[1] - grown[0]) / (3.0 * 15.0 * MIB as f64);
    eprintln!(
        "{per_budget_byte:.2} bytes per budget byte, {:.1} MiB besides",
        (grown[0] - per_budget_byte * 3.0 * MIB as f64) / MIB as f64
    );
}

/// How much the daemon grows, at an answer budget of `budget_mib` MiB per connection, under
/// three connections that ask for 300 Gets of a 4 KiB session on every stream and then stop
/// reading; a normal client is served meanwhile.
async fn stopped_readers_growth(budget_mib: u64) -> u64 {
    // 4 KiB with its key: well under the size at which a value is sent as a slice of the stored
    // session.
    let budget = format!("{budget_mib}MiB");
    let flags = ["--max-unsent-answer-bytes", budget.as_str()];
    let (daemon, mut client) = daemon_holding(&flags, "mid", 4096 - 4).await;
    let pid = daemon.child.id().unwrap();
    let before = rss(pid);
    let mut peers = Vec::new();
    for _ in 0..3 {
        // 300 answers of 4 KiB a stream: three times hyper's send buffer.
        peers.push(StopsReading::open(&daemon.addr, "mid", 300).await);
    }
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss(pid));
    }
    reads_within_5_s(&mut client, "mid").await;
    drop(peers);
    peak.saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_cost_bounded_memory_which_is_returned() {
    never_reading_peers(40, false, &[]).await;
}

/// One batch of many Gets of a large session is answered in parts, each under the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_large_answers_nobody_reads_costs_bounded_memory() {
    never_reading_peers(100, true, &[]).await;
}

/// On Redis, where a stream's operations run at once, the same peers cost bounded memory too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_on_redis_cost_bounded_memory() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let backend = ["--backend", &redis.url()];
    never_reading_peers(40, false, &backend).await;
    never_reading_peers(100, true, &backend).await;
}

/// Three connections that never read ask for `gets` Gets of a 1 MiB session on every stream
/// they may open: the daemon's memory stays bounded, a normal client is served meanwhile, and
/// the memory is returned once they go.
async fn never_reading_peers(gets: u64, batched: bool, flags: &[&str]) {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    const MIB: u64 = 1 << 20;
    // A session at the default 1 MiB limit: key and value.
    let (daemon, mut client) = daemon_holding(flags, "big", (1 << 20) - 4).await;
    let pid = daemon.child.id().unwrap();
    let before = rss(pid);

    let addr = daemon.addr.clone();
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(NeverReads::open(&addr, "big", gets, batched).await);
    }
    // Sample the daemon's memory while the attack runs; a normal client is served meanwhile.
    let mut peak = 0;
    for sample in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss(pid));
        if sample == 15 {
            reads_within_5_s(&mut client, "big").await;
        }
    }
    eprintln!(
        "daemon RSS: {} MiB before, {} MiB at the peak of the attack",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak < 256 * MIB,
        "RSS reached {} MiB under three connections that never read",
        peak / MIB
    );

    drop(attackers);
    let mut after = rss(pid);
    for _ in 0..100 {
        if after < before + 64 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss(pid);
    }
    eprintln!("daemon RSS: {} MiB after the attack", after / MIB);
    assert!(
        after < before + 64 * MIB,
        "memory was kept after the attack: {} MiB, from {} MiB",
        after / MIB,
        before / MIB
    );
}

/// Eight streams of one connection each send, again and again for 2 s, the largest message the
/// daemon reads (2 MiB) filled with empty batch operations, two bytes each: a million per
/// message, had nothing capped them (they once took the daemon to 2.6 GiB and it kept 1.9). The
/// daemon's memory stays under 256 MiB, another client's Gets meanwhile (one every 5 ms) have a
/// p99 under 50 ms (100 ms on Redis, where each Get is a second hop to a Redis sharing the same
/// two cores), and a second burst finds the memory the first took free to reuse: the daemon does
/// not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_million_empty_batch_operations_cost_bounded_memory() {
    many_empty_operations(&[], Duration::from_millis(50)).await;
    // The same attack against a daemon on Redis, after the first (two at once would share the
    // machine's two cores with each other's attackers).
    let redis = gonest_session_test_support::RedisServer::start().await;
    many_empty_operations(&["--backend", &redis.url()], Duration::from_millis(100)).await;
}

/// The attack against a daemon started with `flags`, twice; Gets meanwhile within `p99_bound`.
async fn many_empty_operations(flags: &[&str], p99_bound: Duration) {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    const MIB: u64 = 1 << 20;
    let (daemon, mut client) = daemon_holding(flags, "normal", 1024).await;
    let pid = daemon.child.id().unwrap();
    let before = rss(pid);
    let first = empty_operations_burst(&daemon, &mut client, p99_bound).await;
    let second = empty_operations_burst(&daemon, &mut client, p99_bound).await;
    eprintln!(
        "daemon RSS {} MiB before, {} MiB after one burst, {} MiB after two",
        before / MIB,
        first / MIB,
        second / MIB
    );
    assert!(
        second < first + 16 * MIB,
        "the second burst grew the daemon from {} to {} MiB",
        first / MIB,
        second / MIB
    );
}

/// One burst of the attack above, with the Gets of `client` meanwhile (their p99 under
/// `p99_bound`); returns the daemon's memory once it is over.
async fn empty_operations_burst(daemon: &Process, client: &mut Client, p99_bound: Duration) -> u64 {
    use bytes::BufMut;
    const MIB: u64 = 1 << 20;
    const STREAMS: usize = 8;
    let pid = daemon.child.id().unwrap();
    // The largest message the daemon reads at its default 1 MiB session limit.
    let limit = gonest_session_proto::message_limit(1 << 20);
    let mut body = bytes::BytesMut::with_capacity(5 + limit);
    body.put_u8(0);
    body.put_u32(u32::try_from(limit).unwrap());
    for _ in 0..limit / 2 {
        // PipelineRequest.batch (field 6, length-delimited), empty.
        body.put_slice(&[0x32, 0x00]);
    }
    let body = body.freeze();

    let tcp = TcpStream::connect(&daemon.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut attackers = Vec::new();
    for _ in 0..STREAMS {
        let (mut sender, body, addr) = (sender.clone(), body.clone(), daemon.addr.clone());
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while tokio::time::Instant::now() < deadline {
                sender = sender.ready().await.unwrap();
                let request = common::pipeline_request(&addr).body(()).unwrap();
                let (response, mut send) = sender.send_request(request, false).unwrap();
                send.send_data(body.clone(), true).unwrap();
                sent += 1;
                // Whatever comes back is read and let go.
                let Ok(response) = response.await else {
                    continue;
                };
                let mut answers = response.into_body();
                while let Some(Ok(data)) = answers.data().await {
                    let _ = answers.flow_control().release_capacity(data.len());
                }
            }
            sent
        }));
    }

    let mut peak = 0;
    let mut latencies = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let started = std::time::Instant::now();
        reads_within_5_s(client, "normal").await;
        latencies.push(started.elapsed());
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut sent = 0;
    for attacker in attackers {
        sent += attacker.await.unwrap();
    }
    connection.abort();
    peak = peak.max(rss(pid));
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{sent} messages of {} operations; daemon RSS {} MiB at the peak; {} Gets meanwhile, \
         p99 {p99:?}",
        limit / 2,
        peak / MIB,
        latencies.len()
    );
    assert!(sent >= STREAMS as u32, "the attack ran");
    assert!(peak < 256 * MIB, "RSS reached {} MiB", peak / MIB);
    assert!(p99 < p99_bound, "Get p99 {p99:?}");
    // Gets a moment after, by which the attack's streams are gone.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        reads_within_5_s(client, "normal").await;
    }
    rss(pid)
}

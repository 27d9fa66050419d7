//! Accepting connections: at most `--max-connections` at once, and only peers that complete
//! their TLS handshake (when TLS is on), HTTP/2 preface and first SETTINGS frame within the
//! handshake timeout are handed to the gRPC server.
//!
//! A socket costs the daemon a file descriptor whether or not the peer ever speaks, so one that
//! sends a byte and stops, or half a preface, must be dropped as surely as one that sends
//! nothing; and the number of connections is capped below the descriptor limit, so an attacker
//! holding sockets open makes new connections wait, never fail every other client's accept.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::budget::AnswerBudget;

/// What every HTTP/2 client sends first (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The HTTP/2 frame type of SETTINGS, which must follow the preface.
const SETTINGS: u8 = 0x4;
/// The largest first SETTINGS frame accepted: far more than the six standard settings take.
const MAX_SETTINGS_LEN: usize = 1024;
/// How often a refused connection is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How connections are accepted.
#[derive(Clone)]
pub(crate) struct Accept {
    /// Time from accept to a complete TLS handshake, preface and SETTINGS frame.
    pub(crate) handshake_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub(crate) max_connections: usize,
    /// One permit per connection that may be open (`max_connections` of them).
    pub(crate) slots: Arc<Semaphore>,
    /// TLS, when the daemon serves it.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Each connection's budget of answer bytes in flight.
    pub(crate) answer_budget: usize,
}

/// What every call on a connection can see of it, from its request extensions.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The connection's answer budget.
    pub(crate) budget: Arc<AnswerBudget>,
}

/// Accepts connections from `listener` under `accept`'s rules and hands on those that finished
/// their handshake, with Nagle's algorithm off (answers are small and wanted at once). The
/// acceptor stops when the returned stream is dropped.
pub(crate) fn accept(listener: TcpListener, accept: Accept) -> ReceiverStream<io::Result<Conn>> {
    let (ready, incoming) = mpsc::channel(128);
    let slots = accept.slots.clone();
    tokio::spawn(async move {
        let mut refusals = Refusals::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: say so, pause, go on accepting.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closing it at once gives the descriptor back and tells the client to retry.
                drop(stream);
                refusals.refused(accept.max_connections);
                continue;
            };
            let (ready, accept) = (ready.clone(), accept.clone());
            tokio::spawn(async move {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "cannot set TCP_NODELAY");
                }
                let handshake = handshake(stream, accept.tls.as_ref());
                match tokio::time::timeout(accept.handshake_timeout, handshake).await {
                    Ok(Ok((transport, prefix))) => {
                        let conn = Conn {
                            transport,
                            prefix,
                            replayed: 0,
                            info: ConnInfo {
                                budget: Arc::new(AnswerBudget::new(accept.answer_budget)),
                            },
                            _slot: slot,
                        };
                        let _ = ready.send(Ok(conn)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%err, %peer, "handshake failed; closed"),
                    Err(_) => tracing::debug!(%peer, "handshake not finished in time; closed"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Counts connections refused for `--max-connections` and logs them, once per
/// [`REFUSAL_LOG_EVERY`] at most.
#[derive(Default)]
struct Refusals {
    since_logged: u64,
    last_logged: Option<tokio::time::Instant>,
}

impl Refusals {
    fn refused(&mut self, limit: usize) {
        self.since_logged += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                refused = self.since_logged,
                max_connections = limit,
                "connections refused: --max-connections are open"
            );
            self.since_logged = 0;
            self.last_logged = Some(now);
        }
    }
}

/// The TLS handshake, if any, then the client's preface and first SETTINGS frame, which are
/// returned to be replayed to the HTTP/2 server.
async fn handshake(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
) -> io::Result<(Transport, Vec<u8>)> {
    let mut transport = match tls {
        Some(acceptor) => Transport::Tls(Box::new(acceptor.accept(stream).await?)),
        None => Transport::Plain(stream),
    };
    let mut prefix = vec![0; PREFACE.len() + 9];
    transport.read_exact(&mut prefix).await?;
    if &prefix[..PREFACE.len()] != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 client",
        ));
    }
    let header = &prefix[PREFACE.len()..];
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || length > MAX_SETTINGS_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the preface is not followed by a SETTINGS frame",
        ));
    }
    let start = prefix.len();
    prefix.resize(start + length, 0);
    transport.read_exact(&mut prefix[start..]).await?;
    Ok((transport, prefix))
}

/// The byte stream under a connection.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: replays the bytes read during the handshake, then reads on; counts
/// what it writes against the connection's answer budget; holds its place among
/// `--max-connections` until dropped.
pub(crate) struct Conn {
    transport: Transport,
    /// The preface and SETTINGS frame read during the handshake.
    prefix: Vec<u8>,
    /// How much of `prefix` has been read back.
    replayed: usize,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.prefix.len() {
            let rest = &this.prefix[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.prefix.len() {
                this.prefix = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.transport).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = written {
            this.info.budget.written(n);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = written {
            this.info.budget.written(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

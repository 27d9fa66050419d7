//! Accepting connections: a connection that sends nothing is dropped instead of being held.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How long a new connection may stay silent before it is closed. A gRPC client sends its
/// HTTP/2 preface (or TLS hello) at once; holding silent sockets open would let anyone exhaust
/// the daemon's file descriptors just by connecting.
pub(crate) const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections from `listener` and hands on those that send something within
/// `timeout`, with Nagle's algorithm off (answers are small and wanted at once). The acceptor
/// stops when the returned stream is dropped.
pub(crate) fn accept(
    listener: TcpListener,
    timeout: Duration,
) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (ready, incoming) = mpsc::channel(128);
    tokio::spawn(async move {
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
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "cannot set TCP_NODELAY");
                }
                // `peek` waits for real bytes (readiness alone can be a false alarm) and leaves
                // them for the server to read.
                let mut first = [0u8; 1];
                match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                    Ok(Ok(1..)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Ok(0)) => tracing::debug!(%peer, "connection closed before sending"),
                    Ok(Err(err)) => tracing::debug!(%err, %peer, "connection failed"),
                    Err(_) => tracing::debug!(%peer, "connection sent nothing; closed"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

//! One client connection: read commands in order, run each, buffer the replies and
//! flush them whenever no further complete command is waiting.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use redis_protocol::tokio_util::codec::Framed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Shared;
use super::backend::{Backend, ReadConsistency};
use super::codec::{CommandCodec, ProtocolError};
use super::commands::{self, Flow};
use super::reply;

/// After a protocol error, how long to keep reading (and discarding) what the client
/// still sends, so that closing the socket sends FIN rather than a reset that could
/// destroy the error reply before the client reads it.
const LINGER: Duration = Duration::from_millis(500);
/// The most bytes discarded while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

/// What one connection remembers between commands.
#[derive(Debug)]
pub struct Session {
    /// The id `CLIENT ID` reports.
    pub id: u64,
    /// The name set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// The consistency of this connection's reads (`READONLY`/`READWRITE`).
    pub consistency: ReadConsistency,
}

/// Serves one connection until the client quits, disconnects or breaks the protocol.
pub(super) async fn run<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared<B>,
) {
    // Replies are already batched per pipeline; Nagle would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "set TCP_NODELAY: {e}");
    }
    let mut framed = Framed::new(stream, CommandCodec::new(shared.config.limits));
    let mut session = Session {
        id,
        name: None,
        consistency: ReadConsistency::Linearizable,
    };
    loop {
        // A command already buffered is taken without flushing, so a pipeline's
        // replies leave in as few writes as the socket allows.
        let next = match framed.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Err(e) = framed.flush().await {
                    tracing::debug!(%peer, "write replies: {e}");
                    return;
                }
                framed.next().await
            }
        };
        let args = match next {
            None => break,
            Some(Ok(args)) => args,
            Some(Err(e)) => {
                close_on_error(framed, peer, e).await;
                return;
            }
        };
        let (frame, flow) = commands::execute(shared, &mut session, args).await;
        if let Err(e) = framed.feed(frame).await {
            tracing::debug!(%peer, "write replies: {e}");
            return;
        }
        if flow == Flow::Close {
            break;
        }
    }
    if let Err(e) = framed.flush().await {
        tracing::debug!(%peer, "write replies: {e}");
    }
}

/// Answers a protocol error, half-closes, and drains the client's input for a
/// moment so the error reply survives the close.
async fn close_on_error(
    mut framed: Framed<TcpStream, CommandCodec>,
    peer: SocketAddr,
    e: ProtocolError,
) {
    if !e.is_client_fault() {
        tracing::debug!(%peer, "connection closed: {e}");
        return;
    }
    tracing::debug!(%peer, "closing connection on protocol error: {e}");
    if framed
        .send(reply::error(format!("ERR Protocol error: {e}")))
        .await
        .is_err()
    {
        return;
    }
    let mut stream = framed.into_inner();
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = vec![0u8; 16 * 1024];
    let mut discarded = 0usize;
    let drain = async {
        while discarded < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    // Ran out of time: close anyway.
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Tells a client over `max_clients` so, and closes.
pub(super) async fn refuse(mut stream: TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "refused a redis connection: max number of clients reached");
    // The client may already be gone; there is nothing more to do either way.
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

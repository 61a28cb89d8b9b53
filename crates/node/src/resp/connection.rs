//! One client connection: read commands in order, run each, buffer the replies and
//! flush them whenever no further complete command is waiting.
//!
//! The connection is generic over its byte stream (`AsyncRead + AsyncWrite`), so a
//! TLS stream can be served exactly as a TCP one: the accept loop owns everything
//! that is specific to TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use redis_protocol::tokio_util::codec::Framed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::backend::{Backend, ReadConsistency};
use super::codec::{CommandCodec, ProtocolError};
use super::commands::{self, Flow};
use super::reply::{self, Protocol};

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
    /// The client's address.
    pub peer: SocketAddr,
    /// When the connection was accepted (`CLIENT INFO`'s `age`).
    pub since: Instant,
    /// The name set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// The library name set by `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Vec<u8>>,
    /// The library version set by `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Vec<u8>>,
    /// The consistency of this connection's reads (`READONLY`/`READWRITE`).
    pub consistency: ReadConsistency,
    /// The protocol replies are written in (`HELLO 2|3`).
    pub protocol: Protocol,
    /// Whether the client may run commands: from the start when the server has no
    /// password, after a successful `AUTH` or `HELLO ... AUTH` when it has one.
    pub authenticated: bool,
    /// Failed authentication attempts on this connection (the first is logged as a
    /// warning, later ones at debug level, so one client cannot flood the log).
    pub auth_failures: u64,
}

impl Session {
    /// A new connection's session: RESP2, linearizable reads, and authenticated
    /// only when the server asks no password.
    pub(super) fn new(id: u64, peer: SocketAddr, password_required: bool) -> Session {
        Session {
            id,
            peer,
            since: Instant::now(),
            name: None,
            lib_name: None,
            lib_ver: None,
            consistency: ReadConsistency::Linearizable,
            protocol: Protocol::Resp2,
            authenticated: !password_required,
            auth_failures: 0,
        }
    }
}

/// Serves one connection until the client quits, disconnects or breaks the protocol.
pub(super) async fn run<B: Backend, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    shared: &Shared<B>,
) {
    let mut session = Session::new(id, peer, shared.config.password.is_some());
    let mut codec = CommandCodec::new(shared.config.limits);
    codec.set_authenticated(session.authenticated);
    let mut framed = Framed::new(stream, codec);
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
        // The command may have switched the protocol (`HELLO 3`, whose own reply is
        // already in the new one) or authenticated the client (whose next command
        // is framed under the configured limits).
        let codec = framed.codec_mut();
        codec.set_protocol(session.protocol);
        codec.set_authenticated(session.authenticated);
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
async fn close_on_error<S: AsyncRead + AsyncWrite + Unpin>(
    mut framed: Framed<S, CommandCodec>,
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
pub(super) async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, peer: SocketAddr) {
    tracing::warn!(%peer, "refused a redis connection: max number of clients reached");
    // The client may already be gone; there is nothing more to do either way.
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

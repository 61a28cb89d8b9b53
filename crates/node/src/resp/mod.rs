//! The data API: a Redis-protocol server (RESP2 and RESP3) in front of a
//! [`Backend`].
//!
//! Ordinary Redis clients (`redis-cli`, redis-rs, redis-py, go-redis) talk to a
//! sealkv node through [`serve`]. The server parses commands, turns each into reads
//! or one [`KvRequest`](sealkv_kv::KvRequest) for the backend, and answers with
//! Redis's reply shapes and error texts. It knows nothing of Raft: the node's Raft
//! driver implements [`Backend`], and the two meet only there. A connection is
//! served over any `AsyncRead + AsyncWrite` stream; [`serve`] accepts TCP.
//!
//! # Commands
//!
//! | command | notes |
//! |---|---|
//! | `PING [message]`, `ECHO message` | |
//! | `GET key`, `MGET key [key ...]` | |
//! | `SET key value [EX s \| PX ms \| EXAT unix-s \| PXAT unix-ms] [NX \| XX]` | `KEEPTTL` and `GET` are refused |
//! | `MSET key value [key value ...]` | one atomic entry |
//! | `DEL key [key ...]`, `EXISTS key [key ...]` | `EXISTS` counts repeated keys, as Redis does |
//! | `INCR`, `DECR`, `INCRBY`, `DECRBY` | |
//! | `EXPIRE key seconds` | Redis 6 form (no `NX`/`XX`/`GT`/`LT`); a TTL ≤ 0 deletes |
//! | `TTL key`, `PTTL key` | `-2` missing, `-1` no expiry |
//! | `DBSIZE` | |
//! | `INFO [section ...]` | sections `server`, `replication` (`default`, `all`, `everything` give both) |
//! | `COMMAND`, `COMMAND COUNT \| LIST \| INFO \| DOCS \| HELP` | `DOCS` answers an empty map |
//! | `CLIENT SETNAME \| GETNAME \| SETINFO \| ID \| INFO \| HELP` | `SETINFO LIB-NAME\|LIB-VER` is kept per connection and shown by `CLIENT INFO` |
//! | `CONFIG GET parameter` | answers no parameters; `CONFIG SET` and the rest are refused |
//! | `SELECT 0` | only database 0 exists |
//! | `HELLO [2 \| 3 [AUTH username password] [SETNAME name]]` | below |
//! | `AUTH [username] password` | below |
//! | `READONLY`, `READWRITE` | the read-consistency switch, below |
//! | `QUIT` | `+OK`, then the connection closes |
//!
//! Anything else answers `ERR unknown command '...', with args beginning with: ...`.
//!
//! # Protocols: RESP2 and RESP3
//!
//! Every connection starts in RESP2, and stays there unless the client sends
//! `HELLO 3`. `HELLO 2` and `HELLO 3` switch the connection and answer Redis 7's
//! server map (`server` `redis`, `version` `7.0.0`, `proto`, `id`, `mode`
//! `standalone`, `role` `master` on the Raft leader and `replica` elsewhere,
//! `modules` empty) in the new protocol; `HELLO` alone answers it without
//! switching. Any other version is `-NOPROTO unsupported protocol version`.
//! `server` and `version` say Redis 7.0 because sealkv follows Redis 7.0's replies
//! and clients read these fields to decide what a server supports; `INFO`'s
//! `sealkv_version` names sealkv.
//!
//! Commands build protocol-neutral replies (`reply::Frame`) and the connection
//! writes them in its protocol, as Redis's `addReply*` functions do. The replies
//! that differ, as in Redis 7:
//!
//! | reply | commands | RESP3 | RESP2 |
//! |---|---|---|---|
//! | null | `GET`, `MGET` elements, `SET ... NX\|XX` not done, `CLIENT GETNAME`, `COMMAND INFO` of an unknown command | `_` | `$-1` |
//! | map | `HELLO`, `CONFIG GET`, `COMMAND DOCS` | `%` | flat array of keys and values |
//! | set | `COMMAND` / `COMMAND INFO`: flags, ACL categories, tips, key specs, subcommands | `~` | array |
//! | verbatim text | `INFO`, `CLIENT INFO` | `=` with format `txt` | bulk string |
//!
//! Every other reply (`+OK`, integers, bulk strings, arrays, errors) is the same in
//! both. No sealkv command answers a double, a boolean or a big number, and none
//! pushes. redis-py (which opens with `HELLO 3`, then `CLIENT MAINT_NOTIFICATIONS`,
//! which gets Redis 7's unknown-subcommand error and is optional for redis-py, then
//! two `CLIENT SETINFO`) and redis-rs in either mode work unchanged.
//!
//! # Authentication
//!
//! With [`Config::password`] (`--redis-password-file`) set, a connection must
//! authenticate as Redis's `default` user, the only user, before anything but
//! `AUTH`, `HELLO` and `QUIT` runs; anything else (`PING` included) answers
//! `-NOAUTH Authentication required.` once its name and arity have been checked.
//! `AUTH password`, `AUTH default password` and `HELLO <2|3> AUTH default password`
//! authenticate; a wrong password or another username is `-WRONGPASS invalid
//! username-password pair or user is disabled.` and is counted in
//! [`Config::auth_failures`] and logged, never with the password. `HELLO` without
//! `AUTH` before authenticating is Redis's `-NOAUTH HELLO must be called with the
//! client already authenticated, ...`. Until it has authenticated, a client may send
//! at most [`UNAUTHENTICATED_MAX_ARGS`] arguments of at most
//! [`UNAUTHENTICATED_MAX_BULK_LEN`] bytes per command (Redis's limits; more is a
//! protocol error that closes the connection). Passwords are compared in constant
//! time (see [`Password`]).
//!
//! Without a password every connection starts authenticated, `AUTH password` is
//! Redis's `-ERR AUTH <password> called without any password configured for the
//! default user. ...`, and `AUTH default <anything>` is `+OK`, as for Redis's
//! `nopass` default user.
//!
//! # Time
//!
//! Every write carries this server's wall clock as `issued_at_ms`, and relative
//! expiries (`EX`, `PX`, `EXPIRE`) become absolute `expire_at_ms = now + ttl` here, at
//! propose time, so every replica judges expiry the same way. `TTL`/`PTTL` subtract
//! this server's clock from the stored absolute expiry.
//!
//! # Read consistency
//!
//! Each connection starts with [`ReadConsistency::Linearizable`] reads, which only
//! the leader can serve (a follower answers `-NOTLEADER ...`). `READONLY` switches
//! the connection to [`ReadConsistency::Stale`] reads, served from the node's own
//! applied state (possibly behind the leader, but available on every node);
//! `READWRITE` switches back. Both answer `+OK`. Writes always go to the leader. The
//! names follow Redis Cluster, whose clients send `READONLY` to read from replicas.
//!
//! # The reserved keyspace
//!
//! Keys under `!encryption|` hold the encryption control plane and are not user
//! data. Writes to them go to the state machine, which refuses them with
//! `ERR key is in the reserved keyspace !encryption|`. Reads of them (`GET`, `MGET`,
//! `EXISTS`, `TTL`, `PTTL`) are answered here with the same error rather than nil,
//! so a client learns the key is unusable instead of seeing it as merely absent;
//! `MSET` is refused here as a whole, so it stays atomic.
//!
//! # Errors
//!
//! A backend failure becomes an error reply (see [`ApiError::redis_error`]) and the
//! connection stays open. Bytes that are not a well-formed command within
//! [`Limits`] get `-ERR Protocol error: ...` and the connection closes. Pipelined
//! commands run one after another in arrival order; replies are buffered and
//! flushed whenever no further complete command is waiting.

mod args;
mod auth;
mod backend;
mod codec;
mod commands;
mod connection;
mod info;
mod reply;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use auth::{MAX_PASSWORD_LEN, Password, PasswordError};
pub use backend::{ApiError, Backend, InfoSnapshot, RaftRole, ReadConsistency, ValueRead};
/// The connection codec, public for the fuzz targets (`crates/fuzz-targets`); not
/// part of the API.
#[doc(hidden)]
pub use codec::CommandCodec;
pub use codec::{
    Limits, MAX_HEADER_LEN, ProtocolError, UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK_LEN,
};
/// The protocol-neutral reply, public for the fuzz targets; not part of the API.
#[doc(hidden)]
pub use reply::Frame;
pub use reply::Protocol;

/// The wall clock the server stamps requests and computes expiries with, in ms
/// since the Unix epoch. [`Clock::system`] in production; tests may supply their own.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The current time in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Clock").field(&self.now_ms()).finish()
    }
}

/// How the server runs. [`Config::default`] suits production.
#[derive(Debug, Clone)]
pub struct Config {
    /// Caps on inbound commands.
    pub limits: Limits,
    /// Caps on the values and entries a write may carry, checked before it is
    /// proposed (`--max-value-bytes`, `--max-entry-bytes`).
    pub sizes: sealkv_kv::SizeLimits,
    /// The most connections served at once; one more is told
    /// `-ERR max number of clients reached` and closed (Redis's `maxclients`).
    pub max_clients: usize,
    /// How long one backend call may take before the client is answered
    /// `-TIMEOUT ...`. The backend should time out first; this is the backstop.
    pub request_timeout: Duration,
    /// The wall clock.
    pub clock: Clock,
    /// The password of the `default` user (`--redis-password-file`). With one, a
    /// connection must authenticate before any command but `AUTH`, `HELLO` and
    /// `QUIT`; without, every connection starts authenticated.
    pub password: Option<Arc<Password>>,
    /// Counts failed authentication attempts (`sealkv_auth_failures_total`).
    pub auth_failures: Option<prometheus::IntCounter>,
    /// TLS (`--certs-dir`): every connection starts with a handshake (a client
    /// certificate optional); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            sizes: sealkv_kv::SizeLimits::default(),
            max_clients: 10_000,
            request_timeout: Duration::from_secs(30),
            clock: Clock::system(),
            password: None,
            tls: None,
            auth_failures: None,
        }
    }
}

/// What every connection of one server shares.
struct Shared<B> {
    backend: Arc<B>,
    config: Config,
    started: Instant,
    /// The listening address (`CLIENT INFO`'s `laddr`, `INFO`'s `tcp_port`).
    local: std::net::SocketAddr,
    next_client_id: AtomicU64,
}

/// Runs a client's bytes through a connection's steps without a socket: the codec
/// frames each command, the command table runs it against `backend` on one session,
/// and the replies come back in order, each with the protocol the connection would
/// write it in (`HELLO 3` switches from the next reply on, as it does on a socket).
/// The input ends at the first protocol error (answered as a connection answers
/// it), at `QUIT`, or where a command is incomplete. Public for the fuzz targets
/// (`crates/fuzz-targets`); not part of the API.
#[doc(hidden)]
pub async fn run_commands<B: Backend>(
    backend: Arc<B>,
    config: Config,
    input: &[u8],
) -> Vec<(Protocol, Frame)> {
    use redis_protocol::tokio_util::codec::Decoder as _;
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 50000));
    let shared = Shared {
        backend,
        config,
        started: Instant::now(),
        local: std::net::SocketAddr::from(([127, 0, 0, 1], 6379)),
        next_client_id: AtomicU64::new(2),
    };
    let mut session = connection::Session::new(1, peer, shared.config.password.is_some());
    let mut codec = CommandCodec::new(shared.config.limits);
    codec.set_authenticated(session.authenticated);
    let mut src = redis_protocol::bytes::BytesMut::from(input);
    let mut replies = Vec::new();
    loop {
        match codec.decode(&mut src) {
            Ok(Some(args)) => {
                let (frame, flow) = commands::execute(&shared, &mut session, args).await;
                codec.set_protocol(session.protocol);
                codec.set_authenticated(session.authenticated);
                replies.push((session.protocol, frame));
                if flow == commands::Flow::Close {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let error = reply::error(format!("ERR Protocol error: {e}"));
                replies.push((session.protocol, error));
                break;
            }
        }
    }
    replies
}

/// Serves one accepted connection: the TLS handshake first when the server has TLS
/// (one that fails is logged and closed), then its commands, or only the refusal
/// when no client slot was free.
async fn serve_one<B: Backend>(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    id: u64,
    admitted: bool,
    shared: &Shared<B>,
) {
    match &shared.config.tls {
        None if admitted => connection::run(stream, peer, id, shared).await,
        None => connection::refuse(stream, peer).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
            let Some(stream) = crate::tls::handshake(&acceptor, stream, peer, "redis").await else {
                return;
            };
            if admitted {
                connection::run(stream, peer, id, shared).await;
            } else {
                connection::refuse(stream, peer).await;
            }
        }
    }
}

/// Serves the Redis protocol on `listener` with the default [`Config`] until
/// `shutdown` completes. See [`serve_with`].
///
/// # Errors
/// As [`serve_with`].
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, backend, Config::default(), shutdown).await
}

/// Serves the Redis protocol on `listener` until `shutdown` completes, then stops
/// accepting, closes every connection (a command in flight is abandoned; a write
/// may still be applied) and returns.
///
/// A failed `accept` (a connection reset before it was accepted, no file
/// descriptors left) is logged and retried after a short pause: it concerns one
/// connection or passes, and must not take the server down.
///
/// # Errors
/// When the listener's local address cannot be read.
pub async fn serve_with<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(config.max_clients));
    let shared = Arc::new(Shared {
        backend,
        config,
        started: Instant::now(),
        local,
        next_client_id: AtomicU64::new(1),
    });
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tracing::info!(addr = %local, "serving the redis protocol");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("redis connection task failed: {e}");
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accept a redis connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Replies are already batched per pipeline; Nagle would only add
                // latency.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "set TCP_NODELAY: {e}");
                }
                let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
                let slot = Arc::clone(&slots).try_acquire_owned().ok();
                let shared = Arc::clone(&shared);
                let mut stopped = stopped.clone();
                connections.spawn(async move {
                    tokio::select! {
                        _ = stopped.wait_for(|stop| *stop) => {}
                        () = serve_one(stream, peer, id, slot.is_some(), &shared) => {}
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    // Every receiver is in a spawned task; a send error only means none is left.
    let _ = stop.send(true);
    while let Some(done) = connections.join_next().await {
        if let Err(e) = done {
            tracing::error!("redis connection task failed: {e}");
        }
    }
    tracing::info!(addr = %local, "stopped serving the redis protocol");
    Ok(())
}

//! The peer-to-peer Raft transport: TCP, or mutual TLS with `--certs-dir`, one
//! connection per peer and lane, frames of length-prefixed protobuf raft-rs
//! messages.
//!
//! ```text
//! connection start (dialer → listener), once, version 5:
//! 0         4         5                  13     14       15              15+R     16+R            16+R+A
//! +---------+---------+------------------+------+--------+---------------+--------+---------------+
//! | "SKVR"  | version | sender id u64 BE | lane | len R  | Redis address | len A  | admin address |
//! | 4 bytes |  05     |                  | u8   | u8     | (UTF-8)       | u8     | (UTF-8)       |
//! +---------+---------+------------------+------+--------+---------------+--------+---------------+
//! lane: 00 normal (every message but MsgSnapshot), 01 snapshot (MsgSnapshot only)
//!
//! then, on the normal lane, frames, any number of times:
//! +--------------+-------------------------------+
//! | len u32 BE   | raft-rs Message (protobuf)    |
//! +--------------+-------------------------------+
//! a frame of length 0 is a keepalive and carries no message
//!
//! and on the snapshot lane, the frames of `super::snapstream`: a snapshot's dump
//! as a stream of checksummed chunks, then its MsgSnapshot (whose data is a small
//! descriptor)
//! ```
//!
//! Version 4 added the lane byte and keepalive frames (version 3 had neither);
//! version 5 streams snapshots in chunks on the snapshot lane (version 4 sent a
//! snapshot's whole dump in one frame of at most 1 GiB). A listener refuses a hello
//! of any other version: every node of a cluster runs the same transport version.
//!
//! ## Dialing
//!
//! With TLS a dialer presents its node certificate and verifies that the
//! listener's chains to the cluster's CA and names the node it dials
//! (`node-N.sealkv.invalid` as the server name).
//!
//! Each peer has two lanes, each its own connection and bounded queue: snapshots go
//! on their own lane so a large transfer never holds up heartbeats and appends. A
//! full queue drops the message (Raft retransmits) and reports the peer unreachable,
//! so a slow peer cannot exhaust memory. A lane dials when it has a message to send,
//! sends a keepalive frame when it has sent nothing for a fifth of its idle timeout
//! (at most 1 s, well inside any listener's, which is at least 2 s), notices at once when the listener closes the connection (the
//! listener writes nothing but the ack that ends a snapshot transfer, so anything
//! else readable is the close), and redials with backoff (100 ms doubling to 2 s; a
//! connection that lived 2 s resets it).
//!
//! ## Accepting
//!
//! Every inbound connection goes through these steps, and one that fails a step is
//! closed, counted in `sealkv_peer_connections_closed_total{reason}` and logged (at
//! most one line per reason per 10 s):
//!
//! 1. At most [`TransportConfig::max_pending`] connections in all, and
//!    [`TransportConfig::max_pending_per_ip`] from one remote address, may be
//!    waiting for their hello; more are closed at once (`too_many_pending`).
//! 2. With mutual TLS ([`TransportConfig::tls`]), the handshake must finish within
//!    the hello timeout (`tls_handshake`; a client that does not speak TLS fails
//!    here), and the peer must present a certificate from the cluster's CA that
//!    names a node (`bad_certificate`): that id is the connection's verified
//!    identity (`crate::tls` has the binding). Then the whole hello must arrive
//!    within [`TransportConfig::hello_timeout`]
//!    (`hello_timeout`) and be well formed: magic, version 5, a known lane
//!    (`bad_hello`).
//! 3. `Transport::identify` binds the connection to a peer id, the one place that
//!    decides it: the id the hello claims, which must be the id the certificate
//!    names with TLS (`id_mismatch`), must not be this node's (`own_id`) and must
//!    be in the address book: `--peers`, the peers file and applied membership
//!    changes (`unknown_peer`). Without TLS the claim stands alone.
//! 4. One connection per (peer, lane): while one lives, a second that claims the
//!    same peer and lane is closed (`lane_in_use`), so a stranger cannot speak for a
//!    peer that is connected. A slot frees as soon as its connection closes (a peer
//!    that restarts closes its connections, and its new ones are taken), errors, or
//!    idles out.
//! 5. Each frame must start within the idle timeout and each read of its body make
//!    progress within it (`idle_timeout`); a frame above the lane's limit
//!    (`frame_too_large`) or that does not decode as a raft-rs message
//!    (`bad_frame`) closes the connection. The normal lane's limit follows
//!    `--max-entry-bytes` ([`normal_frame_limit`]); the snapshot lane's frames
//!    are chunks of at most 16 MiB and a message of at most 1 MiB. A frame's
//!    buffer grows only as its bytes arrive. On the snapshot lane, a chunk whose
//!    checksum does not match, or a transfer that does not add up, closes the
//!    connection (`bad_snapshot`), counted in
//!    `sealkv_snapshot_chunks_refused_total`; its partial file is removed.
//! 6. Every message (on the snapshot lane, a MsgSnapshot whose whole dump arrived
//!    and checked out) goes to the Raft driver with its [`Origin`] (the bound peer id
//!    and the lane), which validates it before raft-rs sees it (the driver's
//!    `validate` module: sender, addressee, type, lane, terms and indexes).
//!
//! The addresses in the hello are the ones the sender was configured with
//! (`--redis-addr`, `--admin-addr`). A node learns its peers' addresses from their
//! connections, so a follower can tell clients where the leader serves (`INFO
//! replication`) and forward an encryption operation to the leader's admin
//! endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::snapstream::{self, SnapFrame, SnapFrameError};
use super::throttle::{LOG_WINDOW, Throttle};
use super::{MAX_SIZE_PER_MSG, Outbox, RaftHandle};
use crate::metrics::Metrics;

/// Magic at the start of every transport connection.
const MAGIC: &[u8; 4] = b"SKVR";
/// Transport protocol version: 4 has the lane byte and keepalive frames, 5 streams
/// snapshots in chunks.
const VERSION: u8 = 5;
/// The byte a snapshot lane's listener writes once a transfer checked out and its
/// message went to Raft.
const SNAPSHOT_ACK: u8 = 0x01;
/// How long a sender waits for that byte after the message (the receiver syncs the
/// whole file first).
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest frame a normal lane may be configured to take.
pub const MAX_NORMAL_FRAME: u32 = 1 << 30;
/// Messages queued per peer on the normal lane.
const NORMAL_QUEUE: usize = 4096;
/// Messages queued per peer on the snapshot lane.
const SNAPSHOT_QUEUE: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The shortest idle timeout, whatever the Raft timing.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many election timeouts an inbound connection may stay silent.
const IDLE_ELECTION_TIMEOUTS: u32 = 5;
/// Room in a normal-lane frame for the message's own fields and the protobuf framing
/// of its entries, beyond their data (see [`normal_frame_limit`]).
const FRAME_SLACK: usize = 64 * 1024;
/// How long the listener waits after an accept error (out of file descriptors)
/// before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which of a peer's two connections a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Every message but snapshots; frames up to [`normal_frame_limit`].
    Normal,
    /// Snapshots only, streamed in chunks (`super::snapstream`).
    Snapshot,
}

impl Lane {
    /// The lane `message` travels on.
    pub fn of(message: &Message) -> Lane {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            Lane::Snapshot
        } else {
            Lane::Normal
        }
    }

    fn byte(self) -> u8 {
        match self {
            Lane::Normal => 0,
            Lane::Snapshot => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Lane> {
        match byte {
            0 => Some(Lane::Normal),
            1 => Some(Lane::Snapshot),
            _ => None,
        }
    }

    /// `normal` or `snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message came from, as the transport established it: the peer its
/// connection is bound to (`Transport::identify`) and the lane the hello named.
/// Without TLS the peer is the id the hello claimed; with mutual TLS it will be the
/// id the peer's certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The peer the connection is bound to.
    pub peer: u64,
    /// The lane the connection carries.
    pub lane: Lane,
}

/// Where the transport hands the messages it receives: the Raft driver, or a test
/// double.
pub trait Inbox: Send + Sync + 'static {
    /// Hands over one message with its origin. Never blocks: a message that cannot
    /// be queued is dropped (Raft retransmits).
    fn deliver(&self, origin: Origin, message: Message);
}

impl Inbox for RaftHandle {
    fn deliver(&self, origin: Origin, message: Message) {
        self.step(origin, message);
    }
}

/// The limits of the inbound side, and the keepalive that follows from them.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The largest frame on the normal lane ([`normal_frame_limit`]).
    pub max_normal_frame: u32,
    /// How long an inbound connection may go without a frame (or a read of a frame's
    /// body without progress) before it is closed; dialers send a keepalive every
    /// fifth of their own (at most every second).
    pub idle_timeout: Duration,
    /// How long a new connection has to send its whole hello.
    pub hello_timeout: Duration,
    /// Connections waiting for their hello, from everywhere.
    pub max_pending: usize,
    /// Connections waiting for their hello, from one remote address.
    pub max_pending_per_ip: usize,
    /// Mutual TLS (`--certs-dir`); `None`: plain TCP.
    pub tls: Option<PeerTls>,
    /// Where snapshots are streamed from and received into; `None`: this node
    /// neither sends nor takes snapshots (tests of the transport alone).
    pub snapshots: Option<SnapshotFiles>,
}

/// The snapshot lane's files and chunk size.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// Where outgoing snapshots' checkpoints are (`RaftLog::snapshot_out_dir`).
    pub out_dir: std::path::PathBuf,
    /// The data directory, where received snapshots' files go.
    pub data_dir: std::path::PathBuf,
    /// The size of the chunks this node sends (`--snapshot-chunk-bytes`), at most
    /// [`snapstream::MAX_CHUNK_BYTES`].
    pub chunk_bytes: usize,
}

/// Mutual TLS between peers: how this node accepts a peer (its certificate
/// required, from the cluster's CA) and dials one (presenting its own, verifying
/// that the listener's names the node dialed). See `crate::tls` for the identity.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts inbound connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Dials peers.
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl TransportConfig {
    /// The limits of a node whose largest entry is `max_entry_bytes` (the driver's
    /// cap, raft envelope included) and whose election timeout is
    /// `election_timeout`: the idle timeout is five election timeouts, at least 2 s;
    /// a hello has 5 s; 64 connections may wait for their hello, 8 of them from one
    /// address.
    pub fn new(max_entry_bytes: usize, election_timeout: Duration) -> TransportConfig {
        TransportConfig {
            max_normal_frame: normal_frame_limit(max_entry_bytes),
            idle_timeout: (election_timeout * IDLE_ELECTION_TIMEOUTS).max(MIN_IDLE_TIMEOUT),
            hello_timeout: Duration::from_secs(5),
            max_pending: 64,
            max_pending_per_ip: 8,
            tls: None,
            snapshots: None,
        }
    }

    /// How long a dialer's lane stays silent before it sends a keepalive: a fifth of
    /// the idle timeout, and at most half the shortest one any node has, so a peer
    /// whose Raft timing (and so idle timeout) is shorter never closes the lane.
    fn keepalive(&self) -> Duration {
        (self.idle_timeout / 5).min(MIN_IDLE_TIMEOUT / 2)
    }
}

/// The largest frame on the normal lane of a node whose largest entry is
/// `max_entry_bytes`.
///
/// An append carries entries of at most 1 MiB in all (the driver's
/// `max_size_per_msg`, counted as raft-rs does, by each entry's encoded size), or
/// one larger entry; a forwarded proposal carries one entry. The protobuf framing of
/// each entry in the message (a tag and a length, at most 6 bytes) and the message's
/// own fields stay under another 1 MiB plus 64 KiB. Every node of a cluster
/// should have the same `--max-entry-bytes`: a node with a smaller one cannot take a
/// larger entry from a peer, and says so when it closes the connection.
pub fn normal_frame_limit(max_entry_bytes: usize) -> u32 {
    let per_msg = usize::try_from(MAX_SIZE_PER_MSG).unwrap_or(usize::MAX);
    let limit = max_entry_bytes
        .max(per_msg)
        .saturating_add(per_msg)
        .saturating_add(FRAME_SLACK);
    u32::try_from(limit).map_or(MAX_NORMAL_FRAME, |l| l.min(MAX_NORMAL_FRAME))
}

/// The hello a dialer sends first. Public, with [`Hello::read`] and
/// [`Hello::encode`], for the fuzz targets (`crates/fuzz-targets`); not part of the
/// API.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The id the dialer claims.
    pub sender: u64,
    /// The lane the connection carries.
    pub lane: Lane,
    /// The dialer's addresses.
    pub announce: Announce,
}

/// Why a hello was refused.
#[doc(hidden)]
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Not the transport's magic: not a sealkv peer.
    #[error("not a sealkv raft peer: magic {0:02x?}")]
    Magic([u8; 4]),
    /// Another transport version.
    #[error("transport version {0}, this node speaks version {VERSION}")]
    Version(u8),
    /// A lane byte that names no lane.
    #[error("unknown lane {0}")]
    Lane(u8),
    /// An announced address that is not UTF-8.
    #[error("announced address is not UTF-8")]
    Address,
    /// The connection failed or ended before the hello did.
    #[error("read hello: {0}")]
    Io(#[from] std::io::Error),
}

impl Hello {
    /// The hello's bytes. An address too long for its length byte is sent empty.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(16 + self.announce.redis.len() + self.announce.admin.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.push(self.lane.byte());
        for addr in [&self.announce.redis, &self.announce.admin] {
            // An address too long for the length byte is not announced rather than cut.
            let announced = u8::try_from(addr.len()).map_or("", |_| addr.as_str());
            out.push(announced.len() as u8);
            out.extend_from_slice(announced.as_bytes());
        }
        out
    }

    /// Reads a hello, checking each field before the next is read.
    ///
    /// # Errors
    /// The [`HelloError`] of the first field that is wrong, or [`HelloError::Io`]
    /// when `reader` fails or ends inside the hello.
    pub async fn read(reader: &mut (impl AsyncRead + Unpin)) -> Result<Hello, HelloError> {
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(HelloError::Magic(magic));
        }
        let version = reader.read_u8().await?;
        if version != VERSION {
            return Err(HelloError::Version(version));
        }
        let sender = reader.read_u64().await?;
        let lane_byte = reader.read_u8().await?;
        let lane = Lane::from_byte(lane_byte).ok_or(HelloError::Lane(lane_byte))?;
        let mut addrs = [String::new(), String::new()];
        for addr in &mut addrs {
            let len = reader.read_u8().await?;
            let mut bytes = vec![0u8; usize::from(len)];
            reader.read_exact(&mut bytes).await?;
            *addr = String::from_utf8(bytes).map_err(|_| HelloError::Address)?;
        }
        let [redis, admin] = addrs;
        Ok(Hello {
            sender,
            lane,
            announce: Announce { redis, admin },
        })
    }
}

/// Why the transport refused or closed an inbound connection: the label of
/// `sealkv_peer_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Too many connections were waiting for their hello.
    TooManyPending,
    /// The hello did not arrive in time.
    HelloTimeout,
    /// The hello was malformed: magic, version, lane, or cut short.
    BadHello,
    /// The hello claimed this node's own id.
    OwnId,
    /// The hello claimed an id that is not in the address book.
    UnknownPeer,
    /// The TLS handshake failed: not TLS (a plain-TCP client), or it did not
    /// finish within the hello timeout.
    TlsHandshake,
    /// The peer's certificate was refused: none, not from the cluster's CA, or one
    /// that names no node (a client certificate).
    BadCertificate,
    /// The hello claimed another id than the peer's verified identity (mutual TLS).
    IdMismatch,
    /// Another connection of the same peer and lane is open.
    LaneInUse,
    /// No frame, or no progress within a frame, for the idle timeout.
    IdleTimeout,
    /// A frame above the lane's limit.
    FrameTooLarge,
    /// A frame that is not a raft-rs message.
    BadFrame,
    /// A snapshot transfer refused: a chunk whose checksum does not match, or a
    /// stream that does not add up to its message's descriptor.
    BadSnapshot,
}

impl CloseReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::TooManyPending => "too_many_pending",
            CloseReason::HelloTimeout => "hello_timeout",
            CloseReason::BadHello => "bad_hello",
            CloseReason::OwnId => "own_id",
            CloseReason::UnknownPeer => "unknown_peer",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::BadCertificate => "bad_certificate",
            CloseReason::IdMismatch => "id_mismatch",
            CloseReason::LaneInUse => "lane_in_use",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::BadSnapshot => "bad_snapshot",
        }
    }
}

/// How an inbound connection ended other than by the peer closing it.
#[derive(Debug)]
enum Ended {
    /// This node refused or closed it.
    Closed(CloseReason, String),
    /// The connection failed (reset by the peer).
    Io(std::io::Error),
}

fn closed(reason: CloseReason, detail: impl Into<String>) -> Ended {
    Ended::Closed(reason, detail.into())
}

struct Lanes {
    addr: String,
    normal: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
}

/// The inbound connections' bookkeeping: those waiting for their hello, and the
/// (peer, lane) slots taken.
#[derive(Debug, Default)]
struct Inbound {
    pending: usize,
    pending_by_ip: HashMap<IpAddr, usize>,
    slots: HashMap<(u64, Lane), u64>,
    next_serial: u64,
}

/// Both sides of the transport: the outbound lanes per peer, fed by the Raft
/// driver, and the bookkeeping of inbound connections.
pub struct Transport {
    id: u64,
    runtime: tokio::runtime::Handle,
    config: TransportConfig,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<u64, Lanes>>,
    raft: OnceLock<RaftHandle>,
    announce: Announce,
    announced: Mutex<HashMap<u64, Announce>>,
    inbound: Mutex<Inbound>,
    close_log: Mutex<Throttle>,
}

/// The addresses a node announces in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announce {
    /// Where it serves Redis clients (`--redis-addr`).
    pub redis: String,
    /// Where its admin endpoint listens (`--admin-addr`).
    pub admin: String,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A connection waiting for its hello; dropping it frees its place.
struct Pending {
    transport: Arc<Transport>,
    ip: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut inbound = self.transport.inbound();
        inbound.pending = inbound.pending.saturating_sub(1);
        if let Some(n) = inbound.pending_by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inbound.pending_by_ip.remove(&self.ip);
            }
        }
    }
}

/// A taken (peer, lane) slot; dropping it frees the slot.
struct Slot {
    transport: Arc<Transport>,
    key: (u64, Lane),
    serial: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inbound = self.transport.inbound();
        if inbound.slots.get(&self.key) == Some(&self.serial) {
            inbound.slots.remove(&self.key);
        }
    }
}

impl Transport {
    /// A transport for node `id` whose lanes run on `runtime`; it tells peers the
    /// addresses in `announce`, holds inbound connections to `config`'s limits, and
    /// counts what it refuses in `metrics`.
    pub fn new(
        id: u64,
        announce: Announce,
        config: TransportConfig,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            id,
            runtime,
            config,
            metrics,
            peers: Mutex::new(HashMap::new()),
            raft: OnceLock::new(),
            announce,
            announced: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Inbound::default()),
            close_log: Mutex::new(Throttle::new(LOG_WINDOW)),
        })
    }

    /// The addresses node `id` announced (this node's own for its id), if known.
    fn announced_by(&self, id: u64) -> Option<Announce> {
        if id == self.id {
            return Some(self.announce.clone());
        }
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// The Redis address node `id` announced (this node's own for its id), if known.
    pub fn redis_addr_of(&self, id: u64) -> Option<String> {
        self.announced_by(id)
            .map(|a| a.redis)
            .filter(|a| !a.is_empty())
    }

    /// The admin address node `id` announced (this node's own for its id), if known.
    pub fn admin_addr_of(&self, id: u64) -> Option<String> {
        self.announced_by(id)
            .map(|a| a.admin)
            .filter(|a| !a.is_empty())
    }

    fn learn(&self, id: u64, announce: Announce) {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, announce);
    }

    /// Connects the transport to the driver it reports delivery failures to.
    pub fn attach(&self, raft: RaftHandle) {
        let _ = self.raft.set(raft);
    }

    fn report_unreachable(&self, to: u64) {
        if let Some(raft) = self.raft.get() {
            raft.report_unreachable(to);
        }
    }

    fn report_snapshot(&self, to: u64, ok: bool) {
        if let Some(raft) = self.raft.get() {
            raft.report_snapshot(to, ok);
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lanes>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, Inbound> {
        self.inbound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new connection from `ip` among those waiting for their
    /// hello, if one is free.
    fn admit_pending(self: &Arc<Self>, ip: IpAddr) -> Option<Pending> {
        let mut inbound = self.inbound();
        let from_ip = inbound.pending_by_ip.get(&ip).copied().unwrap_or(0);
        if inbound.pending >= self.config.max_pending || from_ip >= self.config.max_pending_per_ip {
            return None;
        }
        inbound.pending += 1;
        *inbound.pending_by_ip.entry(ip).or_insert(0) += 1;
        Some(Pending {
            transport: Arc::clone(self),
            ip,
        })
    }

    /// Decides which peer an inbound connection speaks for: the one place a claimed
    /// id is checked. `claimed` is the id its hello names; `verified` the id its
    /// verified certificate names (mutual TLS; `None` without TLS), which the claim
    /// must match. The peer must not be this node and must be in the
    /// address book (`--peers`, the peers file, applied membership changes).
    fn identify(&self, claimed: u64, verified: Option<u64>) -> Result<u64, Ended> {
        if let Some(verified) = verified
            && verified != claimed
        {
            return Err(closed(
                CloseReason::IdMismatch,
                format!("the hello claims node {claimed}, the certificate names node {verified}"),
            ));
        }
        if claimed == self.id {
            return Err(closed(
                CloseReason::OwnId,
                format!("the hello claims this node's own id {claimed}"),
            ));
        }
        if !self.lanes().contains_key(&claimed) {
            return Err(closed(
                CloseReason::UnknownPeer,
                format!("the hello claims node {claimed}, which is not in the address book"),
            ));
        }
        Ok(claimed)
    }

    /// Takes the (peer, lane) slot for a connection, unless another connection holds
    /// it.
    fn take_slot(self: &Arc<Self>, peer: u64, lane: Lane) -> Result<Slot, Ended> {
        let mut inbound = self.inbound();
        let key = (peer, lane);
        if inbound.slots.contains_key(&key) {
            return Err(closed(
                CloseReason::LaneInUse,
                format!("node {peer} already has a {lane} connection open"),
            ));
        }
        inbound.next_serial += 1;
        let serial = inbound.next_serial;
        inbound.slots.insert(key, serial);
        Ok(Slot {
            transport: Arc::clone(self),
            key,
            serial,
        })
    }

    /// Counts a refused or closed inbound connection and logs it, at most one line
    /// per reason per window.
    fn record_close(&self, remote: SocketAddr, reason: CloseReason, detail: &str) {
        self.metrics
            .peer_connections_closed
            .with_label_values(&[reason.label()])
            .inc();
        let held = self
            .close_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(reason.label(), Instant::now());
        if let Some(held) = held {
            tracing::warn!(
                %remote,
                reason = reason.label(),
                held_back = held,
                "closed a raft peer connection: {detail}"
            );
        }
    }
}

impl Outbox for Arc<Transport> {
    fn send(&self, messages: Vec<Message>) {
        let mut unreachable = Vec::new();
        {
            let peers = self.lanes();
            for message in messages {
                let to = message.to;
                let is_snapshot = Lane::of(&message) == Lane::Snapshot;
                let Some(lanes) = peers.get(&to) else {
                    tracing::debug!(to, "no address for raft peer; message dropped");
                    unreachable.push((to, is_snapshot));
                    continue;
                };
                let lane = if is_snapshot {
                    &lanes.snapshot
                } else {
                    &lanes.normal
                };
                if lane.try_send(message).is_err() {
                    unreachable.push((to, is_snapshot));
                }
            }
        }
        for (to, is_snapshot) in unreachable {
            self.report_unreachable(to);
            if is_snapshot {
                self.report_snapshot(to, false);
            }
        }
    }

    fn set_peer(&self, id: u64, addr: Option<String>) {
        if id == self.id {
            return;
        }
        let mut peers = self.lanes();
        match addr {
            None => {
                // Dropping the senders ends the lane tasks.
                peers.remove(&id);
            }
            Some(addr) => {
                if peers.get(&id).is_some_and(|l| l.addr == addr) {
                    return;
                }
                let (normal, normal_rx) = mpsc::channel(NORMAL_QUEUE);
                let (snapshot, snapshot_rx) = mpsc::channel(SNAPSHOT_QUEUE);
                for (rx, lane) in [(normal_rx, Lane::Normal), (snapshot_rx, Lane::Snapshot)] {
                    let dialer = Dialer::new(Arc::clone(self), id, addr.clone(), lane);
                    self.runtime.spawn(dialer.run(rx));
                }
                peers.insert(
                    id,
                    Lanes {
                        addr,
                        normal,
                        snapshot,
                    },
                );
            }
        }
    }
}

/// An open outbound connection, over TCP or TLS.
struct Conn {
    writer: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Never read for data but a snapshot's ack (the listener writes nothing else),
    /// so a read that completes outside a snapshot transfer is
    /// the listener closing the connection (TLS's own records, such as session
    /// tickets, yield no data).
    reader: Box<dyn AsyncRead + Send + Unpin>,
    since: Instant,
}

/// Dials `peer` at `addr` (with TLS when `tls` is set, verifying that the
/// listener's certificate names `peer`) and sends the hello.
async fn connect(
    addr: &str,
    peer: u64,
    tls: Option<&PeerTls>,
    hello: &Hello,
) -> std::io::Result<Conn> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    let (reader, writer): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match tls {
        None => {
            let (reader, writer) = stream.into_split();
            (Box::new(reader), Box::new(writer))
        }
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(crate::tls::node_name(peer))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, stream))
                .await
                .map_err(|_| timed_out())??;
            let (reader, writer) = tokio::io::split(stream);
            (Box::new(reader), Box::new(writer))
        }
    };
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    writer.write_all(&hello.encode()).await?;
    Ok(Conn {
        writer,
        reader,
        since: Instant::now(),
    })
}

async fn write_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &Message,
) -> std::io::Result<()> {
    let bytes = message
        .write_to_bytes()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= MAX_NORMAL_FRAME)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"))?;
    writer.write_u32(len).await?;
    writer.write_all(&bytes).await
}

/// Streams the dump of the snapshot `message` describes (an unsealed descriptor)
/// on the snapshot lane: a begin frame, the chunks as a blocking task reads them
/// from the checkpoint (at most two queued: memory stays about two chunks), then
/// the message with the sealed descriptor, then waits for the receiver's ack (one
/// byte, written once the stream checked out and the message went to Raft; a
/// refusal closes the connection instead). The checkpoint is removed whatever the
/// outcome.
async fn send_snapshot(
    transport: &Arc<Transport>,
    conn: &mut Conn,
    mut message: Message,
) -> std::io::Result<()> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let Some(files) = transport.config.snapshots.clone() else {
        return Err(invalid("this node streams no snapshots".to_string()));
    };
    let descriptor = sealkv_store::SnapshotDescriptor::decode(message.get_snapshot().get_data())
        .map_err(|e| invalid(e.to_string()))?;
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let out_dir = files.out_dir.clone();
    let chunk_bytes = files.chunk_bytes.clamp(1, snapstream::MAX_CHUNK_BYTES);
    let producer = tokio::task::spawn_blocking(move || {
        let result =
            sealkv_store::stream_checkpoint(&out_dir, &descriptor, chunk_bytes, &mut |chunk| {
                // Fail point: a chunk is about to be handed to the connection
                // (`sleep(ms)` slows a transfer so a test can cut it midway).
                #[cfg(feature = "failpoints")]
                fail::fail_point!("transport::snapshot-chunk");
                tx.blocking_send(chunk)
                    .map_err(|_| sealkv_store::StoreError::Backend {
                        op: "hand a snapshot chunk to the transport",
                        source: Box::new(std::io::Error::other("the send was abandoned")),
                    })
            });
        sealkv_store::remove_checkpoint(&out_dir, &descriptor);
        result
    });
    let streamed = stream_chunks(transport, conn, &descriptor, &mut rx).await;
    // Dropping the receiver ends the producer at its next chunk.
    drop(rx);
    let produced = producer
        .await
        .map_err(|e| std::io::Error::other(format!("snapshot producer: {e}")))?;
    streamed?;
    let summary = produced.map_err(|e| {
        std::io::Error::other(format!(
            "stream snapshot {:016x}: {}",
            descriptor.id,
            sealkv_kv::error_chain(&e)
        ))
    })?;
    let sealed = sealkv_store::SnapshotDescriptor {
        total_bytes: summary.total_bytes,
        chunk_count: summary.chunk_count,
        digest: summary.digest,
        ..descriptor
    };
    message.mut_snapshot().set_data(sealed.encode().into());
    snapstream::write_snap_frame(&mut conn.writer, &SnapFrame::Message(Box::new(message))).await?;
    conn.writer.flush().await?;
    // Raft hears of success only once the receiver has the message: before that, its
    // appends to the follower would be refused (the follower has not stepped the
    // snapshot yet) and make the leader send another snapshot.
    match tokio::time::timeout(SNAPSHOT_ACK_TIMEOUT, conn.reader.read_u8()).await {
        Ok(Ok(SNAPSHOT_ACK)) => {}
        Ok(Ok(other)) => {
            return Err(invalid(format!(
                "the receiver answered {other:#04x}, not an ack"
            )));
        }
        Ok(Err(e)) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "the receiver closed the connection before its ack (it refused the snapshot?): {e}"
                ),
            ));
        }
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no ack within {SNAPSHOT_ACK_TIMEOUT:?}"),
            ));
        }
    }
    transport
        .metrics
        .snapshot_transfer_seconds
        .with_label_values(&["sent"])
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        id = format_args!("{:016x}", descriptor.id),
        applied_index = descriptor.applied_index,
        bytes = summary.total_bytes,
        chunks = summary.chunk_count,
        seconds = started.elapsed().as_secs_f64(),
        "sent snapshot"
    );
    Ok(())
}

/// Writes the begin frame and every chunk `rx` yields, with keepalives while the
/// producer is slow; fails as soon as the listener closes the connection.
async fn stream_chunks(
    transport: &Arc<Transport>,
    conn: &mut Conn,
    descriptor: &sealkv_store::SnapshotDescriptor,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let begin = SnapFrame::Begin {
        id: descriptor.id,
        applied_index: descriptor.applied_index,
    };
    snapstream::write_snap_frame(&mut conn.writer, &begin).await?;
    let keepalive = transport.config.keepalive();
    let mut seq = 0u64;
    loop {
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            () = tokio::time::sleep(keepalive) => {
                conn.writer.write_u32(0).await?;
                conn.writer.flush().await?;
                continue;
            }
            _ = conn.reader.read_u8() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the receiver closed the connection (it refused the snapshot?)",
                ));
            }
        };
        let Some(data) = chunk else {
            return Ok(());
        };
        let mut digest = [0u8; 32];
        digest
            .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data).as_ref());
        let len = data.len() as u64;
        snapstream::write_snap_frame(&mut conn.writer, &SnapFrame::Chunk { seq, digest, data })
            .await?;
        transport.metrics.snapshot_sent_bytes.inc_by(len);
        seq += 1;
    }
}

/// Resolves when the listener closes `conn` (or it fails); never without a
/// connection.
async fn closed_by_listener(conn: &mut Option<Conn>) {
    match conn {
        Some(conn) => {
            let mut byte = [0u8; 1];
            let _ = conn.reader.read(&mut byte).await;
        }
        None => std::future::pending().await,
    }
}

/// One lane to one peer: dials, writes what is queued in batches, keeps the
/// connection alive, redials with backoff, and ends when the transport forgets the
/// peer.
struct Dialer {
    transport: Arc<Transport>,
    peer: u64,
    addr: String,
    lane: Lane,
    conn: Option<Conn>,
    backoff: Duration,
    retry_at: tokio::time::Instant,
}

impl Dialer {
    fn new(transport: Arc<Transport>, peer: u64, addr: String, lane: Lane) -> Dialer {
        Dialer {
            transport,
            peer,
            addr,
            lane,
            conn: None,
            backoff: MIN_BACKOFF,
            retry_at: tokio::time::Instant::now(),
        }
    }

    /// Reports a message of this lane that could not be sent.
    fn undelivered(&self) {
        self.transport.report_unreachable(self.peer);
        if self.lane == Lane::Snapshot {
            self.transport.report_snapshot(self.peer, false);
        }
    }

    /// Forgets the connection and waits a backoff before the next dial; a
    /// connection that lived a while starts the backoff over.
    fn lost(&mut self) {
        if self
            .conn
            .take()
            .is_some_and(|c| c.since.elapsed() >= MAX_BACKOFF)
        {
            self.backoff = MIN_BACKOFF;
        }
        self.retry_at = tokio::time::Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let keepalive = self.transport.config.keepalive();
        loop {
            let connected = self.conn.is_some();
            let first = tokio::select! {
                message = rx.recv() => match message {
                    Some(m) => m,
                    None => return,
                },
                () = closed_by_listener(&mut self.conn) => {
                    tracing::debug!(peer = self.peer, lane = %self.lane, "raft peer closed the connection");
                    self.lost();
                    continue;
                }
                () = tokio::time::sleep(keepalive), if connected => {
                    if let Some(conn) = self.conn.as_mut() {
                        let sent = match conn.writer.write_u32(0).await {
                            Ok(()) => conn.writer.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            tracing::debug!(peer = self.peer, lane = %self.lane, "keepalive to raft peer: {e}");
                            self.lost();
                        }
                    }
                    continue;
                }
            };
            if self.conn.is_none() {
                if tokio::time::Instant::now() < self.retry_at {
                    // Still backing off: drop the message, Raft will send again.
                    self.undelivered();
                    continue;
                }
                let hello = Hello {
                    sender: self.transport.id,
                    lane: self.lane,
                    announce: self.transport.announce.clone(),
                };
                let tls = self.transport.config.tls.as_ref();
                match connect(&self.addr, self.peer, tls, &hello).await {
                    Ok(c) => {
                        tracing::debug!(peer = self.peer, addr = %self.addr, lane = %self.lane, "connected to raft peer");
                        self.conn = Some(c);
                    }
                    Err(e) => {
                        tracing::debug!(peer = self.peer, addr = %self.addr, "connect to raft peer: {e}");
                        self.lost();
                        self.undelivered();
                        continue;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            if self.lane == Lane::Snapshot {
                let to = first.to;
                match send_snapshot(&self.transport, conn, first).await {
                    Ok(()) => self.transport.report_snapshot(to, true),
                    Err(e) => {
                        tracing::warn!(peer = self.peer, addr = %self.addr, "send snapshot to raft peer: {e}");
                        self.lost();
                        self.undelivered();
                    }
                }
                continue;
            }
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut result = Ok(());
            for message in &batch {
                result = write_frame(&mut conn.writer, message).await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = conn.writer.flush().await;
            }
            match result {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(peer = self.peer, addr = %self.addr, "send to raft peer: {e}");
                    self.lost();
                    self.undelivered();
                }
            }
        }
    }
}

/// Accepts peer connections on `listener` and hands every message they carry to
/// `inbox` with its [`Origin`], until `shutdown` resolves. An accept that fails (out
/// of file descriptors) is logged and retried after a pause: a flood of connections
/// must not end the listener.
///
/// # Errors
/// None today; the result is kept for the listener task's error path.
pub async fn serve(
    listener: TcpListener,
    transport: Arc<Transport>,
    inbox: Arc<dyn Inbox>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut accept_log = Throttle::new(LOG_WINDOW);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(held) = accept_log.admit("accept", Instant::now()) {
                    tracing::warn!(held_back = held, "accept a raft peer connection: {e}");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(pending) = transport.admit_pending(remote.ip()) else {
            drop(stream);
            transport.record_close(
                remote,
                CloseReason::TooManyPending,
                "too many connections are waiting for their hello",
            );
            continue;
        };
        let transport = Arc::clone(&transport);
        let inbox = Arc::clone(&inbox);
        tokio::spawn(async move {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%remote, "set TCP_NODELAY on a raft peer connection: {e}");
            }
            // With mutual TLS the handshake (within the hello timeout, still among
            // the pending connections) yields the peer id its certificate names;
            // without, nothing is verified and the hello's claim stands alone.
            let received = match transport.config.tls.clone() {
                None => receive(stream, None, pending, &transport, inbox.as_ref()).await,
                Some(tls) => match accept_tls(&tls, stream, transport.config.hello_timeout).await {
                    Ok((stream, id)) => {
                        receive(stream, Some(id), pending, &transport, inbox.as_ref()).await
                    }
                    Err(e) => Err(e),
                },
            };
            match received {
                Ok(()) => tracing::debug!(%remote, "raft peer closed its connection"),
                Err(Ended::Io(e)) => {
                    tracing::debug!(%remote, "raft peer connection failed: {e}");
                }
                Err(Ended::Closed(reason, detail)) => {
                    transport.record_close(remote, reason, &detail);
                }
            }
        });
    }
}

/// Runs the TLS handshake of an inbound connection within `timeout` and returns the
/// stream with the node id its verified certificate names.
async fn accept_tls(
    tls: &PeerTls,
    stream: TcpStream,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, u64), Ended> {
    let stream = match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
        Err(_) => {
            return Err(closed(
                CloseReason::TlsHandshake,
                format!("no TLS handshake within {timeout:?}"),
            ));
        }
        Ok(Err(e)) if crate::tls::is_certificate_refusal(&e) => {
            return Err(closed(CloseReason::BadCertificate, e.to_string()));
        }
        Ok(Err(e)) => {
            return Err(closed(
                CloseReason::TlsHandshake,
                format!("TLS handshake failed (is the peer started with --certs-dir?): {e}"),
            ));
        }
        Ok(Ok(stream)) => stream,
    };
    let id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(crate::tls::node_id_of);
    match id {
        Some(id) => Ok((stream, id)),
        None => Err(closed(
            CloseReason::BadCertificate,
            "the peer's certificate names no node (a client certificate?)",
        )),
    }
}

/// Reads one inbound connection: its hello within the hello timeout, its identity
/// (`Transport::identify`), its (peer, lane) slot, then frames until it closes,
/// fails, breaks a rule or idles out. `Ok` when the peer closed it.
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    verified: Option<u64>,
    pending: Pending,
    transport: &Arc<Transport>,
    inbox: &dyn Inbox,
) -> Result<(), Ended> {
    let config = &transport.config;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let hello = match tokio::time::timeout(config.hello_timeout, Hello::read(&mut reader)).await {
        Err(_) => {
            return Err(closed(
                CloseReason::HelloTimeout,
                format!("no complete hello within {:?}", config.hello_timeout),
            ));
        }
        Ok(Err(e)) => return Err(closed(CloseReason::BadHello, e.to_string())),
        Ok(Ok(hello)) => hello,
    };
    let peer = transport.identify(hello.sender, verified)?;
    drop(pending);
    let _slot = transport.take_slot(peer, hello.lane)?;
    transport.learn(peer, hello.announce);
    let origin = Origin {
        peer,
        lane: hello.lane,
    };
    let idle = config.idle_timeout;
    if hello.lane == Lane::Snapshot {
        return receive_snapshots(&mut reader, origin, transport, inbox).await;
    }
    let limit = config.max_normal_frame;
    let idled = || {
        closed(
            CloseReason::IdleTimeout,
            format!(
                "node {peer}'s {} connection was idle for {idle:?}",
                hello.lane
            ),
        )
    };
    loop {
        match read_frame(&mut reader, limit, Some(idle)).await {
            Ok(None) => return Ok(()),
            Ok(Some(Received::Keepalive)) => {}
            Ok(Some(Received::Message(message))) => inbox.deliver(origin, message),
            Err(FrameError::Idle) => return Err(idled()),
            Err(FrameError::TooLarge { len }) => {
                return Err(closed(
                    CloseReason::FrameTooLarge,
                    format!(
                        "node {peer} sent a frame of {len} bytes on the {} lane, above its limit \
                         of {limit} bytes (the normal lane's follows --max-entry-bytes; give \
                         every node the same)",
                        hello.lane
                    ),
                ));
            }
            Err(FrameError::NotAMessage(e)) => {
                return Err(closed(
                    CloseReason::BadFrame,
                    format!("node {peer} sent a frame that is not a raft message: {e}"),
                ));
            }
            Err(FrameError::Io(e)) => return Err(Ended::Io(e)),
        }
    }
}

/// Reads a snapshot-lane connection (`super::snapstream`): transfers into files
/// in the data directory, each message handed to `inbox` once its transfer
/// checked out.
async fn receive_snapshots<R: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut R,
    origin: Origin,
    transport: &Arc<Transport>,
    inbox: &dyn Inbox,
) -> Result<(), Ended> {
    let peer = origin.peer;
    let idle = transport.config.idle_timeout;
    let Some(files) = &transport.config.snapshots else {
        return Err(closed(
            CloseReason::BadSnapshot,
            format!("node {peer} opened a snapshot lane; this node takes no snapshots"),
        ));
    };
    let mut incoming = snapstream::Incoming::new(snapstream::DirFiles {
        dir: files.data_dir.clone(),
    });
    let metrics = &transport.metrics;
    loop {
        let frame = match snapstream::read_snap_frame(reader, Some(idle)).await {
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame,
            Err(SnapFrameError::Idle) => {
                return Err(closed(
                    CloseReason::IdleTimeout,
                    format!("node {peer}'s snapshot connection was idle for {idle:?}"),
                ));
            }
            Err(SnapFrameError::TooLarge { len }) => {
                return Err(closed(
                    CloseReason::FrameTooLarge,
                    format!("node {peer} sent a snapshot frame of {len} bytes, above its limit"),
                ));
            }
            Err(SnapFrameError::Malformed(e)) => {
                return Err(closed(
                    CloseReason::BadFrame,
                    format!("node {peer} sent a malformed snapshot frame: {e}"),
                ));
            }
            Err(SnapFrameError::Io(e)) => return Err(Ended::Io(e)),
        };
        let chunk_len = match &frame {
            SnapFrame::Chunk { data, .. } => data.len() as u64,
            _ => 0,
        };
        // File writes (and the final sync) block: off the async workers.
        let handled = tokio::task::block_in_place(|| incoming.handle(frame));
        match handled {
            Ok(None) => metrics.snapshot_received_bytes.inc_by(chunk_len),
            Ok(Some((message, received))) => {
                metrics
                    .snapshot_transfer_seconds
                    .with_label_values(&["received"])
                    .observe(received.elapsed.as_secs_f64());
                tracing::info!(
                    peer,
                    bytes = received.bytes,
                    seconds = received.elapsed.as_secs_f64(),
                    "received snapshot"
                );
                inbox.deliver(origin, *message);
                // The one byte a listener writes: the transfer checked out and its
                // message is with Raft, so the sender may report it delivered.
                if let Err(e) = async {
                    reader.write_all(&[SNAPSHOT_ACK]).await?;
                    reader.flush().await
                }
                .await
                {
                    return Err(Ended::Io(e));
                }
            }
            Err(e) => {
                metrics.snapshot_chunks_refused.inc();
                return Err(closed(
                    CloseReason::BadSnapshot,
                    format!("refused a snapshot from node {peer}: {e}"),
                ));
            }
        }
    }
}

/// One frame of a connection after its hello. Public for the fuzz targets
/// (`crates/fuzz-targets`); not part of the API.
#[doc(hidden)]
#[derive(Debug)]
pub enum Received {
    /// A frame of length 0.
    Keepalive,
    /// A raft-rs message.
    Message(Message),
}

/// Why reading a frame failed. Public for the fuzz targets; not part of the API.
#[doc(hidden)]
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No header started, or a body read made no progress, within the idle timeout.
    #[error("idle")]
    Idle,
    /// A header announced more bytes than the lane's limit.
    #[error("frame of {len} bytes is above the lane's limit")]
    TooLarge {
        /// The announced length.
        len: u32,
    },
    /// The body is not a raft-rs message.
    #[error("not a raft message: {0}")]
    NotAMessage(#[source] protobuf::ProtobufError),
    /// The connection failed, or ended inside a frame (`UnexpectedEof`).
    #[error("read frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Awaits `read` within `idle`, or without a limit when `idle` is `None`.
async fn within<T>(idle: Option<Duration>, read: impl Future<Output = T>) -> Result<T, FrameError> {
    match idle {
        Some(idle) => tokio::time::timeout(idle, read)
            .await
            .map_err(|_| FrameError::Idle),
        None => Ok(read.await),
    }
}

/// Reads one frame of at most `limit` bytes (step 5 of the module docs); `Ok(None)`
/// when the stream ends cleanly before a header. With `idle`, the header must start
/// and each read of the body make progress within it. The body's buffer grows with
/// the bytes that arrive, not with what the header claims. Public for the fuzz
/// targets (`crates/fuzz-targets`); not part of the API.
///
/// # Errors
/// [`FrameError`]: an idle timeout, a frame above `limit`, a body that is not a
/// raft-rs message, or a failed read (`UnexpectedEof` inside a frame).
#[doc(hidden)]
pub async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    limit: u32,
    idle: Option<Duration>,
) -> Result<Option<Received>, FrameError> {
    let len = match within(idle, reader.read_u32()).await? {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
        Ok(0) => return Ok(Some(Received::Keepalive)),
        Ok(len) => len,
    };
    if len > limit {
        return Err(FrameError::TooLarge { len });
    }
    let mut buf = Vec::with_capacity((len as usize).min(64 * 1024));
    let mut body = reader.take(u64::from(len));
    while within(idle, body.read_buf(&mut buf)).await?? != 0 {}
    if buf.len() != len as usize {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Message::parse_from_bytes(&buf)
        .map(|message| Some(Received::Message(message)))
        .map_err(FrameError::NotAMessage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            sender: 0x0102_0304_0506_0708,
            lane: Lane::Snapshot,
            announce: Announce {
                redis: "127.0.0.1:6379".into(),
                admin: "a:1".into(),
            },
        }
    }

    fn read_hello(bytes: &[u8]) -> Result<Hello, HelloError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut reader = bytes;
        runtime.block_on(Hello::read(&mut reader))
    }

    /// The hello's bytes are pinned, and decode back.
    #[test]
    fn hello_layout_and_round_trip() {
        let bytes = hello().encode();
        let mut want = b"SKVR\x05".to_vec();
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.push(1);
        want.push(14);
        want.extend_from_slice(b"127.0.0.1:6379");
        want.push(3);
        want.extend_from_slice(b"a:1");
        assert_eq!(bytes, want);
        assert_eq!(read_hello(&bytes).expect("decode"), hello());
    }

    #[test]
    fn a_hello_cut_short_anywhere_is_refused() {
        let bytes = hello().encode();
        for cut in 0..bytes.len() {
            let err = read_hello(&bytes[..cut]).expect_err("cut short");
            assert!(
                matches!(&err, HelloError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let good = hello().encode();
        let with = |offset: usize, byte: u8| {
            let mut b = good.clone();
            b[offset] = byte;
            b
        };
        assert!(matches!(
            read_hello(&with(0, b'X')),
            Err(HelloError::Magic(_))
        ));
        // Version 4, the one before streamed snapshots, and a future one.
        assert!(matches!(
            read_hello(&with(4, 4)),
            Err(HelloError::Version(4))
        ));
        assert!(matches!(
            read_hello(&with(4, 6)),
            Err(HelloError::Version(6))
        ));
        assert!(matches!(read_hello(&with(13, 2)), Err(HelloError::Lane(2))));
        assert!(matches!(
            read_hello(&with(15, 0xff)),
            Err(HelloError::Address)
        ));
    }

    #[test]
    fn frame_limits_follow_the_entry_limit() {
        let mib = 1 << 20;
        // The default 16 MiB entry (and its envelope): one such entry in an append.
        let limit = normal_frame_limit(16 * mib + 34);
        assert_eq!(limit as usize, 16 * mib + 34 + mib + FRAME_SLACK);
        // Small entries: 1 MiB of them, with their framing.
        assert_eq!(
            normal_frame_limit(1000) as usize,
            2 * mib + FRAME_SLACK,
            "never below an append of 1 MiB of entries"
        );
        assert_eq!(normal_frame_limit(usize::MAX), MAX_NORMAL_FRAME);
        let config = TransportConfig::new(16 * mib, Duration::from_millis(500));
        assert_eq!(config.idle_timeout, Duration::from_millis(2500));
        assert_eq!(config.keepalive(), Duration::from_millis(500));
        assert_eq!(
            TransportConfig::new(mib, Duration::from_millis(10)).idle_timeout,
            MIN_IDLE_TIMEOUT
        );
        // Slow Raft timing: a long idle timeout, but keepalives within any peer's.
        let slow = TransportConfig::new(mib, Duration::from_secs(10));
        assert_eq!(slow.idle_timeout, Duration::from_secs(50));
        assert_eq!(slow.keepalive(), MIN_IDLE_TIMEOUT / 2);
    }

    /// The accept path over loopback TCP, with short timeouts: what is delivered,
    /// and every way a connection is refused or closed.
    mod accept {
        use std::io::{Read, Write};
        use std::net::TcpStream as StdStream;

        use super::*;

        const ME: u64 = 1;
        const PEER: u64 = 2;

        #[derive(Default)]
        struct Collect(Mutex<Vec<(Origin, Message)>>);

        impl Inbox for Collect {
            fn deliver(&self, origin: Origin, message: Message) {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((origin, message));
            }
        }

        struct Harness {
            /// Runs the listener; dropped with the test.
            _runtime: tokio::runtime::Runtime,
            transport: Arc<Transport>,
            inbox: Arc<Collect>,
            addr: SocketAddr,
            dir: tempfile::TempDir,
        }

        impl Harness {
            fn start() -> Harness {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let dir = tempfile::tempdir().expect("tempdir");
                let config = TransportConfig {
                    max_normal_frame: 1024,
                    idle_timeout: Duration::from_millis(400),
                    hello_timeout: Duration::from_millis(300),
                    max_pending: 3,
                    max_pending_per_ip: 2,
                    tls: None,
                    snapshots: Some(SnapshotFiles {
                        out_dir: dir.path().join("out"),
                        data_dir: dir.path().to_path_buf(),
                        chunk_bytes: 1000,
                    }),
                };
                let metrics = Arc::new(Metrics::new().expect("metrics"));
                let transport = Transport::new(
                    ME,
                    Announce::default(),
                    config,
                    metrics,
                    runtime.handle().clone(),
                );
                // A known peer; its lanes dial only when there is something to send.
                transport.set_peer(PEER, Some("127.0.0.1:1".to_string()));
                let listener = runtime
                    .block_on(TcpListener::bind("127.0.0.1:0"))
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let inbox = Arc::new(Collect::default());
                let serving: Arc<dyn Inbox> = inbox.clone();
                runtime.spawn(serve(
                    listener,
                    Arc::clone(&transport),
                    serving,
                    std::future::pending(),
                ));
                Harness {
                    _runtime: runtime,
                    transport,
                    inbox,
                    addr,
                    dir,
                }
            }

            fn connect(&self) -> StdStream {
                let s = StdStream::connect(self.addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("read timeout");
                s
            }

            fn hello(&self, sender: u64, lane: Lane) -> StdStream {
                let mut s = self.connect();
                let hello = Hello {
                    sender,
                    lane,
                    announce: Announce::default(),
                };
                s.write_all(&hello.encode()).expect("hello");
                s
            }

            fn closes(&self, reason: CloseReason) -> u64 {
                self.transport
                    .metrics
                    .peer_connections_closed
                    .with_label_values(&[reason.label()])
                    .get()
            }

            fn delivered(&self) -> Vec<(Origin, Message)> {
                self.inbox
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            }

            /// Waits until `what` holds, for up to 30 s: a loaded machine (CI runs
            /// test binaries beside builds) can take seconds to run the listener's
            /// tasks.
            fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !f() {
                    assert!(Instant::now() < deadline, "timed out waiting for {what}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }

        /// Whether the listener closed `s` (a read ends with EOF or a reset).
        fn closed(s: &mut StdStream) -> bool {
            let mut buf = [0u8; 1];
            !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        }

        fn frame(message: &Message) -> Vec<u8> {
            let bytes = message.write_to_bytes().expect("encode");
            let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
            out.extend(bytes);
            out
        }

        fn heartbeat() -> Message {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = PEER;
            m.to = ME;
            m.term = 3;
            m
        }

        #[test]
        fn delivers_with_origin_and_one_connection_per_peer_and_lane() {
            let h = Harness::start();
            let mut first = h.hello(PEER, Lane::Normal);
            // A keepalive, then a message.
            first.write_all(&[0, 0, 0, 0]).expect("keepalive");
            first.write_all(&frame(&heartbeat())).expect("frame");
            h.until("the heartbeat", || h.delivered().len() == 1);
            let (origin, message) = h.delivered().remove(0);
            assert_eq!(
                origin,
                Origin {
                    peer: PEER,
                    lane: Lane::Normal
                }
            );
            assert_eq!(message, heartbeat());

            // A second claim of the same peer and lane is closed while the first lives.
            let mut second = h.hello(PEER, Lane::Normal);
            assert!(closed(&mut second));
            h.until("lane_in_use", || h.closes(CloseReason::LaneInUse) == 1);
            // The other lane is its own slot.
            let mut snapshots = h.hello(PEER, Lane::Snapshot);
            snapshots.write_all(&[0, 0, 0, 0]).expect("keepalive");
            // Once the first closes, its slot is free at once (a restarted peer).
            drop(first);
            h.until("the slot to free", || {
                let mut third = h.hello(PEER, Lane::Normal);
                third.write_all(&frame(&heartbeat())).expect("frame");
                h.delivered().len() == 2 || !closed(&mut third)
            });
            assert_eq!(h.delivered().len(), 2);
            drop(snapshots);
        }

        #[test]
        fn refused_hellos() {
            let h = Harness::start();
            let cases: [(Box<dyn Fn() -> StdStream>, CloseReason); 4] = [
                (
                    Box::new(|| h.hello(9, Lane::Normal)),
                    CloseReason::UnknownPeer,
                ),
                (Box::new(|| h.hello(ME, Lane::Normal)), CloseReason::OwnId),
                (
                    Box::new(|| {
                        let mut s = h.connect();
                        s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("garbage");
                        s
                    }),
                    CloseReason::BadHello,
                ),
                (Box::new(|| h.connect()), CloseReason::HelloTimeout),
            ];
            for (open, reason) in cases {
                let mut s = open();
                assert!(closed(&mut s), "{reason:?}");
                h.until(reason.label(), || h.closes(reason) == 1);
            }
            assert!(h.delivered().is_empty());
        }

        #[test]
        fn frames_idle_and_pending_limits() {
            let h = Harness::start();
            // Silent after the hello: closed after the idle timeout.
            let mut idle = h.hello(PEER, Lane::Normal);
            assert!(closed(&mut idle));
            h.until("idle_timeout", || h.closes(CloseReason::IdleTimeout) == 1);

            // Above the normal lane's limit.
            let mut big = h.hello(PEER, Lane::Normal);
            big.write_all(&2048u32.to_be_bytes()).expect("header");
            assert!(closed(&mut big));
            h.until("frame_too_large", || {
                h.closes(CloseReason::FrameTooLarge) == 1
            });

            // The snapshot lane takes a streamed snapshot: its file, then its message.
            let mut snap = Message::default();
            snap.set_msg_type(MessageType::MsgSnapshot);
            snap.from = PEER;
            snap.to = ME;
            let dump: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
            let frames = snapstream::transfer_frames(7, 40, &dump, 1000, snap);
            let bytes = |frames: &[SnapFrame]| -> Vec<u8> {
                frames
                    .iter()
                    .flat_map(|f| f.encode().expect("encode"))
                    .collect()
            };
            let mut lane = h.hello(PEER, Lane::Snapshot);
            lane.write_all(&bytes(&frames)).expect("frames");
            h.until("the snapshot", || h.delivered().len() == 1);
            let mut ack = [0u8; 1];
            lane.read_exact(&mut ack).expect("the ack");
            assert_eq!(ack, [SNAPSHOT_ACK]);
            let received =
                std::fs::read(snapstream::received_path(h.dir.path(), 7)).expect("received file");
            assert_eq!(received, dump);
            drop(lane);
            h.until("the snapshot lane's slot to free", || {
                !h.transport
                    .inbound()
                    .slots
                    .contains_key(&(PEER, Lane::Snapshot))
            });

            // A flipped byte in a chunk: refused, counted, nothing delivered, no file.
            let mut corrupt = snapstream::transfer_frames(8, 40, &dump, 1000, Message::default());
            if let Some(SnapFrame::Chunk { data, .. }) = corrupt.get_mut(2) {
                data[10] ^= 1;
            }
            let mut lane = h.hello(PEER, Lane::Snapshot);
            lane.write_all(&bytes(&corrupt)).expect("frames");
            assert!(closed(&mut lane));
            h.until("bad_snapshot", || h.closes(CloseReason::BadSnapshot) == 1);
            assert_eq!(h.transport.metrics.snapshot_chunks_refused.get(), 1);
            assert_eq!(h.delivered().len(), 1);
            h.until("the partial file to go", || {
                !h.dir
                    .path()
                    .join("snapshot.recv.0000000000000008.partial")
                    .exists()
            });
            assert!(!snapstream::received_path(h.dir.path(), 8).exists());

            // Not a raft message.
            let mut bad = h.hello(PEER, Lane::Normal);
            bad.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
                .expect("frame");
            assert!(closed(&mut bad));
            h.until("bad_frame", || h.closes(CloseReason::BadFrame) == 1);

            // Two may wait for their hello from one address; a third is closed at once.
            let waiting = [h.connect(), h.connect()];
            h.until("two pending", || h.transport.inbound().pending == 2);
            let mut third = h.connect();
            assert!(closed(&mut third));
            h.until("too_many_pending", || {
                h.closes(CloseReason::TooManyPending) == 1
            });
            drop(waiting);
            h.until("none pending", || h.transport.inbound().pending == 0);
        }
    }
}

//! The peer-to-peer Raft transport: TCP, one connection per peer and lane, frames of
//! length-prefixed protobuf raft-rs messages.
//!
//! ```text
//! connection start (dialer → listener), once:
//! +---------+---------+------------------+--------+---------------+--------+---------------+
//! | "SKVR"  | version | sender id u64 BE | len u8 | Redis address | len u8 | admin address |
//! | 4 bytes |  03     |                  |        | (UTF-8)       |        | (UTF-8)       |
//! +---------+---------+------------------+--------+---------------+--------+---------------+
//! then frames:
//! +--------------+-------------------------------+
//! | len u32 BE   | raft-rs Message (protobuf)    |
//! +--------------+-------------------------------+
//! ```
//!
//! Each peer has two lanes, each its own connection and bounded queue: snapshots go
//! on their own lane so a large transfer never holds up heartbeats and appends. A
//! full queue drops the message (Raft retransmits) and reports the peer unreachable,
//! so a slow peer cannot exhaust memory. A lane that loses its connection redials with
//! backoff (100 ms doubling to 2 s). A frame longer than [`MAX_FRAME`] closes the
//! connection, and a frame's buffer grows only as its bytes arrive.
//!
//! The addresses in the hello are the ones the sender was configured with
//! (`--redis-addr`, `--admin-addr`). A node learns its peers' addresses from their
//! connections, so a follower can tell clients where the leader serves (`INFO
//! replication`) and forward an encryption operation to the leader's admin
//! endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Outbox, RaftHandle};

/// Magic at the start of every transport connection.
const MAGIC: &[u8; 4] = b"SKVR";
/// Transport protocol version.
const VERSION: u8 = 3;
/// Largest frame accepted (a snapshot message carries the whole state machine).
pub const MAX_FRAME: u32 = 1 << 30;
/// Messages queued per peer on the normal lane.
const NORMAL_QUEUE: usize = 4096;
/// Messages queued per peer on the snapshot lane.
const SNAPSHOT_QUEUE: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Lanes {
    addr: String,
    normal: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
}

/// The outbound side: per-peer lanes, fed by the Raft driver.
pub struct Transport {
    id: u64,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Lanes>>,
    raft: OnceLock<RaftHandle>,
    announce: Announce,
    announced: Mutex<HashMap<u64, Announce>>,
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

impl Transport {
    /// A transport for node `id` whose lanes run on `runtime`; it tells peers the
    /// addresses in `announce`.
    pub fn new(id: u64, announce: Announce, runtime: tokio::runtime::Handle) -> Arc<Transport> {
        Arc::new(Transport {
            id,
            runtime,
            peers: Mutex::new(HashMap::new()),
            raft: OnceLock::new(),
            announce,
            announced: Mutex::new(HashMap::new()),
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
}

impl Outbox for Arc<Transport> {
    fn send(&self, messages: Vec<Message>) {
        let mut unreachable = Vec::new();
        {
            let peers = self.lanes();
            for message in messages {
                let to = message.to;
                let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
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
                let me = Arc::clone(self);
                self.runtime
                    .spawn(lane(Arc::clone(&me), id, addr.clone(), normal_rx, false));
                self.runtime
                    .spawn(lane(me, id, addr.clone(), snapshot_rx, true));
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

async fn connect(
    addr: &str,
    my_id: u64,
    announce: &Announce,
) -> std::io::Result<BufWriter<TcpStream>> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut writer = BufWriter::with_capacity(256 * 1024, stream);
    writer.write_all(&encode_hello(my_id, announce)).await?;
    Ok(writer)
}

/// The hello a dialer sends first (see the module docs): magic, version, `id` and
/// the announced addresses. An address too long for its length byte is not
/// announced (sent empty) rather than cut.
#[doc(hidden)]
pub fn encode_hello(id: u64, announce: &Announce) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(MAGIC.len() + 1 + 8 + 2 + announce.redis.len() + announce.admin.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&id.to_be_bytes());
    for addr in [&announce.redis, &announce.admin] {
        match u8::try_from(addr.len()) {
            Ok(len) => {
                out.push(len);
                out.extend_from_slice(addr.as_bytes());
            }
            Err(_) => out.push(0),
        }
    }
    out
}

async fn write_frame(writer: &mut BufWriter<TcpStream>, message: &Message) -> std::io::Result<()> {
    let bytes = message
        .write_to_bytes()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"))?;
    writer.write_u32(len).await?;
    writer.write_all(&bytes).await
}

/// One lane to one peer: dials, writes what is queued in batches, redials with
/// backoff, and ends when the transport forgets the peer.
async fn lane(
    transport: Arc<Transport>,
    peer: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    snapshots: bool,
) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = MIN_BACKOFF;
    let mut retry_at = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        if conn.is_none() {
            if tokio::time::Instant::now() < retry_at {
                // Still backing off: drop the message, Raft will send again.
                transport.report_unreachable(peer);
                if snapshots {
                    transport.report_snapshot(peer, false);
                }
                continue;
            }
            match connect(&addr, transport.id, &transport.announce).await {
                Ok(c) => {
                    tracing::debug!(peer, %addr, snapshots, "connected to raft peer");
                    conn = Some(c);
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    tracing::debug!(peer, %addr, "connect to raft peer: {e}");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    transport.report_unreachable(peer);
                    if snapshots {
                        transport.report_snapshot(peer, false);
                    }
                    continue;
                }
            }
        }
        let Some(writer) = conn.as_mut() else {
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut result = Ok(());
        for message in &batch {
            result = write_frame(writer, message).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = writer.flush().await;
        }
        match result {
            Ok(()) => {
                if snapshots {
                    for m in &batch {
                        transport.report_snapshot(m.to, true);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(peer, %addr, "send to raft peer: {e}");
                conn = None;
                transport.report_unreachable(peer);
                if snapshots {
                    transport.report_snapshot(peer, false);
                }
            }
        }
    }
}

/// Reads a connection's hello: the sender's id and the addresses it announced.
/// Public for the fuzz targets (`crates/fuzz-targets`); not part of the API.
///
/// # Errors
/// [`std::io::ErrorKind::InvalidData`] for a wrong magic or version or an address
/// that is not UTF-8; [`std::io::ErrorKind::UnexpectedEof`] when the stream ends
/// inside the hello; any error of `reader`.
#[doc(hidden)]
pub async fn read_hello(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u64, Announce)> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).await?;
    let version = reader.read_u8().await?;
    if &magic != MAGIC || version != VERSION {
        return Err(invalid(
            "not a sealkv raft peer of this version (bad magic or version)",
        ));
    }
    let sender = reader.read_u64().await?;
    let mut addrs = [String::new(), String::new()];
    for addr in &mut addrs {
        let len = reader.read_u8().await?;
        let mut bytes = vec![0u8; usize::from(len)];
        reader.read_exact(&mut bytes).await?;
        *addr = String::from_utf8(bytes).map_err(|_| invalid("address is not UTF-8"))?;
    }
    let [redis, admin] = addrs;
    Ok((sender, Announce { redis, admin }))
}

/// Accepts peer connections on `listener` and hands every message addressed to this
/// node to Raft, until `shutdown` resolves.
///
/// # Errors
/// When accepting fails.
pub async fn serve(
    listener: TcpListener,
    transport: Arc<Transport>,
    raft: RaftHandle,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let raft = raft.clone();
        let transport = Arc::clone(&transport);
        tokio::spawn(async move {
            if let Err(e) = receive(stream, &transport, &raft).await {
                tracing::debug!(%remote, "raft peer connection closed: {e}");
            }
        });
    }
}

async fn receive(
    stream: TcpStream,
    transport: &Transport,
    raft: &RaftHandle,
) -> std::io::Result<()> {
    let my_id = transport.id;
    stream.set_nodelay(true)?;
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, stream);
    let (sender, announce) = tokio::time::timeout(CONNECT_TIMEOUT, read_hello(&mut reader))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello"))??;
    transport.learn(sender, announce);
    while let Some(message) = read_frame(&mut reader).await? {
        if message.to != my_id {
            tracing::debug!(to = message.to, "raft message for another node dropped");
            continue;
        }
        raft.step(message);
    }
    Ok(())
}

/// Reads one frame and decodes its raft-rs message; `Ok(None)` when the stream ends
/// cleanly before a frame starts. Public for the fuzz targets
/// (`crates/fuzz-targets`); not part of the API.
///
/// # Errors
/// [`std::io::ErrorKind::InvalidData`] for a frame longer than [`MAX_FRAME`] or a
/// message that does not decode; [`std::io::ErrorKind::UnexpectedEof`] when the
/// stream ends inside a frame; any error of `reader`.
#[doc(hidden)]
pub async fn read_frame(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<Message>> {
    let len = match reader.read_u32().await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than {MAX_FRAME}"),
        ));
    }
    // Grow with the bytes that actually arrive, not with what the header claims.
    let mut buf = Vec::with_capacity((len as usize).min(64 * 1024));
    reader.take(u64::from(len)).read_to_end(&mut buf).await?;
    if buf.len() != len as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Message::parse_from_bytes(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

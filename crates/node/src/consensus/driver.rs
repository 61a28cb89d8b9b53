//! The Raft driver: one OS thread that owns the raft-rs [`RawNode`] over the durable
//! [`RaftLog`] and the [`KvFsm`], and follows raft-rs's Ready protocol.
//!
//! For each Ready, in this order:
//!
//! 1. send the messages that need no persistence (the leader's appends, so
//!    replication runs while the leader syncs);
//! 2. install a snapshot, if any (data, then log metadata; see
//!    [`recover_pending_snapshot`]);
//! 3. apply the committed entries through the state machine (one synced store batch
//!    for the KV entries among them) and answer the proposers waiting on them;
//! 4. persist the new entries and hard state in **one** synced RocksDB write;
//! 5. send the messages that had to wait for that write (votes, follower acks);
//! 6. advance, then handle the light ready the same way.
//!
//! Every proposal carries a [`ProposalContext`]: when this node applies an entry
//! that carries its own id and this process load's id, the waiting client gets the
//! entry's result (an entry of an earlier load answers nobody). A proposal
//! whose index is taken by another entry (a new leader overwrote it) fails with
//! [`ProposeError::Dropped`]; one whose index is unknown (forwarded to the leader)
//! fails with [`ProposeError::Timeout`] after the proposal timeout.
//!
//! A halted state machine stops the driver's Raft work entirely: no tick, no step, no
//! apply, so no later entry can be applied on this node past the one it could not
//! apply, and no snapshot can jump over it. Status and errors say so until an operator
//! fixes the cause and restarts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RawNode, ReadState, SnapshotStatus, StateRole, Storage as _};
use sealkv_encryption::durable::durable_replace;
use sealkv_kv::{KvFsm, Outcome};
use sealkv_store::{KvStore, RaftLog, RocksStore};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use super::context::ProposalContext;
use super::{Outbox, PeerBook};
use crate::metrics::Metrics;

/// Name of the file a received snapshot is kept in until it is fully installed.
const PENDING_SNAPSHOT: &str = "snapshot.pending";
/// The index of the synthetic snapshot a new cluster's log starts from.
const BOOTSTRAP_INDEX: u64 = 1;
/// The entry bytes one append message carries (or one larger entry).
const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// How many requests the driver's queue holds before callers are told it is busy.
const QUEUE: usize = 16 * 1024;

/// How the Raft driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's Raft id.
    pub id: u64,
    /// The data directory (the pending-snapshot and peers files live there).
    pub data_dir: PathBuf,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries kept in the log before it is compacted.
    pub compact_threshold: u64,
    /// Applied entries left in the log after a compaction, for slow followers.
    pub compact_keep: u64,
    /// How long a client waits for its proposal or read before it gets a timeout.
    pub request_timeout: Duration,
    /// The largest entry proposed: a larger proposal is refused before it reaches
    /// Raft, and a peer's forwarded proposal carrying one is dropped.
    pub max_entry_bytes: usize,
    /// When set, nothing is applied until it is true (an encrypted node's check of
    /// its epochs against the cluster's record), unless this node leads or is
    /// alone; the driver sets it when this node becomes leader.
    pub apply_gate: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Why a proposal, read or membership change did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is in progress).
    #[error("no leader: an election is in progress, retry shortly")]
    NoLeader,
    /// The state machine has halted; writes and linearizable reads are refused.
    #[error("state machine halted: {0}")]
    Halted(String),
    /// A new leader overwrote the proposal's entry: it was not applied.
    #[error("proposal dropped by a leader change; it was not applied")]
    Dropped,
    /// The proposal or read did not complete in time; a write may still apply.
    #[error("timed out waiting for the cluster")]
    Timeout,
    /// The driver's queue is full, or the leader holds as many uncommitted bytes
    /// as it takes.
    #[error("node busy: too many requests in flight")]
    Busy,
    /// The entry is larger than the node proposes.
    #[error(
        "entry of {bytes} bytes is larger than the {limit} bytes a node proposes (--max-entry-bytes)"
    )]
    TooLarge {
        /// The entry's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The driver has stopped (shutdown or a fatal storage error).
    #[error("raft driver stopped")]
    Stopped,
    /// The entry would halt or be refused on every replica, so it was not
    /// proposed; with `retry`, the node was a step behind and a retry may pass.
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
        /// Whether a retry may be accepted.
        retry: bool,
    },
    /// Raft refused the request (for example an invalid membership change).
    #[error("{0}")]
    Rejected(String),
}

/// A fatal error of the driver: it stops and the node exits.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The Raft log could not be read or written.
    #[error("raft log")]
    Log(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store failed outside an apply (snapshot install).
    #[error("install snapshot")]
    Snapshot(#[source] anyhow::Error),
    /// raft-rs refused to build the node.
    #[error("start raft node")]
    Raft(#[from] raft::Error),
    /// The node was stopped with a reason (its data dir is an earlier copy).
    #[error("{0}")]
    Refused(String),
    /// The leader has entries acknowledged by this node that its log does not
    /// hold: the data dir was wiped or restored from an older copy. Raft needs a
    /// member to keep the log and the vote it acknowledged, and an encrypted node
    /// would reuse the nonces of its lost epochs, so the node stops.
    #[error(
        "node {id}'s raft log ends at index {last_index}, but leader {leader} has it \
         acknowledged up to index {commit}: this data dir was wiped or restored from an older \
         copy, and a raft member must keep the log it acknowledged. Replace the node: \
         `sealkv cluster remove-node --id {id}`, then start an empty data dir under a new id \
         with --join and `sealkv cluster add-node`"
    )]
    LostState {
        /// This node.
        id: u64,
        /// The leader that sent the heartbeat.
        leader: u64,
        /// The commit index the leader sent for this node.
        commit: u64,
        /// The last index of this node's log.
        last_index: u64,
    },
}

/// A node's Raft role, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning.
    Candidate,
    /// Pre-campaigning.
    PreCandidate,
    /// Leads.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What the driver publishes after every Ready.
#[derive(Debug, Clone, Serialize)]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// The leader it knows, if any.
    pub leader_id: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit_index: u64,
    /// The last index applied to the state machine.
    pub applied_index: u64,
    /// The first index still in the log.
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The voters of the applied configuration.
    pub voters: Vec<u64>,
    /// The learners of the applied configuration.
    pub learners: Vec<u64>,
    /// The halt, if the state machine halted: index and cause.
    pub halted: Option<String>,
    /// Set when the driver stopped on a fatal error.
    pub fatal: Option<String>,
}

/// A request to the driver thread.
enum Request {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    ConfChange {
        change: ConfChangeV2,
        reply: oneshot::Sender<Result<ConfState, ProposeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, ProposeError>>,
    },
    Compact {
        reply: oneshot::Sender<Result<u64, ProposeError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    Fatal(String),
    Shutdown,
}

struct Shared {
    status: RwLock<RaftStatus>,
    applied: watch::Sender<u64>,
}

/// The cloneable way to talk to the driver from async code.
#[derive(Clone)]
pub struct RaftHandle {
    tx: SyncSender<Request>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle").finish_non_exhaustive()
    }
}

impl RaftHandle {
    fn send(&self, request: Request) -> Result<(), ProposeError> {
        self.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => ProposeError::Busy,
            TrySendError::Disconnected(_) => ProposeError::Stopped,
        })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Request,
    ) -> Result<T, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        // The driver answers every waiter by its own deadline; this outer bound only
        // guards against a driver that stopped with the request queued.
        match tokio::time::timeout(self.timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    /// Proposes an entry (opcode byte and payload) and waits until this node applied
    /// it, returning the state machine's outcome.
    ///
    /// # Errors
    /// Any [`ProposeError`].
    pub async fn propose(&self, data: Vec<u8>) -> Result<Outcome, ProposeError> {
        self.ask(|reply| Request::Propose { data, reply }).await
    }

    /// Proposes a membership change and waits until this node applied it.
    ///
    /// # Errors
    /// Any [`ProposeError`].
    pub async fn change_membership(&self, change: ConfChangeV2) -> Result<ConfState, ProposeError> {
        self.ask(|reply| Request::ConfChange { change, reply })
            .await
    }

    /// Waits until every write acknowledged before this call is applied on this node
    /// (Raft ReadIndex, confirmed by a quorum), so a read that follows is
    /// linearizable. Returns the applied index reached.
    ///
    /// # Errors
    /// Any [`ProposeError`].
    pub async fn linearizable_barrier(&self) -> Result<u64, ProposeError> {
        let index = self.ask(|reply| Request::ReadIndex { reply }).await?;
        self.wait_applied(index).await
    }

    /// Waits until this node applied `index`.
    ///
    /// # Errors
    /// [`ProposeError::Timeout`] after the request timeout; [`ProposeError::Halted`]
    /// when the state machine halts first.
    pub async fn wait_applied(&self, index: u64) -> Result<u64, ProposeError> {
        let mut rx = self.shared.applied.subscribe();
        let wait = async {
            loop {
                let applied = *rx.borrow_and_update();
                if applied >= index {
                    return Ok(applied);
                }
                if let Some(h) = self.status().halted {
                    return Err(ProposeError::Halted(h));
                }
                if rx.changed().await.is_err() {
                    return Err(ProposeError::Stopped);
                }
            }
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(ProposeError::Timeout))
    }

    /// Compacts the log up to the applied index now (normally it happens by
    /// threshold). Returns the new first index.
    ///
    /// # Errors
    /// Any [`ProposeError`].
    pub async fn compact(&self) -> Result<u64, ProposeError> {
        self.ask(|reply| Request::Compact { reply }).await
    }

    /// Hands a message from a peer to Raft; dropped when the queue is full (Raft
    /// retransmits).
    pub fn step(&self, message: Message) {
        let _ = self.send(Request::Step(Box::new(message)));
    }

    /// Tells Raft a peer could not be reached.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.send(Request::Unreachable(id));
    }

    /// Tells Raft how sending a snapshot to `to` ended.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.send(Request::SnapshotDone { to, ok });
    }

    /// Stops the driver with `reason` as its fatal error: the node exits with it.
    pub fn stop_with(&self, reason: String) {
        let _ = self.tx.try_send(Request::Fatal(reason));
    }

    /// Stops the driver; it finishes the Ready in hand.
    pub fn shutdown(&self) {
        // A full queue still sees the disconnect when every handle is dropped.
        let _ = self.tx.try_send(Request::Shutdown);
    }

    /// The latest status.
    pub fn status(&self) -> RaftStatus {
        self.shared
            .status
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Recovers from a crash in the middle of a snapshot install: if the pending
/// snapshot file exists, installs its data into the store and its metadata into the
/// log again (both are idempotent), then removes the file. Called at startup before
/// the Raft node is built.
///
/// # Errors
/// When the file does not decode or a step fails; the node must not start then.
pub fn recover_pending_snapshot(
    data_dir: &std::path::Path,
    store: &RocksStore,
    log: &RaftLog,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    let path = data_dir.join(PENDING_SNAPSHOT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let snapshot = Snapshot::parse_from_bytes(&bytes)
        .with_context(|| format!("decode pending snapshot {}", path.display()))?;
    install(store, log, &snapshot)?;
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(true)
}

fn install(store: &RocksStore, log: &RaftLog, snapshot: &Snapshot) -> anyhow::Result<()> {
    use anyhow::Context;
    let meta = snapshot.get_metadata();
    let applied = store.applied_index().context("read applied index")?;
    if meta.index > applied {
        store
            .install_snapshot(snapshot.get_data())
            .context("install snapshot data into the store")?;
    }
    // The log's snapshot index is first_index - 1.
    if meta.index >= log.first_index() {
        log.apply_snapshot(meta)
            .context("install snapshot metadata into the raft log")?;
    }
    Ok(())
}

struct Waiter<T> {
    reply: oneshot::Sender<Result<T, ProposeError>>,
    /// The log index of the entry, when this node appended it as leader.
    index: Option<u64>,
    deadline: Instant,
}

fn fail_all<T>(waiters: &mut HashMap<u64, Waiter<T>>, error: &ProposeError) {
    for (_, w) in waiters.drain() {
        let _ = w.reply.send(Err(error.clone()));
    }
}

fn fail_where<T>(
    waiters: &mut HashMap<u64, Waiter<T>>,
    error: &ProposeError,
    pred: impl Fn(&Waiter<T>) -> bool,
) {
    let ids: Vec<u64> = waiters
        .iter()
        .filter(|(_, w)| pred(w))
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(w) = waiters.remove(&id) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
}

struct Driver {
    config: DriverConfig,
    raw: RawNode<RaftLog>,
    log: RaftLog,
    store: Arc<RocksStore>,
    fsm: KvFsm,
    outbox: Arc<dyn Outbox>,
    peers: PeerBook,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    next_id: u64,
    proposals: HashMap<u64, Waiter<Outcome>>,
    changes: HashMap<u64, Waiter<ConfState>>,
    reads: HashMap<u64, Waiter<u64>>,
    halted: Option<String>,
    /// This process load's random id, in every proposal context.
    load_id: u64,
    /// Whether this node may apply committed entries. A member of a cluster with
    /// other members applies nothing, not even its own log's committed entries,
    /// until it has heard from a leader that did not find its state lost (or has
    /// become leader itself): a data dir wiped or restored from an older copy is
    /// then refused before its replay seals anything.
    contact: bool,
    /// The last committed entry handed out while `contact` was false; applied
    /// from the log once it is true.
    skipped_to: u64,
}

/// Builds the Raft node over `log` and the state machine and starts the driver thread.
///
/// `peers` is the address book (from `--peers` and the peers file); when the log is
/// fresh and `initial_voters` is not empty, the log is initialized with them as the
/// static initial cluster (a synthetic snapshot at index 1). A node started to join an existing cluster passes no
/// voters and waits for the leader.
///
/// # Errors
/// When raft-rs refuses the configuration or the log cannot be initialized.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    config: DriverConfig,
    log: RaftLog,
    store: Arc<RocksStore>,
    mut fsm: KvFsm,
    outbox: Arc<dyn Outbox>,
    peers: PeerBook,
    initial_voters: &[u64],
    metrics: Arc<Metrics>,
    logger: &slog::Logger,
) -> Result<(RaftHandle, std::thread::JoinHandle<Result<(), DriverError>>), DriverError> {
    if log.is_fresh() && !initial_voters.is_empty() {
        // Every initial member starts from the same synthetic snapshot at index 1,
        // term 1, holding the initial configuration (as raft-rs's own examples do).
        // The log then starts at index 2, so a node added later, whose log is empty,
        // is sent a snapshot first and learns the whole configuration from it rather
        // than replaying membership changes without the initial voters.
        let mut cs = ConfState::default();
        cs.set_voters(initial_voters.to_vec());
        let mut meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: 1,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(cs);
        log.apply_snapshot(&meta).map_err(log_err)?;
    }
    // The bootstrap index counts as applied in the state machine (a crash between the
    // two writes lands here again on restart).
    if fsm.applied_index() < BOOTSTRAP_INDEX && log.first_index() == BOOTSTRAP_INDEX + 1 {
        let noop = [sealkv_kv::Entry {
            index: BOOTSTRAP_INDEX,
            data: &[],
        }];
        fsm.apply(&noop).map_err(|h| {
            DriverError::Snapshot(anyhow::Error::new(h).context("apply bootstrap index"))
        })?;
    }
    // A crash between applying entries and persisting the hard state that committed
    // them can leave the persisted commit index below the applied index; the applied
    // entries were committed, so raise it (raft-rs refuses applied > commit).
    let applied = fsm.applied_index();
    let mut hs = log.hard_state();
    if hs.commit < applied {
        hs.commit = applied;
        log.persist(&[], Some(&hs))
            .map_err(|e| DriverError::Log(Box::new(e)))?;
    }
    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        // An append message carries at most 1 MiB of entries, or one larger entry
        // (raft-rs always sends at least one); the leader holds four of the
        // largest entries uncommitted, at least 16 MiB (one entry always fits when
        // none is pending).
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_uncommitted_size: u64::try_from(config.max_entry_bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(4)
            .max(16 * MAX_SIZE_PER_MSG),
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let raw = RawNode::new(&raft_config, log.clone(), logger)?;
    for (id, addr) in peers.iter() {
        outbox.set_peer(id, Some(addr.to_string()));
    }
    let (tx, rx) = sync_channel(QUEUE);
    let (applied_tx, _) = watch::channel(applied);
    let shared = Arc::new(Shared {
        status: RwLock::new(RaftStatus {
            id: config.id,
            role: Role::Follower,
            leader_id: None,
            term: hs.term,
            commit_index: hs.commit,
            applied_index: applied,
            first_index: log.first_index(),
            last_index: log.last_index(),
            voters: Vec::new(),
            learners: Vec::new(),
            halted: None,
            fatal: None,
        }),
        applied: applied_tx,
    });
    let handle = RaftHandle {
        tx,
        shared: Arc::clone(&shared),
        timeout: config.request_timeout,
    };
    let mut driver = Driver {
        config,
        raw,
        log,
        store,
        fsm,
        outbox,
        peers,
        shared,
        metrics,
        next_id: 1,
        load_id: super::context::new_load_id(),
        contact: false,
        skipped_to: 0,
        proposals: HashMap::new(),
        changes: HashMap::new(),
        reads: HashMap::new(),
        halted: None,
    };
    driver.publish();
    let thread = std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || {
            let result = driver.run(&rx);
            if let Err(e) = &result {
                let msg = crate::error_chain(e);
                tracing::error!("raft driver stopped: {msg}");
                if let Ok(mut s) = driver.shared.status.write() {
                    s.fatal = Some(msg);
                }
            }
            let stopped = ProposeError::Stopped;
            fail_all(&mut driver.proposals, &stopped);
            fail_all(&mut driver.changes, &stopped);
            fail_all(&mut driver.reads, &stopped);
            result
        })
        .map_err(|e| DriverError::Log(Box::new(e)))?;
    Ok((handle, thread))
}

fn log_err(e: impl std::error::Error + Send + Sync + 'static) -> DriverError {
    DriverError::Log(Box::new(e))
}

impl Driver {
    fn run(&mut self, rx: &Receiver<Request>) -> Result<(), DriverError> {
        let mut last_tick = Instant::now();
        loop {
            let wait = self.config.tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Request::Shutdown) => return Ok(()),
                Ok(request) => self.handle(request)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Take what else is queued so one Ready (one sync) covers it all.
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(Request::Shutdown) => return Ok(()),
                    Ok(request) => self.handle(request)?,
                    Err(_) => break,
                }
            }
            if last_tick.elapsed() >= self.config.tick {
                last_tick = Instant::now();
                if self.halted.is_none() {
                    self.raw.tick();
                }
                self.expire_waiters();
            }
            if self.halted.is_none() {
                self.on_ready()?;
            }
        }
    }

    /// Whether this node is the only member of its configuration (it needs no
    /// leader but itself).
    fn alone(&self) -> bool {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        conf.get_voters() == [self.config.id] && conf.get_learners().is_empty()
    }

    fn leader(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    /// The proposal id of a context this process load proposed.
    fn own_proposal(&self, context: &[u8]) -> Option<u64> {
        ProposalContext::own_proposal(context, self.config.id, self.load_id)
    }

    fn next_context(&mut self) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let ctx = ProposalContext {
            node_id: self.config.id,
            load_id: self.load_id,
            proposal_id: id,
        };
        (id, ctx.encode())
    }

    /// The index of the entry just appended, when this node leads (a follower
    /// forwards the proposal and does not learn its index).
    fn appended_index(&self) -> Option<u64> {
        (self.raw.raft.state == StateRole::Leader).then(|| self.raw.raft.raft_log.last_index())
    }

    fn refuse(&self) -> Option<ProposeError> {
        if let Some(h) = &self.halted {
            return Some(ProposeError::Halted(h.clone()));
        }
        if self.leader().is_none() {
            return Some(ProposeError::NoLeader);
        }
        None
    }

    /// Refuses, before Raft sees it, an entry this node would not append: one
    /// larger than `max_entry_bytes`, or one the state machine would halt on or
    /// refuse ([`KvFsm::admit`]).
    fn admit(&self, data: &[u8]) -> Result<(), ProposeError> {
        if data.len() > self.config.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                bytes: data.len(),
                limit: self.config.max_entry_bytes,
            });
        }
        self.fsm.admit(data).map_err(|e| ProposeError::Refused {
            reason: crate::error_chain(&e),
            retry: e.is_transient(),
        })
    }

    /// Refuses a membership change that cannot be right before it is proposed: adding
    /// a node that is already a member in that role, removing a node that is not a
    /// member, and removing the last voter (the cluster could never commit again).
    fn check_change(&self, change: &ConfChangeV2) -> Result<(), ProposeError> {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let (voters, learners) = (conf.get_voters(), conf.get_learners());
        let mut remaining = voters.to_vec();
        for single in change.get_changes() {
            let id = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode if voters.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is already a voter"
                    )));
                }
                ConfChangeType::AddLearnerNode if voters.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is a voter; remove it before adding it as a learner"
                    )));
                }
                ConfChangeType::AddLearnerNode if learners.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is already a learner"
                    )));
                }
                ConfChangeType::RemoveNode if !voters.contains(&id) && !learners.contains(&id) => {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} is not a member (voters {voters:?}, learners {learners:?})"
                    )));
                }
                ConfChangeType::RemoveNode => remaining.retain(|v| *v != id),
                _ => {}
            }
        }
        if remaining.is_empty() {
            return Err(ProposeError::Rejected(
                "refusing to remove the last voter: the cluster could never commit again"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// The waiter of a proposal raft-rs accepted (it answers once the entry at the
    /// index just appended applies), or `None` after answering one it refused.
    fn waiter_for<T>(
        &self,
        proposed: Result<(), raft::Error>,
        reply: oneshot::Sender<Result<T, ProposeError>>,
    ) -> Option<Waiter<T>> {
        match proposed {
            Ok(()) => Some(Waiter {
                reply,
                index: self.appended_index(),
                deadline: self.deadline(),
            }),
            Err(e) => {
                let _ = reply.send(Err(self.propose_error(e)));
                None
            }
        }
    }

    /// What a proposal raft-rs refused gets: a leader that drops one holds as many
    /// uncommitted bytes as it takes (or is handing leadership over); a follower
    /// drops one when it knows no leader.
    fn propose_error(&self, e: raft::Error) -> ProposeError {
        match e {
            raft::Error::ProposalDropped if self.raw.raft.state == StateRole::Leader => {
                ProposeError::Busy
            }
            raft::Error::ProposalDropped => ProposeError::NoLeader,
            other => ProposeError::Rejected(other.to_string()),
        }
    }

    fn handle(&mut self, request: Request) -> Result<(), DriverError> {
        match request {
            Request::Propose { data, reply } => {
                self.metrics.proposals.inc();
                if let Some(e) = self
                    .refuse()
                    .or_else(|| self.admit(&data).err())
                    .or_else(|| proposer_names_itself(&data, self.config.id).err())
                {
                    self.metrics.proposals_failed.inc();
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let (id, ctx) = self.next_context();
                let proposed = self.raw.propose(ctx, data);
                if proposed.is_err() {
                    self.metrics.proposals_failed.inc();
                }
                if let Some(waiter) = self.waiter_for(proposed, reply) {
                    self.proposals.insert(id, waiter);
                }
            }
            Request::ConfChange { change, reply } => {
                if let Some(e) = self.refuse().or_else(|| self.check_change(&change).err()) {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let (id, ctx) = self.next_context();
                let proposed = self.raw.propose_conf_change(ctx, change);
                if let Some(waiter) = self.waiter_for(proposed, reply) {
                    self.changes.insert(id, waiter);
                }
            }
            Request::ReadIndex { reply } => {
                if let Some(e) = self.refuse() {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let (id, ctx) = self.next_context();
                self.raw.read_index(ctx);
                let waiter = Waiter {
                    reply,
                    index: None,
                    deadline: self.deadline(),
                };
                self.reads.insert(id, waiter);
            }
            Request::Compact { reply } => {
                let result = match &self.halted {
                    Some(h) => Err(ProposeError::Halted(h.clone())),
                    None => self
                        .compact_to(self.fsm.applied_index())
                        .map_err(|e| ProposeError::Rejected(format!("compact log: {e}"))),
                };
                let _ = reply.send(result);
            }
            Request::Step(message) => {
                if self.halted.is_some() {
                    return Ok(());
                }
                if !self.check_contact(&message)? {
                    return Ok(());
                }
                if message.get_msg_type() == MessageType::MsgPropose
                    && let Some(refused) = message
                        .get_entries()
                        .iter()
                        .filter(|e| e.get_entry_type() == EntryType::EntryNormal)
                        .find_map(|e| {
                            self.admit(e.get_data())
                                .and_then(|()| forwarded_by(e, message.from))
                                .err()
                        })
                {
                    // A forwarded proposal no replica should apply: never appended.
                    // Its proposer answers its client itself (it checks the same).
                    self.metrics.proposals_failed.inc();
                    tracing::warn!(
                        from = message.from,
                        "dropped a forwarded proposal: {refused}"
                    );
                    return Ok(());
                }
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!("step raft message: {e}");
                }
            }
            Request::Unreachable(id) => self.raw.report_unreachable(id),
            Request::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Request::Fatal(reason) => return Err(DriverError::Refused(reason)),
            Request::Shutdown => {}
        }
        Ok(())
    }

    /// Checks a message from a peer before Raft steps it: `Ok(false)` drops it.
    ///
    /// A heartbeat whose commit index is beyond this node's log would make raft-rs
    /// panic. From the leader this node follows (or the first leader it hears from
    /// after a start) it means the leader holds entries this node acknowledged and
    /// lost ([`DriverError::LostState`]). From another node while it follows a
    /// known leader (a new leader knows nothing this node acknowledged, so it never
    /// sends one) it is a crafted message: dropped and logged. A heartbeat,
    /// append or snapshot of the current term that passes is the contact with a
    /// leader that lets this node apply its log (see `contact`).
    fn check_contact(&mut self, message: &Message) -> Result<bool, DriverError> {
        let from_leader = matches!(
            message.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend | MessageType::MsgSnapshot
        );
        if !from_leader || message.term < self.raw.raft.term {
            return Ok(true);
        }
        let last_index = self.raw.raft.raft_log.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last_index {
            let leader = self.raw.raft.leader_id;
            if message.from == leader || leader == raft::INVALID_ID {
                return Err(DriverError::LostState {
                    id: self.config.id,
                    leader: message.from,
                    commit: message.commit,
                    last_index,
                });
            }
            tracing::warn!(
                from = message.from,
                term = message.term,
                commit = message.commit,
                last_index,
                "dropped a heartbeat past this node's log from a node it does not follow"
            );
            return Ok(false);
        }
        if !self.contact {
            tracing::info!(leader = message.from, "in contact with the leader");
            self.contact = true;
        }
        Ok(true)
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let timeout = ProposeError::Timeout;
        fail_where(&mut self.proposals, &timeout, |w| w.deadline <= now);
        fail_where(&mut self.changes, &timeout, |w| w.deadline <= now);
        fail_where(&mut self.reads, &timeout, |w| w.deadline <= now);
    }

    fn on_ready(&mut self) -> Result<(), DriverError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            if ss.raft_state == StateRole::Leader {
                tracing::info!(term = self.raw.raft.term, "became leader");
                self.contact = true;
                if let Some(gate) = &self.config.apply_gate {
                    gate.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            if ss.leader_id == raft::INVALID_ID {
                // Reads wait for a leader that may never answer; let them retry.
                fail_all(&mut self.reads, &ProposeError::NoLeader);
            }
        }
        if !ready.messages().is_empty() {
            self.outbox.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        for state in ready.take_read_states() {
            self.complete_read(state);
        }
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.log
                .persist(ready.entries(), ready.hs())
                .map_err(log_err)?;
        }
        if !ready.persisted_messages().is_empty() {
            self.outbox.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if !light.messages().is_empty() {
            self.outbox.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        self.publish();
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), DriverError> {
        let index = snapshot.get_metadata().index;
        tracing::info!(
            index,
            bytes = snapshot.get_data().len(),
            "installing snapshot"
        );
        let path = self.config.data_dir.join(PENDING_SNAPSHOT);
        let bytes = snapshot
            .write_to_bytes()
            .map_err(|e| DriverError::Snapshot(e.into()))?;
        durable_replace(&path, &bytes, 0o600).map_err(|e| DriverError::Snapshot(e.into()))?;
        install(&self.store, &self.log, snapshot).map_err(DriverError::Snapshot)?;
        std::fs::remove_file(&path).map_err(|e| DriverError::Snapshot(e.into()))?;
        self.fsm
            .reload_applied_index()
            .map_err(|e| DriverError::Snapshot(e.into()))?;
        if self
            .fsm
            .adopt_snapshot_keys()
            .map_err(|e| DriverError::Snapshot(anyhow::Error::new(e).context("adopt its keys")))?
        {
            tracing::info!(index, "adopted the encryption keys the snapshot carried");
        }
        self.metrics.snapshots_installed.inc();
        // Proposals waiting on entries the snapshot covers will not be applied here
        // one by one; their outcome is unknown to this node.
        fail_all(&mut self.proposals, &ProposeError::Timeout);
        fail_all(&mut self.changes, &ProposeError::Timeout);
        Ok(())
    }

    /// Applies committed entries in order: runs of normal entries go to the state
    /// machine in one call (one synced batch); membership changes are applied to
    /// Raft and recorded as applied no-ops in the state machine.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), DriverError> {
        let gate_open = self
            .config
            .apply_gate
            .as_ref()
            .is_none_or(|g| g.load(std::sync::atomic::Ordering::Acquire));
        if !(self.alone() || self.contact && gate_open) {
            if let Some(last) = entries.last() {
                self.skipped_to = self.skipped_to.max(last.index);
            }
            return Ok(());
        }
        let mut entries = entries;
        let applied = self.fsm.applied_index();
        if self.skipped_to > applied {
            // The entries handed out before contact, from the log.
            let first = entries.first().map_or(self.skipped_to + 1, |e| e.index);
            let high = first.min(self.skipped_to + 1);
            let mut missed = self
                .log
                .entries(applied + 1, high, None, GetEntriesContext::empty(false))
                .map_err(log_err)?;
            self.skipped_to = 0;
            missed.append(&mut entries);
            entries = missed;
        }
        let mut run: Vec<Entry> = Vec::new();
        for entry in entries {
            if entry.index <= self.fsm.applied_index() {
                continue;
            }
            if self.halted.is_some() {
                return Ok(());
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => run.push(entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_normal(std::mem::take(&mut run));
                    if self.halted.is_none() {
                        self.apply_conf_change(&entry)?;
                    }
                }
            }
        }
        self.apply_normal(run);
        Ok(())
    }

    fn apply_normal(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let views: Vec<sealkv_kv::Entry<'_>> = entries
            .iter()
            .map(|e| sealkv_kv::Entry {
                index: e.index,
                data: e.get_data(),
            })
            .collect();
        let started = Instant::now();
        let result = self.fsm.apply(&views);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let (outcomes, halt) = match result {
            Ok(outcomes) => (outcomes, None),
            Err(halted) => (halted.applied, Some(halted.halt)),
        };
        self.metrics.entries_applied.inc_by(outcomes.len() as u64);
        let mut outcomes: HashMap<u64, Outcome> =
            outcomes.into_iter().map(|o| (o.index, o.outcome)).collect();
        let mut last = self.fsm.applied_index();
        for entry in &entries {
            if entry.index > self.fsm.applied_index() {
                break;
            }
            last = entry.index;
            let Some(id) = self.own_proposal(entry.get_context()) else {
                continue;
            };
            // A waiter whose entry was appended at another index is not this one's.
            if let Some(w) = self.proposals.remove(&id) {
                let result = match w.index {
                    Some(index) if index != entry.index => Err(ProposeError::Dropped),
                    _ => outcomes.remove(&entry.index).ok_or(ProposeError::Dropped),
                };
                let _ = w.reply.send(result);
            }
        }
        self.drop_overwritten(last);
        if let Some(halt) = halt {
            // The state machine logged the halt itself.
            self.set_halted(halt.to_string());
            self.publish();
        }
    }

    /// Fails the waiters whose entry index is at or below `applied` but whose entry
    /// was not theirs: a new leader overwrote it.
    fn drop_overwritten(&mut self, applied: u64) {
        let dropped = ProposeError::Dropped;
        let overwritten = |w: &Waiter<_>| w.index.is_some_and(|i| i <= applied);
        fail_where(&mut self.proposals, &dropped, overwritten);
        fail_where(&mut self.changes, &dropped, |w| {
            w.index.is_some_and(|i| i <= applied)
        });
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), DriverError> {
        let change = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                ConfChange::parse_from_bytes(entry.get_data()).map(|v1| {
                    let mut v2 = single_change(v1.get_change_type(), v1.node_id, None);
                    v2.set_context(v1.get_context().to_vec().into());
                    v2
                })
            }
            _ => ConfChangeV2::parse_from_bytes(entry.get_data()),
        };
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                self.halt_on(entry.index, format!("decode membership change: {e}"));
                return Ok(());
            }
        };
        let cs = match self.raw.apply_conf_change(&change) {
            Ok(cs) => cs,
            Err(e) => {
                self.halt_on(entry.index, format!("apply membership change: {e}"));
                return Ok(());
            }
        };
        self.log.set_conf_state(&cs).map_err(log_err)?;
        self.learn_addresses(&change);
        tracing::info!(index = entry.index, voters = ?cs.get_voters(), learners = ?cs.get_learners(), "membership changed");
        // The entry counts as applied in the state machine, in index order.
        let noop = [sealkv_kv::Entry {
            index: entry.index,
            data: &[],
        }];
        if let Err(halted) = self.fsm.apply(&noop) {
            self.halt_on(entry.index, halted.halt.to_string());
            return Ok(());
        }
        if let Some(id) = self.own_proposal(entry.get_context())
            && let Some(w) = self.changes.remove(&id)
        {
            // Status shows the new configuration before the caller hears of it.
            self.publish();
            let _ = w.reply.send(Ok(cs));
        }
        self.drop_overwritten(entry.index);
        Ok(())
    }

    /// Records the Raft address a membership change carries in its context.
    fn learn_addresses(&mut self, change: &ConfChangeV2) {
        let addr = std::str::from_utf8(change.get_context())
            .ok()
            .filter(|a| !a.is_empty());
        for single in change.get_changes() {
            let id = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(addr) = addr {
                        self.peers.set(id, Some(addr.to_string()));
                        self.outbox.set_peer(id, Some(addr.to_string()));
                    }
                }
                ConfChangeType::RemoveNode => {
                    if id != self.config.id {
                        self.peers.set(id, None);
                        self.outbox.set_peer(id, None);
                    }
                }
            }
        }
        let path = PeerBook::path_in(&self.config.data_dir);
        if let Err(e) = self.peers.save(&path) {
            tracing::warn!("save peers after membership change: {e:#}");
        }
    }

    fn halt_on(&mut self, index: u64, cause: String) {
        let cause = format!("state machine halted at index {index}: {cause}");
        tracing::error!(index, "{cause}");
        self.set_halted(cause);
    }

    /// Records the halt and fails every waiting request with it.
    fn set_halted(&mut self, cause: String) {
        self.metrics.halted.set(1);
        self.halted = Some(cause.clone());
        let error = ProposeError::Halted(cause);
        fail_all(&mut self.proposals, &error);
        fail_all(&mut self.changes, &error);
        fail_all(&mut self.reads, &error);
    }

    fn complete_read(&mut self, state: ReadState) {
        let Some(id) = self.own_proposal(&state.request_ctx) else {
            return;
        };
        if let Some(w) = self.reads.remove(&id) {
            let _ = w.reply.send(Ok(state.index));
        }
    }

    fn maybe_compact(&mut self) -> Result<(), DriverError> {
        let applied = self.fsm.applied_index();
        let first = self.log.first_index();
        if applied < first || applied - first < self.config.compact_threshold {
            return Ok(());
        }
        self.compact_to(applied.saturating_sub(self.config.compact_keep))
            .map(|_| ())
            .map_err(log_err)
    }

    /// Drops log entries below `index` (clamped to the applied index).
    fn compact_to(&mut self, index: u64) -> Result<u64, sealkv_store::RaftLogError> {
        let index = index.min(self.fsm.applied_index());
        if index > self.log.first_index() {
            self.log.compact(index)?;
            tracing::info!(first_index = self.log.first_index(), "compacted raft log");
            self.metrics.compactions.inc();
        }
        self.publish();
        Ok(self.log.first_index())
    }

    fn publish(&self) {
        let raft = &self.raw.raft;
        let cs = self.log.conf_state();
        let applied = self.fsm.applied_index();
        let status = RaftStatus {
            id: self.config.id,
            role: raft.state.into(),
            leader_id: self.leader(),
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: applied,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            voters: cs.get_voters().to_vec(),
            learners: cs.get_learners().to_vec(),
            halted: self.halted.clone(),
            fatal: None,
        };
        self.metrics.observe(&status);
        if let Ok(mut s) = self.shared.status.write() {
            *s = status;
        }
        self.shared.applied.send_replace(applied);
    }
}

/// Refuses a rotate-DEK entry whose proposer row names another node than
/// `proposer`: a node may only register itself at epoch 1 under a new key.
fn proposer_names_itself(data: &[u8], proposer: u64) -> Result<(), ProposeError> {
    let Some((&sealkv_fsmwire::OP_ROTATION, payload)) = data.split_first() else {
        return Ok(());
    };
    let Ok(rotation) = sealkv_fsmwire::RotationPayload::decode(payload) else {
        // An envelope switch (or a payload admit already refused).
        return Ok(());
    };
    let named = rotation.proposer_registration.full_node_id;
    if named == proposer {
        return Ok(());
    }
    Err(ProposeError::Refused {
        reason: format!(
            "the rotation's proposer row names node {named:#x}, but node {proposer:#x} proposed it"
        ),
        retry: false,
    })
}

/// For an entry a peer forwarded: its context must be the sending node's, and a
/// rotation's proposer row must name that node.
fn forwarded_by(entry: &Entry, from: u64) -> Result<(), ProposeError> {
    let proposer = ProposalContext::decode(entry.get_context()).map(|ctx| ctx.node_id);
    if proposer != Some(from) {
        return Err(ProposeError::Refused {
            reason: format!("a proposal forwarded by node {from} carries another node's context"),
            retry: false,
        });
    }
    proposer_names_itself(entry.get_data(), from)
}

/// A membership change of one node, with the new node's Raft address as context.
pub fn single_change(kind: ConfChangeType, id: u64, addr: Option<&str>) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![single].into());
    if let Some(addr) = addr {
        change.set_context(addr.as_bytes().to_vec().into());
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealkv_fsmwire::{
        OP_ROTATION, Purpose, RegistrationPayload, RotationPayload, RotationSubtag,
    };

    fn rotation_entry(proposer_row: u64) -> Vec<u8> {
        let rotation = RotationPayload {
            subtag: RotationSubtag::RotateDek,
            dek_id: 3,
            purpose: Purpose::Storage,
            wrapped: vec![7; 60],
            proposer_registration: RegistrationPayload {
                dek_id: 3,
                full_node_id: proposer_row,
                local_epoch: 1,
            },
        };
        let mut data = vec![OP_ROTATION];
        data.extend(rotation.encode().expect("encode"));
        data
    }

    fn forwarded(data: Vec<u8>, node_id: u64) -> Entry {
        let mut entry = Entry::default();
        entry.set_data(data.into());
        let ctx = ProposalContext {
            node_id,
            load_id: 9,
            proposal_id: 1,
        };
        entry.set_context(ctx.encode().into());
        entry
    }

    #[test]
    fn a_rotation_may_only_register_its_proposer() {
        assert_eq!(proposer_names_itself(&rotation_entry(2), 2), Ok(()));
        assert!(matches!(
            proposer_names_itself(&rotation_entry(3), 2),
            Err(ProposeError::Refused { retry: false, .. })
        ));
        // Other entries carry no proposer row.
        assert_eq!(proposer_names_itself(&[0x00, 0x01], 2), Ok(()));
    }

    #[test]
    fn a_forwarded_proposal_carries_its_senders_context() {
        assert_eq!(forwarded_by(&forwarded(rotation_entry(2), 2), 2), Ok(()));
        // Node 2 forwards a rotation that registers node 3.
        assert!(forwarded_by(&forwarded(rotation_entry(3), 2), 2).is_err());
        // Node 2 forwards an entry in node 3's name.
        assert!(forwarded_by(&forwarded(vec![0x00], 3), 2).is_err());
        // No context at all.
        assert!(forwarded_by(&Entry::default(), 2).is_err());
    }
}

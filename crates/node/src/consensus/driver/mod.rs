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

mod admission;
mod apply;
mod handle;
mod membership;
mod snapshot;
mod validate;
mod waiters;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, SnapshotMetadata};
use raft::{RawNode, SnapshotStatus, StateRole};
use sealkv_kv::{KvFsm, Outcome};
use sealkv_store::RaftLog;
use tokio::sync::watch;

use self::admission::proposer_names_itself;
use self::handle::{Request, Shared};
use self::waiters::{Waiter, fail_all};
use super::context::ProposalContext;
use super::throttle::{LOG_WINDOW, Throttle};
use super::{Outbox, PeerBook};
use crate::metrics::Metrics;

pub use self::handle::{NodeHalt, ProposeError, RaftHandle, RaftStatus, Role};
pub use self::membership::single_change;
pub use self::snapshot::recover_pending_snapshot;
pub use self::validate::DropReason;

/// The index of the synthetic snapshot a new cluster's log starts from.
const BOOTSTRAP_INDEX: u64 = 1;
/// The entry bytes one append message carries (or one larger entry); the
/// transport's normal-lane frame limit counts on it.
pub(crate) const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// How many requests the driver's queue holds before callers are told it is busy.
const QUEUE: usize = 16 * 1024;

/// Raft timing and log compaction.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Length of one tick.
    pub tick: Duration,
    /// Ticks before a follower without a leader campaigns.
    pub election_ticks: usize,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries in the log that trigger a compaction.
    pub compact_threshold: u64,
    /// Applied entries kept after a compaction.
    pub compact_keep: u64,
    /// How long a client waits for a write or a linearizable read.
    pub request_timeout: Duration,
    /// The size of the chunks this node streams snapshots in
    /// (`--snapshot-chunk-bytes`, hidden; 1 MiB, at most 16 MiB).
    pub snapshot_chunk_bytes: usize,
}

/// How the Raft driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's Raft id.
    pub id: u64,
    /// The data directory (the pending-snapshot and peers files live there).
    pub data_dir: PathBuf,
    /// Raft timing and log compaction.
    pub tuning: RaftTuning,
    /// The largest entry proposed: a larger proposal is refused before it reaches
    /// Raft, and a peer's forwarded proposal carrying one is dropped.
    pub max_entry_bytes: usize,
    /// When set, nothing is applied until it is true (an encrypted node's check of
    /// its epochs against the cluster's record), unless this node leads or is
    /// alone; the driver sets it when this node becomes leader.
    pub apply_gate: Option<Arc<std::sync::atomic::AtomicBool>>,
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
    /// The driver thread panicked (a bug, or a test's fail point modelling a
    /// crash): it stopped where it was, and the node exits.
    #[error("raft driver panicked: {0}")]
    Panicked(String),
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

struct Driver {
    config: DriverConfig,
    raw: RawNode<RaftLog>,
    log: RaftLog,
    fsm: KvFsm,
    outbox: Arc<dyn Outbox>,
    peers: PeerBook,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    next_id: u64,
    proposals: HashMap<u64, Waiter<Outcome>>,
    changes: HashMap<u64, Waiter<ConfState>>,
    reads: HashMap<u64, Waiter<u64>>,
    halted: Option<NodeHalt>,
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
    /// Rate-limits the log lines of dropped peer messages.
    drop_log: Throttle,
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
        election_tick: config.tuning.election_ticks,
        heartbeat_tick: config.tuning.heartbeat_ticks,
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
        timeout: config.tuning.request_timeout,
    };
    let mut driver = Driver {
        config,
        raw,
        log,
        fsm,
        outbox,
        peers,
        shared,
        metrics,
        next_id: 1,
        load_id: super::context::new_load_id(),
        contact: false,
        skipped_to: 0,
        drop_log: Throttle::new(LOG_WINDOW),
        proposals: HashMap::new(),
        changes: HashMap::new(),
        reads: HashMap::new(),
        halted: None,
    };
    driver.publish();
    let thread = std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || {
            // A panic stops the driver where it was, as a crash would: nothing of
            // the Ready in hand is written after it. It is caught only to report it
            // (status, health) and to answer the waiters; the node then exits.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(&rx)))
                .unwrap_or_else(|panic| Err(DriverError::Panicked(panic_message(&*panic))));
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

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}

fn log_err(e: impl std::error::Error + Send + Sync + 'static) -> DriverError {
    DriverError::Log(Box::new(e))
}

impl Driver {
    fn run(&mut self, rx: &Receiver<Request>) -> Result<(), DriverError> {
        let mut last_tick = Instant::now();
        loop {
            let wait = self.config.tuning.tick.saturating_sub(last_tick.elapsed());
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
            if last_tick.elapsed() >= self.config.tuning.tick {
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
        Instant::now() + self.config.tuning.request_timeout
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
            #[cfg(feature = "failpoints")]
            Request::ProposeRaw { data, reply } => {
                if let Some(e) = self.refuse() {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let (id, ctx) = self.next_context();
                let proposed = self.raw.propose(ctx, data);
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
            Request::Step { origin, message } => {
                if self.halted.is_some() {
                    return Ok(());
                }
                if !self.admit_peer_message(origin, &message)? {
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

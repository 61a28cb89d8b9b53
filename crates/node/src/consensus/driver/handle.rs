//! What async code sees of the driver: the cloneable [`RaftHandle`], the requests it
//! queues for the driver thread, and the errors and status it hands back.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::StateRole;
use raft::prelude::{ConfChangeV2, ConfState, Message};
use sealkv_kv::Outcome;
use serde::Serialize;

use crate::consensus::transport::Origin;
use tokio::sync::{oneshot, watch};

/// Why this node's state machine halted, as it travels through the driver, its
/// status and every error it fails a request with. Rendered to text only where it
/// leaves the node (the status JSON, an HTTP or Redis error reply).
#[derive(Debug, Clone)]
pub enum NodeHalt {
    /// The state machine could not apply an entry.
    StateMachine(sealkv_kv::Halt),
    /// A membership-change entry could not be decoded or applied.
    Membership {
        /// The entry's index.
        index: u64,
        /// Why.
        cause: String,
    },
}

impl NodeHalt {
    /// The index of the entry that could not be applied.
    pub fn index(&self) -> u64 {
        match self {
            NodeHalt::StateMachine(halt) => halt.index,
            NodeHalt::Membership { index, .. } => *index,
        }
    }
}

impl std::fmt::Display for NodeHalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeHalt::StateMachine(halt) => write!(f, "{halt}"),
            NodeHalt::Membership { index, cause } => {
                write!(f, "state machine halted at index {index}: {cause}")
            }
        }
    }
}

/// Two halts are the same when they stop at the same index for the same reason.
impl PartialEq for NodeHalt {
    fn eq(&self, other: &NodeHalt) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for NodeHalt {}

impl Serialize for NodeHalt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a proposal, read or membership change did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is in progress).
    #[error("no leader: an election is in progress, retry shortly")]
    NoLeader,
    /// The state machine has halted; writes and linearizable reads are refused.
    #[error("state machine halted: {0}")]
    Halted(NodeHalt),
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
    /// The halt, if the state machine halted (in JSON, its one-line text).
    pub halted: Option<NodeHalt>,
    /// Set when the driver stopped on a fatal error.
    pub fatal: Option<String>,
}

/// A request to the driver thread.
pub(super) enum Request {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    /// A proposal that skips admission (test builds only).
    #[cfg(feature = "failpoints")]
    ProposeRaw {
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
    Step {
        origin: Origin,
        message: Box<Message>,
    },
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    Fatal(String),
    Shutdown,
}

pub(super) struct Shared {
    pub(super) status: RwLock<RaftStatus>,
    pub(super) applied: watch::Sender<u64>,
}

/// The cloneable way to talk to the driver from async code.
#[derive(Clone)]
pub struct RaftHandle {
    pub(super) tx: SyncSender<Request>,
    pub(super) shared: Arc<Shared>,
    pub(super) timeout: Duration,
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

    /// Proposes `data` as it is, skipping admission (the size cap and
    /// [`KvFsm::admit`](sealkv_kv::KvFsm::admit)), and waits until this node
    /// applied it: how a test puts an entry every replica halts on into the log.
    /// Only in test builds (feature `failpoints`). On a follower it is forwarded to
    /// the leader, whose admission drops it: send it to the leader.
    ///
    /// # Errors
    /// Any [`ProposeError`]; [`ProposeError::Halted`] when the entry halts.
    #[cfg(feature = "failpoints")]
    pub async fn propose_raw(&self, data: Vec<u8>) -> Result<Outcome, ProposeError> {
        self.ask(|reply| Request::ProposeRaw { data, reply }).await
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

    /// Hands a message a peer sent from `origin` to Raft, which checks it first;
    /// dropped when the queue is full (Raft retransmits).
    pub fn step(&self, origin: Origin, message: Message) {
        let _ = self.send(Request::Step {
            origin,
            message: Box::new(message),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A halt travels typed and leaves the node as one line: in the status JSON,
    /// and in the error a refused request gets.
    #[test]
    fn a_halt_is_a_type_inside_and_one_line_outside() {
        let halt = NodeHalt::Membership {
            index: 42,
            cause: "decode membership change: bad bytes".to_string(),
        };
        assert_eq!(halt.index(), 42);
        let line = "state machine halted at index 42: decode membership change: bad bytes";
        assert_eq!(halt.to_string(), line);
        assert_eq!(
            serde_json::to_value(Some(&halt)).expect("json"),
            serde_json::Value::String(line.to_string())
        );
        let error = ProposeError::Halted(halt.clone());
        assert_eq!(error, ProposeError::Halted(halt));
        assert!(error.to_string().ends_with(line), "{error}");
    }
}

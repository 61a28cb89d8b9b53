//! The seam between the RESP front end and whatever replicates and applies its
//! commands: the [`Backend`] trait, the values and errors that cross it, and the
//! [`InfoSnapshot`] that `INFO` renders.
//!
//! The RESP layer knows nothing of Raft. The node's Raft driver implements
//! [`Backend`]; tests implement it over a bare [`KvFsm`](sealkv_kv::KvFsm).

use std::future::Future;

use sealkv_kv::{KvRequest, Reply};

/// Read consistency a client asked for.
///
/// A connection starts [`Linearizable`](Self::Linearizable); `READONLY` switches it
/// to [`Stale`](Self::Stale) and `READWRITE` back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// The read reflects every write acknowledged before it started. Only the
    /// leader (or a follower forwarding a read index) can serve it; a node that
    /// cannot answers [`ApiError::NotLeader`] or [`ApiError::NoLeader`].
    #[default]
    Linearizable,
    /// The read is served from this node's applied state, which may lag the leader.
    /// Any node can serve it, including a follower cut off from the leader.
    Stale,
}

/// A value as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRead {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// Absolute expiry in ms since the Unix epoch; `0` means none.
    pub expire_at_ms: u64,
}

/// Why the backend could not serve a request. Each variant becomes one Redis error
/// reply (see [`ApiError::redis_error`]); none of them closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// This node is not the leader and the request needs the leader.
    #[error("not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's client address (`host:port`), when known.
        leader: Option<String>,
    },
    /// No node is leader right now: an election is in progress.
    #[error("no leader: an election is in progress")]
    NoLeader,
    /// The state machine halted (DESIGN.md §3) and refuses requests until an
    /// operator fixes the cause.
    #[error("state machine halted: {0}")]
    Halted(String),
    /// The request did not complete in time. A write may or may not have been
    /// applied.
    #[error("request timed out")]
    Timeout,
    /// The node cannot take writes yet and will shortly (encryption is being
    /// switched on); the client should retry.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The write is larger than the node takes; it was not proposed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Stored data failed an integrity check (a failed decrypt, a corrupt value).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// Anything else that went wrong inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The Redis error reply for this error, without the leading `-` and the
    /// trailing CRLF. The first word is the error code clients switch on:
    ///
    /// | error | reply |
    /// |---|---|
    /// | `NotLeader` | `NOTLEADER this node is not the leader; the leader is at HOST:PORT` (or `... the leader is unknown`) |
    /// | `NoLeader` | `TRYAGAIN no leader: an election is in progress` |
    /// | `Halted` | `HALTED the state machine is halted: CAUSE` |
    /// | `Timeout` | `TIMEOUT the request timed out; a write may or may not have been applied` |
    /// | `NotReady` | `TRYAGAIN DETAIL` |
    /// | `TooLarge` | `ERR DETAIL` |
    /// | `Integrity` | `INTEGRITY stored data failed an integrity check: DETAIL` |
    /// | `Internal` | `ERR internal error: DETAIL` |
    ///
    /// `TRYAGAIN` is the code Redis Cluster uses for "retry later", which cluster
    /// clients already retry on.
    pub fn redis_error(&self) -> String {
        match self {
            ApiError::NotLeader { leader: Some(addr) } => {
                format!("NOTLEADER this node is not the leader; the leader is at {addr}")
            }
            ApiError::NotLeader { leader: None } => {
                "NOTLEADER this node is not the leader; the leader is unknown".to_string()
            }
            ApiError::NoLeader => "TRYAGAIN no leader: an election is in progress".to_string(),
            ApiError::Halted(cause) => format!("HALTED the state machine is halted: {cause}"),
            ApiError::Timeout => {
                "TIMEOUT the request timed out; a write may or may not have been applied"
                    .to_string()
            }
            ApiError::NotReady(detail) => format!("TRYAGAIN {detail}"),
            ApiError::TooLarge(detail) => format!("ERR {detail}"),
            ApiError::Integrity(detail) => {
                format!("INTEGRITY stored data failed an integrity check: {detail}")
            }
            ApiError::Internal(detail) => format!("ERR internal error: {detail}"),
        }
    }
}

/// The node's Raft role, as `INFO replication` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RaftRole {
    /// Follows a leader (or waits for one). Reported as `role:slave`.
    #[default]
    Follower,
    /// Runs a pre-vote. Reported as `role:slave`.
    PreCandidate,
    /// Runs an election. Reported as `role:slave`.
    Candidate,
    /// The leader. Reported as `role:master`.
    Leader,
}

impl RaftRole {
    /// The lowercase name `INFO` prints in `sealkv_raft_role`.
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Follower => "follower",
            RaftRole::PreCandidate => "pre-candidate",
            RaftRole::Candidate => "candidate",
            RaftRole::Leader => "leader",
        }
    }
}

/// What `INFO server` and `INFO replication` report about the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfoSnapshot {
    /// The node's 64-bit id.
    pub node_id: u64,
    /// The node's Raft role.
    pub role: RaftRole,
    /// The leader's node id, when known.
    pub leader_id: Option<u64>,
    /// The leader's client address (`host:port`), when known.
    pub leader_addr: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// The highest log index known to be committed.
    pub commit_index: u64,
    /// The highest log index applied to the state machine.
    pub applied_index: u64,
    /// The halt cause, when the state machine has halted.
    pub halted: Option<String>,
}

/// What the RESP layer needs from the node: replicated writes, reads at a chosen
/// consistency, the key count and a status snapshot.
///
/// The protocol:
///
/// * [`write`](Self::write) proposes `request` as **one** log entry, so all its
///   commands apply atomically and in order, waits until that entry is applied, and
///   returns one [`Reply`] per command, in order. A user-level failure (`INCR` on a
///   non-integer, a key under `!encryption|`) is a [`Reply::Error`], not an
///   [`ApiError`]. The request's `issued_at_ms` and every `expire_at_ms` are
///   absolute times from the RESP layer's clock; the backend must not rewrite them.
/// * [`read`](Self::read) returns one entry per key, in order, duplicates included:
///   `Some` for a live value, `None` for a missing, tombstoned or expired one, with
///   expiry judged at the backend's current wall-clock time.
/// * [`dbsize`](Self::dbsize) counts live keys at the given consistency.
/// * [`info`](Self::info) never fails: it reports what the node knows right now.
///
/// Any of these futures may be dropped before it completes (the client went away,
/// the request timed out, the server is shutting down). The backend must tolerate
/// that; a dropped write may still be committed and applied.
pub trait Backend: Send + Sync + 'static {
    /// Proposes `request` as one entry and returns its replies once it is applied.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] / [`ApiError::NoLeader`] when this node cannot
    /// propose; [`ApiError::Timeout`] when the outcome is unknown;
    /// [`ApiError::Halted`] once the state machine halted.
    fn write(
        &self,
        request: KvRequest,
    ) -> impl Future<Output = Result<Vec<Reply>, ApiError>> + Send;

    /// Reads the live values of `keys`.
    ///
    /// # Errors
    /// [`ApiError::NotLeader`] / [`ApiError::NoLeader`] for a linearizable read this
    /// node cannot serve; [`ApiError::Integrity`] for a value that fails to decrypt.
    fn read(
        &self,
        keys: Vec<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> impl Future<Output = Result<Vec<Option<ValueRead>>, ApiError>> + Send;

    /// Counts live keys.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    fn dbsize(
        &self,
        consistency: ReadConsistency,
    ) -> impl Future<Output = Result<u64, ApiError>> + Send;

    /// A snapshot of the node's role and indexes.
    fn info(&self) -> impl Future<Output = InfoSnapshot> + Send;
}

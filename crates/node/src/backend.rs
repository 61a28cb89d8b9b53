//! [`NodeBackend`]: the Redis front end's [`Backend`] over the Raft driver and the
//! state machine's reader. Writes are proposed through Raft (a follower's proposal is
//! forwarded to the leader by raft-rs) and answered once this node applied them;
//! linearizable reads wait for a Raft ReadIndex confirmed by a quorum and for this
//! node to apply up to it; stale reads read what this node has applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sealkv_encryption::keyring::Keyring;
use sealkv_kv::{KvRequest, Outcome, ReadError, Reader, Reply};

use crate::consensus::transport::Transport;
use crate::consensus::{ProposeError, RaftHandle, Role};
use crate::metrics::Metrics;
use crate::resp::{ApiError, Backend, InfoSnapshot, RaftRole, ReadConsistency, ValueRead};

/// The node's data API.
#[derive(Debug, Clone)]
pub struct NodeBackend {
    raft: RaftHandle,
    reader: Reader,
    transport: Arc<Transport>,
    keyring: Option<Arc<Keyring>>,
    registered: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl NodeBackend {
    /// A backend over the driver and a reader of the same store; the transport tells
    /// where the leader serves Redis clients. With encryption (the keyring, and the
    /// flag set once this load's epochs are registered), writes wait for both the
    /// registration and the storage envelope, and are wrapped in raft envelopes
    /// after the cutover.
    pub fn new(
        raft: RaftHandle,
        reader: Reader,
        transport: Arc<Transport>,
        encryption: Option<(Arc<Keyring>, Arc<AtomicBool>)>,
        metrics: Arc<Metrics>,
    ) -> NodeBackend {
        let (keyring, registered) = match encryption {
            Some((keyring, registered)) => (Some(keyring), registered),
            None => (None, Arc::new(AtomicBool::new(true))),
        };
        NodeBackend {
            raft,
            reader,
            transport,
            keyring,
            registered,
            metrics,
        }
    }

    /// Maps a read failure to its reply, counting decrypt failures by reason.
    fn read_error(&self, e: ReadError) -> ApiError {
        if let Some(reason) = e.decrypt_failure_reason() {
            self.metrics
                .decrypt_failures
                .with_label_values(&[reason])
                .inc();
        }
        read_error(e)
    }

    /// The Raft entry for `request`: on an encrypted node, refused until this load's
    /// epochs are registered and both envelopes are on (no user value is ever
    /// stored in cleartext, in the store or in the Raft log), then always wrapped in
    /// a raft envelope.
    fn encode(&self, request: &KvRequest) -> Result<Vec<u8>, ApiError> {
        let internal = |e: &dyn std::error::Error| {
            ApiError::Internal(format!("encode request: {}", crate::error_chain(e)))
        };
        let Some(keyring) = &self.keyring else {
            return request.to_entry().map_err(|e| internal(&e));
        };
        if !self.registered.load(Ordering::Acquire) {
            return Err(ApiError::NotReady(
                "this node's key epochs are being registered through raft".to_string(),
            ));
        }
        // Both envelopes must be on: a write taken with only the storage envelope
        // would sit in the Raft log in cleartext.
        if !keyring.storage_envelope_active() || keyring.raft_envelope_cutover_index() == 0 {
            return Err(ApiError::NotReady(
                "encryption is enabled and its envelopes are not both on yet (a new cluster \
                 turns them on by itself; an existing one needs `sealkv encryption bootstrap`)"
                    .to_string(),
            ));
        }
        request.to_wrapped_entry(keyring).map_err(|e| internal(&e))
    }

    async fn barrier(&self, consistency: ReadConsistency) -> Result<(), ApiError> {
        match consistency {
            ReadConsistency::Linearizable => {
                self.raft.linearizable_barrier().await.map_err(api_error)?;
            }
            ReadConsistency::Stale => {}
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn api_error(e: ProposeError) -> ApiError {
    match e {
        ProposeError::NoLeader => ApiError::NoLeader,
        ProposeError::Halted(halt) => ApiError::Halted(halt.to_string()),
        ProposeError::Timeout => ApiError::Timeout,
        ProposeError::Busy => ApiError::NotReady(e.to_string()),
        ProposeError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
        ProposeError::Refused { retry: true, .. } => ApiError::NotReady(e.to_string()),
        ProposeError::Refused { retry: false, .. } => ApiError::Internal(e.to_string()),
        ProposeError::Dropped | ProposeError::Stopped | ProposeError::Rejected(_) => {
            ApiError::Internal(e.to_string())
        }
    }
}

fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::Encrypted(_)
        | ReadError::Integrity { .. }
        | ReadError::ClearAfterSwitch { .. } => ApiError::Integrity(crate::error_chain(&e)),
        ReadError::Storage(s) => ApiError::Internal(format!("read value: {s}")),
        other => ApiError::Internal(crate::error_chain(&other)),
    }
}

impl Backend for NodeBackend {
    async fn write(&self, request: KvRequest) -> Result<Vec<Reply>, ApiError> {
        // A halted node says so first: an encrypted node restarted onto the entry it
        // halts on never gets its registration applied, and would otherwise answer
        // TRYAGAIN (retry shortly) forever instead of HALTED (needs an operator).
        if let Some(halt) = self.raft.status().halted {
            return Err(ApiError::Halted(halt.to_string()));
        }
        let data = self.encode(&request)?;
        match self.raft.propose(data).await.map_err(api_error)? {
            Outcome::Kv(replies) => Ok(replies),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn read(
        &self,
        keys: Vec<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<Vec<Option<ValueRead>>, ApiError> {
        self.barrier(consistency).await?;
        let reader = self.reader.clone();
        let now = now_ms();
        tokio::task::spawn_blocking(move || {
            keys.iter()
                .map(|k| {
                    reader.get(k, now).map(|v| {
                        v.map(|live| ValueRead {
                            value: live.value,
                            expire_at_ms: live.expire_at_ms,
                        })
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read task: {e}")))?
        .map_err(|e| self.read_error(e))
    }

    async fn dbsize(&self, consistency: ReadConsistency) -> Result<u64, ApiError> {
        self.barrier(consistency).await?;
        let reader = self.reader.clone();
        let now = now_ms();
        tokio::task::spawn_blocking(move || reader.count_live(now))
            .await
            .map_err(|e| ApiError::Internal(format!("dbsize task: {e}")))?
            .map_err(|e| self.read_error(e))
    }

    async fn info(&self) -> InfoSnapshot {
        let s = self.raft.status();
        InfoSnapshot {
            node_id: s.id,
            role: match s.role {
                Role::Follower => RaftRole::Follower,
                Role::PreCandidate => RaftRole::PreCandidate,
                Role::Candidate => RaftRole::Candidate,
                Role::Leader => RaftRole::Leader,
            },
            leader_id: s.leader_id,
            leader_addr: s.leader_id.and_then(|id| self.transport.redis_addr_of(id)),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            halted: s.halted.map(|h| h.to_string()),
        }
    }
}

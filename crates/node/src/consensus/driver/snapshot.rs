//! The log's prefix: installing a snapshot from the leader (crash-safe through the
//! pending-snapshot file) and compacting the applied entries away.

use protobuf::Message as _;
use raft::prelude::Snapshot;
use sealkv_encryption::durable::durable_replace;
use sealkv_kv::KvFsm;
use sealkv_store::RaftLog;

use super::waiters::fail_all;
use super::{Driver, DriverError, ProposeError, log_err};

/// Name of the file a received snapshot is kept in until it is fully installed.
const PENDING_SNAPSHOT: &str = "snapshot.pending";

/// Recovers from a crash in the middle of a snapshot install: if the pending
/// snapshot file exists, installs its data into the store and its metadata into the
/// log again (both are idempotent), then removes the file. Called at startup before
/// the Raft node is built.
///
/// # Errors
/// When the file does not decode or a step fails; the node must not start then.
pub fn recover_pending_snapshot(
    data_dir: &std::path::Path,
    fsm: &mut KvFsm,
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
    if install(fsm, log, &snapshot)? {
        tracing::info!("adopted the encryption keys of the snapshot");
    }
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(true)
}

/// The state machine installs the data ([`KvFsm::install_snapshot`]), then the
/// log records the snapshot; both steps are idempotent. Returns whether keys were
/// adopted.
fn install(fsm: &mut KvFsm, log: &RaftLog, snapshot: &Snapshot) -> anyhow::Result<bool> {
    use anyhow::Context;
    let meta = snapshot.get_metadata();
    let adopted = fsm
        .install_snapshot(meta.index, snapshot.get_data())
        .context("install the snapshot into the state machine")?;
    // The log's snapshot index is first_index - 1.
    if meta.index >= log.first_index() {
        log.apply_snapshot(meta)
            .context("install snapshot metadata into the raft log")?;
    }
    Ok(adopted)
}

impl Driver {
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), DriverError> {
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
        let adopted = install(&mut self.fsm, &self.log, snapshot).map_err(DriverError::Snapshot)?;
        std::fs::remove_file(&path).map_err(|e| DriverError::Snapshot(e.into()))?;
        if adopted {
            tracing::info!(index, "adopted the encryption keys the snapshot carried");
        }
        self.metrics.snapshots_installed.inc();
        // Proposals waiting on entries the snapshot covers will not be applied here
        // one by one; their outcome is unknown to this node.
        fail_all(&mut self.proposals, &ProposeError::Timeout);
        fail_all(&mut self.changes, &ProposeError::Timeout);
        Ok(())
    }

    pub(super) fn maybe_compact(&mut self) -> Result<(), DriverError> {
        let applied = self.fsm.applied_index();
        let first = self.log.first_index();
        if applied < first || applied - first < self.config.tuning.compact_threshold {
            return Ok(());
        }
        self.compact_to(applied.saturating_sub(self.config.tuning.compact_keep))
            .map(|_| ())
            .map_err(log_err)
    }

    /// Drops log entries below `index` (clamped to the applied index).
    pub(super) fn compact_to(&mut self, index: u64) -> Result<u64, sealkv_store::RaftLogError> {
        let index = index.min(self.fsm.applied_index());
        if index > self.log.first_index() {
            self.log.compact(index)?;
            tracing::info!(first_index = self.log.first_index(), "compacted raft log");
            self.metrics.compactions.inc();
        }
        self.publish();
        Ok(self.log.first_index())
    }
}

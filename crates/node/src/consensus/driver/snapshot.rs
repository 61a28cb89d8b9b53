//! The log's prefix: installing a snapshot from the leader (crash-safe through the
//! pending-snapshot files) and compacting the applied entries away.
//!
//! Files in the data directory:
//!
//! | file | holds |
//! |------|-------|
//! | `snapshot.recv.<id>.partial` | a transfer arriving (`snapstream`) |
//! | `snapshot.recv.<id>` | a transfer that checked out, until raft-rs hands its snapshot over |
//! | `snapshot.pending.dump` | the dump being installed |
//! | `snapshot.pending` | the snapshot's message (metadata and descriptor); present from the moment the install begins until it has ended |

use protobuf::Message as _;
use raft::prelude::Snapshot;
use sealkv_encryption::durable::durable_replace;
use sealkv_kv::{KvFsm, SnapshotData};
use sealkv_store::{RaftLog, RocksStore, SnapshotDescriptor};

use crate::consensus::snapstream;

use super::waiters::fail_all;
use super::{Driver, DriverError, ProposeError, log_err};

/// Name of the file that holds a received snapshot's message (metadata and
/// descriptor) until it is fully installed: its presence says an install is under
/// way, and startup finishes it.
const PENDING_SNAPSHOT: &str = "snapshot.pending";
/// Name of the file that holds the dump of the pending snapshot.
const PENDING_DUMP: &str = "snapshot.pending.dump";

fn remove_if_present(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Recovers from a crash in the middle of a snapshot install: if the pending
/// snapshot file exists, installs its dump (`snapshot.pending.dump`) into the store
/// and its metadata into the log again (both are idempotent), then removes both
/// files. Removes received snapshot files no install took. Called at startup before
/// the Raft node is built.
///
/// # Errors
/// When the files do not decode or a step fails, or when the store holds part of a
/// snapshot and no pending file says which; the node must not start then.
pub fn recover_pending_snapshot(
    data_dir: &std::path::Path,
    fsm: &mut KvFsm,
    log: &RaftLog,
    store: &RocksStore,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    snapstream::remove_received(data_dir, None);
    let path = data_dir.join(PENDING_SNAPSHOT);
    let dump = data_dir.join(PENDING_DUMP);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dump moved into place before its message was: no install began.
            remove_if_present(&dump).with_context(|| format!("remove {}", dump.display()))?;
            if let Some(index) = store.snapshot_install_marker()? {
                anyhow::bail!(
                    "the store holds part of the snapshot at index {index} and {} is missing: \
                     restore this node from a backup or remove its data directory and add it again",
                    path.display()
                );
            }
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let snapshot = Snapshot::parse_from_bytes(&bytes)
        .with_context(|| format!("decode pending snapshot {}", path.display()))?;
    if install(fsm, log, &snapshot, &dump)? {
        tracing::info!("adopted the encryption keys of the snapshot");
    }
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    remove_if_present(&dump).with_context(|| format!("remove {}", dump.display()))?;
    Ok(true)
}

/// The state machine installs the data ([`KvFsm::install_snapshot`]), from the
/// file `dump` for a streamed snapshot (whose data is a descriptor), from the
/// message itself for one of the format before; then the log records the snapshot.
/// Both steps are idempotent. Returns whether keys were adopted.
fn install(
    fsm: &mut KvFsm,
    log: &RaftLog,
    snapshot: &Snapshot,
    dump: &std::path::Path,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    let meta = snapshot.get_metadata();
    let data = if SnapshotDescriptor::is_descriptor(snapshot.get_data()) {
        SnapshotData::File(dump)
    } else {
        SnapshotData::Bytes(snapshot.get_data())
    };
    let adopted = fsm
        .install_snapshot(meta.index, data)
        .context("install the snapshot into the state machine")?;
    // The log's snapshot index is first_index - 1.
    if meta.index >= log.first_index() {
        log.apply_snapshot(meta)
            .context("install snapshot metadata into the raft log")?;
    }
    Ok(adopted)
}

impl Driver {
    /// Installs a snapshot raft-rs took: its dump is the file the transport received
    /// (`snapstream::received_path`), moved to `snapshot.pending.dump`; then the
    /// message goes to `snapshot.pending` (the install is under way from then on),
    /// the install runs, and both files are removed.
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), DriverError> {
        let fail = |e: anyhow::Error| DriverError::Snapshot(e);
        let index = snapshot.get_metadata().index;
        let descriptor = SnapshotDescriptor::decode(snapshot.get_data())
            .map_err(|e| fail(anyhow::Error::new(e).context("the snapshot's descriptor")))?;
        tracing::info!(
            index,
            bytes = descriptor.total_bytes,
            id = format_args!("{:016x}", descriptor.id),
            "installing snapshot"
        );
        let dir = &self.config.data_dir;
        let dump = dir.join(PENDING_DUMP);
        std::fs::rename(snapstream::received_path(dir, descriptor.id), &dump)
            .map_err(|e| fail(anyhow::Error::new(e).context("move the received snapshot file")))?;
        let path = dir.join(PENDING_SNAPSHOT);
        let bytes = snapshot
            .write_to_bytes()
            .map_err(|e| DriverError::Snapshot(e.into()))?;
        durable_replace(&path, &bytes, 0o600).map_err(|e| DriverError::Snapshot(e.into()))?;
        let adopted =
            install(&mut self.fsm, &self.log, snapshot, &dump).map_err(DriverError::Snapshot)?;
        std::fs::remove_file(&path).map_err(|e| DriverError::Snapshot(e.into()))?;
        std::fs::remove_file(&dump).map_err(|e| DriverError::Snapshot(e.into()))?;
        // Snapshots received a while ago that raft-rs did not take are of no use.
        snapstream::remove_received(dir, Some(snapstream::STALE_RECEIVED));
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

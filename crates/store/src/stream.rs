//! Streamed snapshots: the small descriptor a Raft `MsgSnapshot` carries in place
//! of the state machine's dump, and the sending side's consistent view, a RocksDB
//! checkpoint the dump is streamed from in bounded chunks.
//!
//! `raft::Storage::snapshot` on [`RaftLog`](crate::RaftLog) creates a checkpoint of
//! the database (hard links to its SST files, after a flush) in
//! [`RocksStore::snapshot_out_dir`](crate::RocksStore::snapshot_out_dir) and returns
//! a snapshot whose data is an *unsealed* descriptor: the snapshot id (which names
//! the checkpoint) and the applied index. The transport streams the checkpoint's
//! dump ([`stream_checkpoint`]) and then sends the message with the descriptor
//! *sealed*: the dump's length, its chunk count and its SHA-256. The receiver keeps
//! the dump in a file and hands raft-rs the message only once the file matches the
//! sealed descriptor.
//!
//! A checkpoint rather than a RocksDB snapshot: the view must outlive the call
//! that takes it (the transport streams it later, on another thread, at the
//! network's pace), and a checkpoint is a directory any thread can open on its own,
//! with no borrow of the live database, that pins no memtable and leaves the live
//! database's compactions free; it costs a memtable flush and, while it lives,
//! the disk of the SST files compacted away meanwhile.
//!
//! ```text
//! descriptor, version 1, 69 bytes:
//! 0        4         5              13                21              29             37           69
//! +--------+---------+--------------+-----------------+---------------+--------------+------------+
//! | "SKVD" | version | snapshot id  | applied index   | total bytes   | chunk count  | SHA-256    |
//! |        | 0x01    | u64 BE       | u64 BE          | u64 BE        | u64 BE       | 32 bytes   |
//! +--------+---------+--------------+-----------------+---------------+--------------+------------+
//! unsealed (as `Storage::snapshot` returns it): total bytes, chunk count and SHA-256 all zero
//! ```

use std::path::{Path, PathBuf};

use rocksdb::{DB, Options};

use crate::rocks::{COLUMN_FAMILIES, backend};
use crate::{Result, StoreError, dump};

/// The first four bytes of every descriptor.
const MAGIC: &[u8; 4] = b"SKVD";
/// The descriptor version this code writes and reads.
const VERSION: u8 = 1;
/// Length of an encoded descriptor.
pub const DESCRIPTOR_LEN: usize = 69;

/// What a streamed snapshot's `Snapshot.data` carries (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    /// Names the sender's checkpoint and the receiver's file; random.
    pub id: u64,
    /// The applied index of the dump (the snapshot's metadata index).
    pub applied_index: u64,
    /// The dump's length in bytes (0 while unsealed).
    pub total_bytes: u64,
    /// How many chunks carried it (0 while unsealed).
    pub chunk_count: u64,
    /// SHA-256 of the whole dump as sent (zero while unsealed).
    pub digest: [u8; 32],
}

impl SnapshotDescriptor {
    /// The descriptor's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DESCRIPTOR_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for n in [
            self.id,
            self.applied_index,
            self.total_bytes,
            self.chunk_count,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.digest);
        out
    }

    /// Decodes a descriptor.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] on a wrong length, magic or version.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotDescriptor> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "snapshot descriptor",
            reason,
        };
        let Ok(bytes) = <&[u8; DESCRIPTOR_LEN]>::try_from(bytes) else {
            return Err(corrupt(format!(
                "{} bytes, want {DESCRIPTOR_LEN}",
                bytes.len()
            )));
        };
        let (magic, rest) = bytes.split_at(4);
        if magic != MAGIC {
            return Err(corrupt(format!("magic {magic:02x?}, want {MAGIC:02x?}")));
        }
        let (version, mut rest) = rest.split_at(1);
        if version != [VERSION] {
            return Err(corrupt(format!("unknown version {version:?}")));
        }
        let mut next = || {
            let (n, tail) = rest.split_at(8);
            rest = tail;
            let mut b = [0u8; 8];
            b.copy_from_slice(n);
            u64::from_be_bytes(b)
        };
        let (id, applied_index, total_bytes, chunk_count) = (next(), next(), next(), next());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(rest);
        Ok(SnapshotDescriptor {
            id,
            applied_index,
            total_bytes,
            chunk_count,
            digest,
        })
    }

    /// Whether `data` looks like a descriptor (its magic), rather than a dump of
    /// the format before streaming.
    pub fn is_descriptor(data: &[u8]) -> bool {
        data.starts_with(MAGIC)
    }

    /// The directory of this snapshot's checkpoint in `out_dir`.
    pub fn checkpoint_dir(&self, out_dir: &Path) -> PathBuf {
        out_dir.join(format!("{:016x}", self.id))
    }
}

/// What streaming a dump produced: what the sender seals the descriptor with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    /// Bytes streamed.
    pub total_bytes: u64,
    /// Chunks streamed.
    pub chunk_count: u64,
    /// SHA-256 of every byte streamed.
    pub digest: [u8; 32],
}

/// Creates the checkpoint of a new outgoing snapshot: a random id, a checkpoint
/// directory named by it in `out_dir`. Checkpoints there older than
/// [`CHECKPOINT_KEEP`] (never streamed: their message was dropped) are removed
/// first.
pub(crate) fn create_checkpoint(db: &DB, out_dir: &Path) -> Result<u64> {
    let io = |op: &'static str| {
        move |e: std::io::Error| StoreError::Backend {
            op,
            source: Box::new(e),
        }
    };
    std::fs::create_dir_all(out_dir).map_err(io("create snapshot checkpoint dir"))?;
    prune_checkpoints(out_dir);
    let mut id_bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut id_bytes).map_err(|_| StoreError::Backend {
        op: "draw a snapshot id",
        source: Box::new(std::io::Error::other("the system RNG failed")),
    })?;
    let id = u64::from_be_bytes(id_bytes);
    let descriptor = SnapshotDescriptor {
        id,
        applied_index: 0,
        total_bytes: 0,
        chunk_count: 0,
        digest: [0; 32],
    };
    let checkpoint =
        rocksdb::checkpoint::Checkpoint::new(db).map_err(|e| backend("start a checkpoint", e))?;
    checkpoint
        .create_checkpoint(descriptor.checkpoint_dir(out_dir))
        .map_err(|e| backend("create a snapshot checkpoint", e))?;
    Ok(id)
}

/// How long an outgoing snapshot's checkpoint is kept when the transport did not
/// remove it (its message was dropped before it was streamed).
const CHECKPOINT_KEEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes checkpoints older than [`CHECKPOINT_KEEP`]; best effort.
fn prune_checkpoints(out_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > CHECKPOINT_KEEP);
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Streams the dump of the checkpoint of `descriptor` in `out_dir` to `sink` in
/// chunks of `chunk_bytes` (the last one shorter), checking that the checkpoint
/// holds the descriptor's applied index; returns what the sender seals the
/// descriptor with. Memory: about one chunk and one row.
///
/// # Errors
/// [`StoreError::Backend`] when the checkpoint does not open or read,
/// [`StoreError::Corrupt`] when its applied index is not the descriptor's, and
/// whatever `sink` returns.
pub fn stream_checkpoint(
    out_dir: &Path,
    descriptor: &SnapshotDescriptor,
    chunk_bytes: usize,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<StreamSummary> {
    let dir = descriptor.checkpoint_dir(out_dir);
    let db = DB::open_cf_for_read_only(&Options::default(), &dir, COLUMN_FAMILIES, false)
        .map_err(|e| backend("open a snapshot checkpoint", e))?;
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let (mut total_bytes, mut chunk_count) = (0u64, 0u64);
    let applied = dump::encode_state(&db, chunk_bytes, &mut |chunk| {
        hasher.update(&chunk);
        total_bytes += chunk.len() as u64;
        chunk_count += 1;
        sink(chunk)
    })?;
    if applied != descriptor.applied_index {
        return Err(StoreError::Corrupt {
            what: "snapshot checkpoint",
            reason: format!(
                "applied index {applied}, the descriptor says {}",
                descriptor.applied_index
            ),
        });
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finish().as_ref());
    Ok(StreamSummary {
        total_bytes,
        chunk_count,
        digest,
    })
}

/// Removes the checkpoint of `descriptor` in `out_dir` (after it was streamed, or
/// failed to be); best effort.
pub fn remove_checkpoint(out_dir: &Path, descriptor: &SnapshotDescriptor) {
    let _ = std::fs::remove_dir_all(descriptor.checkpoint_dir(out_dir));
}

//! [`MemoryStore`]: a [`KvStore`] held in memory, for unit tests only (feature
//! `testing`). It is not durable, and the writer-registry glue does not take it.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::mvcc::{StoredValue, Version};
use crate::{BatchOp, KvStore, Result, WriteBatch};

#[derive(Debug, Default)]
struct Inner {
    versions: BTreeMap<(Vec<u8>, Reverse<u64>), StoredValue>,
    applied_index: u64,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// An in-memory [`KvStore`] for unit tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below completes without panicking, so a poisoned lock still
        // guards consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KvStore for MemoryStore {
    /// The in-memory test store holds no Raft log and installs no snapshots.
    fn install_snapshot(&self, _dump: &[u8]) -> Result<()> {
        Err(crate::StoreError::Backend {
            op: "install a snapshot",
            source: "the in-memory test store does not install snapshots".into(),
        })
    }

    fn get_at(&self, key: &[u8], at: u64) -> Result<Option<Version>> {
        let inner = self.inner();
        let found = inner
            .versions
            .range((key.to_vec(), Reverse(at))..)
            .next()
            .filter(|((k, _), _)| k.as_slice() == key)
            .map(|((_, Reverse(v)), value)| Version {
                commit_version: *v,
                value: value.clone(),
            });
        Ok(found)
    }

    fn applied_index(&self) -> Result<u64> {
        Ok(self.inner().applied_index)
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner().meta.get(key).cloned())
    }

    fn scan_latest(&self, visit: &mut dyn FnMut(&[u8], &Version) -> bool) -> Result<()> {
        let inner = self.inner();
        let mut previous: Option<&[u8]> = None;
        for ((key, Reverse(commit_version)), value) in &inner.versions {
            if previous == Some(key.as_slice()) {
                continue;
            }
            previous = Some(key.as_slice());
            let version = Version {
                commit_version: *commit_version,
                value: value.clone(),
            };
            if !visit(key, &version) {
                break;
            }
        }
        Ok(())
    }

    fn scan_versions(&self, visit: &mut crate::VersionVisitor<'_>) -> Result<u64> {
        let inner = self.inner();
        for ((key, Reverse(commit_version)), value) in &inner.versions {
            let physical = crate::mvcc::physical_key(key, *commit_version);
            if !visit(&physical, &value.header, &value.body) {
                break;
            }
        }
        Ok(inner.applied_index)
    }

    fn commit(&self, batch: WriteBatch) -> Result<()> {
        let mut inner = self.inner();
        for op in batch.ops() {
            let BatchOp::Put {
                key,
                commit_version,
                value,
            } = op;
            inner
                .versions
                .insert((key.clone(), Reverse(*commit_version)), value.clone());
        }
        for (key, value) in batch.meta() {
            inner.meta.insert(key.clone(), value.clone());
        }
        if let Some(index) = batch.applied_index() {
            inner.applied_index = index;
        }
        Ok(())
    }
}

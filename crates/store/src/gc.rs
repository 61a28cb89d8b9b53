//! Storage maintenance on the `data` column family: MVCC garbage collection and
//! value rewriting, both run in bounded steps by a background worker while the
//! state machine applies.
//!
//! # Garbage collection
//!
//! A [`Horizon`] (the replicated GC safe point, DESIGN.md §12) names a Raft index
//! `index` and a time `at_ms`, both at least the retention window in the past. For
//! each user key, the version *visible at the horizon* is the newest one whose
//! commit version is `<= index`. Collection removes:
//!
//! * every version older than the visible one: nothing reads it any more (reads are
//!   at the newest version, and the horizon is as far back as anyone may look);
//! * the visible version itself when it is a tombstone, or has expired at `at_ms`:
//!   with the older ones gone, its absence reads exactly as its presence did. The
//!   state machine judges expiry at `max(issued_at_ms, horizon.at_ms)`, so no entry
//!   applied after the horizon can see an expired value as live on one replica and
//!   as absent on another.
//!
//! Versions newer than the horizon are never touched. The decision for a version
//! depends only on the versions of the same key that sort before it (newer ones),
//! so a pass can stop anywhere, even in the middle of one key's versions, and
//! resume from a [`Cursor`].
//!
//! # Rewriting
//!
//! [`RocksStore::rewrite_step`] hands every version to a caller's function, which
//! may return a replacement for it; the replacement is written at the same
//! physical key (same user key, same commit version), so what a read sees is
//! unchanged. The encryption layer uses it to reseal values under the active key.
//!
//! # Concurrency
//!
//! The state machine only ever adds versions (at new commit versions), so a step's
//! decisions, made from one consistent view, stay right while entries apply. Steps
//! and snapshot installs exclude each other through the store's maintenance lock:
//! a step holds it from its read to its write, and an install moves the store's
//! generation, which makes a cursor taken before it restart from the beginning.

use rocksdb::WriteOptions;

use crate::mvcc::{self, StoredValue, ValueHeader};
use crate::rocks::{CF_DATA, backend, cf};
use crate::{Result, RocksStore};

/// The GC safe point: versions superseded at or before `index`, and tombstones and
/// values expired by `at_ms` that are visible at `index`, may be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Horizon {
    /// A Raft index at least the retention window old.
    pub index: u64,
    /// A wall-clock time (ms since the Unix epoch) at least the retention window old.
    pub at_ms: u64,
}

impl Horizon {
    /// The horizon that moves neither bound back: the larger of each.
    pub fn max(self, other: Horizon) -> Horizon {
        Horizon {
            index: self.index.max(other.index),
            at_ms: self.at_ms.max(other.at_ms),
        }
    }

    /// Encodes the horizon as 16 bytes: index u64 BE ‖ at_ms u64 BE.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (index, at) = out.split_at_mut(8);
        index.copy_from_slice(&self.index.to_be_bytes());
        at.copy_from_slice(&self.at_ms.to_be_bytes());
        out
    }

    /// Decodes [`encode`](Self::encode)'s output.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`](crate::StoreError::Corrupt) unless `bytes` is 16 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Horizon> {
        let corrupt = || crate::StoreError::Corrupt {
            what: "gc horizon",
            reason: format!("{} bytes, want 16", bytes.len()),
        };
        let (index, at) = bytes
            .split_first_chunk::<8>()
            .filter(|(_, rest)| rest.len() == 8)
            .ok_or_else(corrupt)?;
        let at: [u8; 8] = (*at).try_into().map_err(|_| corrupt())?;
        Ok(Horizon {
            index: u64::from_be_bytes(*index),
            at_ms: u64::from_be_bytes(at),
        })
    }
}

/// Where a pass over the `data` column family stands between two steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The physical key to continue from; `None` before the first step.
    next: Option<Vec<u8>>,
    /// The user key whose versions were being visited when the step ended.
    key: Option<Vec<u8>>,
    /// Whether that key's version visible at the horizon was already seen (every
    /// later version of it is garbage).
    passed_visible: bool,
    /// The store generation the pass started in; an install restarts the pass.
    generation: u64,
    /// Whether the pass has visited every version.
    done: bool,
}

impl Cursor {
    /// A cursor at the start of a pass.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// Whether the pass visited the whole column family.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Starts a step in the store's `generation`: a pass that is done, or was
    /// taken before a snapshot install, starts over. Returns whether a pass under
    /// way restarted.
    fn begin(&mut self, generation: u64) -> bool {
        if self.generation == generation && !self.done {
            return false;
        }
        let restarted = self.generation != generation && self.next.is_some();
        *self = Cursor {
            generation,
            ..Cursor::default()
        };
        restarted
    }

    /// Puts `iter` where the step continues.
    fn seek<D: rocksdb::DBAccess>(&self, iter: &mut rocksdb::DBRawIteratorWithThreadMode<'_, D>) {
        match &self.next {
            Some(next) => iter.seek(next),
            None => iter.seek_to_first(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Versions visited.
    pub scanned: u64,
    /// Versions removed (GC) or replaced (rewrite).
    pub changed: u64,
    /// Bytes of the removed rows, key and value (GC).
    pub bytes: u64,
    /// The pass restarted because a snapshot was installed under it.
    pub restarted: bool,
}

/// What the caller of [`RocksStore::rewrite_step`] decides for one version.
#[derive(Debug)]
pub enum Rewrite {
    /// Leave the version as it is.
    Keep,
    /// Write this value in its place (same user key, same commit version).
    Replace(StoredValue),
}

/// The caller's decision for one version of [`RocksStore::rewrite_step`]: given
/// the user key, the commit version and the stored value.
pub type Decide<'a, E> = dyn FnMut(&[u8], u64, StoredValue) -> std::result::Result<Rewrite, E> + 'a;

/// Live data seen by a pass, counted at the newest version of each key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Keys whose newest version is a value that has not expired.
    pub keys: u64,
    /// Their physical key and stored value bytes.
    pub bytes: u64,
    /// Every version left in the column family after collection.
    pub versions: u64,
}

/// Whether the version visible at the horizon is dead: a tombstone, or a value
/// expired at the horizon's time.
pub fn dead_at(header: &ValueHeader, horizon: Horizon) -> bool {
    header.tombstone || header.is_expired_at(horizon.at_ms)
}

impl RocksStore {
    /// One bounded step of garbage collection below `horizon`: visits at most
    /// `budget` versions from `cursor`, removes the garbage among them in one
    /// write, and advances `cursor`. `live`, when given, accumulates the live data
    /// at `now_ms` over the pass (reset it when a step reports `restarted`).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`](crate::StoreError::Corrupt) for a row that does not
    /// decode (nothing is removed in that step);
    /// [`StoreError::Backend`](crate::StoreError::Backend) when RocksDB fails.
    pub fn gc_step(
        &self,
        cursor: &mut Cursor,
        horizon: Horizon,
        budget: usize,
        now_ms: u64,
        mut live: Option<&mut LiveStats>,
    ) -> Result<StepStats> {
        let generation = self.maintenance_guard();
        let mut stats = StepStats {
            restarted: cursor.begin(*generation),
            ..StepStats::default()
        };
        let db = self.db();
        let data = cf(db, CF_DATA)?;
        let mut iter = db.raw_iterator_cf(data);
        cursor.seek(&mut iter);
        let mut wb = rocksdb::WriteBatch::default();
        let mut key = cursor.key.take();
        let mut passed = cursor.passed_visible;
        let mut visited = 0usize;
        let mut stopped = false;
        while let Some((physical, raw)) = iter.item() {
            if visited >= budget.max(1) {
                cursor.next = Some(physical.to_vec());
                stopped = true;
                break;
            }
            visited += 1;
            let (user_key, version) = mvcc::decode_physical_key(physical)?;
            let newest = key.as_deref() != Some(user_key.as_slice());
            if newest {
                key = Some(user_key);
                passed = false;
            }
            let remove = if passed {
                true
            } else if version <= horizon.index {
                passed = true;
                let (header, _) = ValueHeader::decode(raw)?;
                dead_at(&header, horizon)
            } else {
                false
            };
            let row_bytes = u64::try_from(physical.len() + raw.len()).unwrap_or(u64::MAX);
            if remove {
                wb.delete_cf(data, physical);
                stats.changed += 1;
                stats.bytes = stats.bytes.saturating_add(row_bytes);
            } else if let Some(live) = live.as_deref_mut() {
                live.versions += 1;
                if newest {
                    let (header, _) = ValueHeader::decode(raw)?;
                    if !header.tombstone && !header.is_expired_at(now_ms) {
                        live.keys += 1;
                        live.bytes = live.bytes.saturating_add(row_bytes);
                    }
                }
            }
            iter.next();
        }
        if stopped {
            cursor.key = key;
            cursor.passed_visible = passed;
        } else {
            iter.status().map_err(|e| backend("scan versions", e))?;
            cursor.done = true;
            cursor.next = None;
        }
        stats.scanned = visited as u64;
        if !wb.is_empty() {
            // Not synced: a removal lost in a crash is made again by the next pass.
            db.write_opt(wb, &WriteOptions::default())
                .map_err(|e| backend("remove old versions", e))?;
        }
        Ok(stats)
    }

    /// One bounded step of rewriting: visits at most `budget` versions from
    /// `cursor`, asks `decide` about each (user key, commit version, stored value),
    /// writes the replacements it returns in one write, and advances `cursor`.
    /// Stops early, before the version it was given, when `decide` fails.
    ///
    /// # Errors
    /// `decide`'s error, after writing the replacements decided before it;
    /// [`StoreError::Corrupt`](crate::StoreError::Corrupt) for a row that does not
    /// decode; [`StoreError::Backend`](crate::StoreError::Backend) when RocksDB fails.
    pub fn rewrite_step<E: From<crate::StoreError>>(
        &self,
        cursor: &mut Cursor,
        budget: usize,
        decide: &mut Decide<'_, E>,
    ) -> std::result::Result<StepStats, E> {
        let generation = self.maintenance_guard();
        let mut stats = StepStats {
            restarted: cursor.begin(*generation),
            ..StepStats::default()
        };
        let db = self.db();
        let data = cf(db, CF_DATA)?;
        let mut iter = db.raw_iterator_cf(data);
        cursor.seek(&mut iter);
        let mut wb = rocksdb::WriteBatch::default();
        let mut failure = None;
        let mut visited = 0usize;
        while let Some((physical, raw)) = iter.item() {
            if visited >= budget.max(1) {
                break;
            }
            let (user_key, version) = mvcc::decode_physical_key(physical)?;
            let value = StoredValue::decode(raw)?;
            match decide(&user_key, version, value) {
                Ok(Rewrite::Keep) => {}
                Ok(Rewrite::Replace(new)) => {
                    wb.put_cf(data, physical, new.encode());
                    stats.changed += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            visited += 1;
            iter.next();
        }
        match iter.key() {
            Some(next) => cursor.next = Some(next.to_vec()),
            None => {
                iter.status().map_err(|e| backend("scan versions", e))?;
                cursor.done = failure.is_none();
                cursor.next = None;
            }
        }
        stats.scanned = visited as u64;
        if !wb.is_empty() {
            // Synced: a resealed value replaces its cleartext for good.
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(wb, &opts)
                .map_err(|e| backend("rewrite versions", e))?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Flushes every column family and compacts each over its whole key range, so
    /// that removed rows and superseded files leave the disk. Returns the size of
    /// the live SST files afterwards.
    ///
    /// # Errors
    /// [`StoreError::Backend`](crate::StoreError::Backend) when RocksDB fails.
    pub fn compact_all(&self) -> Result<u64> {
        self.flush()?;
        let db = self.db();
        for name in crate::rocks::COLUMN_FAMILIES {
            let handle = cf(db, name)?;
            let mut opts = rocksdb::CompactOptions::default();
            // Rewrite the bottom level too, so that tombstones over removed rows go.
            opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            db.compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        self.sst_bytes()
    }

    /// The total size of the live SST files of every column family.
    ///
    /// # Errors
    /// [`StoreError::Backend`](crate::StoreError::Backend) when RocksDB fails.
    pub fn sst_bytes(&self) -> Result<u64> {
        let db = self.db();
        let mut total = 0u64;
        for name in crate::rocks::COLUMN_FAMILIES {
            let handle = cf(db, name)?;
            let bytes = db
                .property_int_value_cf(handle, "rocksdb.total-sst-files-size")
                .map_err(|e| backend("read sst size", e))?
                .unwrap_or(0);
            total = total.saturating_add(bytes);
        }
        Ok(total)
    }
}

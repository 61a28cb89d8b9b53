//! Key usage: how many stored versions each storage key still seals on this node.
//!
//! [`versions_by_key`] reads every version in the `data` column family
//! ([`KvStore::scan_versions`]: one consistent view, one version in memory at a
//! time) and sorts it by what a read needs to open it:
//!
//! | version | counted as |
//! |---|---|
//! | encrypted (tombstone or not) | the key id its storage envelope header names |
//! | cleartext, not a tombstone | `clear` |
//! | cleartext tombstone | not counted: it holds no user data and needs no key |
//! | encrypted, header too short or of another envelope version | `malformed` |
//!
//! An encrypted tombstone is counted under its key: a read opens a version before it
//! believes its header (DESIGN.md §6), so a deleted key whose newest version is a
//! tombstone sealed under a retired key would read as an integrity error. Old
//! versions are counted too: a read at an older version, and the MVCC garbage
//! collector, still open them.
//!
//! Only the envelope header (`version ‖ flag ‖ key_id`, 6 bytes) is read; nothing is
//! decrypted, so the scan needs no key and costs one sequential pass.

use std::collections::BTreeMap;

use sealkv_encryption::envelope::{ENVELOPE_VERSION, HEADER_LEN};
use sealkv_store::mvcc::EncryptionState;
use sealkv_store::{KvStore, StoreError};

/// What [`versions_by_key`] counted on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionsByKey {
    /// The applied index of the view the scan read: every entry up to it is
    /// reflected, none after it.
    pub applied_index: u64,
    /// Cleartext versions that are not tombstones.
    pub clear: u64,
    /// Encrypted versions (tombstones included), by the key id their envelope names.
    pub by_key: BTreeMap<u32, u64>,
    /// Encrypted versions whose envelope header does not parse.
    pub malformed: u64,
}

impl VersionsByKey {
    /// The versions sealed under `key_id` (0 when none).
    pub fn under(&self, key_id: u32) -> u64 {
        self.by_key.get(&key_id).copied().unwrap_or(0)
    }

    /// Counts one version.
    fn count(&mut self, tombstone: bool, encryption: EncryptionState, body: &[u8]) {
        match encryption {
            EncryptionState::Clear if tombstone => {}
            EncryptionState::Clear => self.clear += 1,
            EncryptionState::Encrypted => match envelope_key_id(body) {
                Some(key_id) => *self.by_key.entry(key_id).or_insert(0) += 1,
                None => self.malformed += 1,
            },
        }
    }
}

/// The key id a storage envelope's header names, or `None` when the body is too
/// short for a header or has another envelope version.
fn envelope_key_id(body: &[u8]) -> Option<u32> {
    let header: &[u8; HEADER_LEN] = body.first_chunk()?;
    let [version, _flag, a, b, c, d] = *header;
    (version == ENVELOPE_VERSION).then(|| u32::from_be_bytes([a, b, c, d]))
}

/// Counts every version in `store` by the storage key it is sealed under (see the
/// module docs). Memory is bounded by one version and one counter per key id.
///
/// # Errors
/// [`StoreError`] when the store fails or a value header is corrupt.
pub fn versions_by_key(store: &dyn KvStore) -> Result<VersionsByKey, StoreError> {
    let mut usage = VersionsByKey::default();
    usage.applied_index = store.scan_versions(&mut |_, header, body| {
        usage.count(header.tombstone, header.encryption, body);
        true
    })?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use sealkv_encryption::envelope::header_aad;
    use sealkv_store::mvcc::{StoredValue, ValueHeader};
    use sealkv_store::{MemoryStore, WriteBatch};

    use super::*;

    fn sealed(key_id: u32, tombstone: bool) -> StoredValue {
        let mut body = header_aad(ENVELOPE_VERSION, 0, key_id).to_vec();
        body.extend_from_slice(&[0xAB; 28]);
        StoredValue {
            header: ValueHeader {
                tombstone,
                encryption: EncryptionState::Encrypted,
                expire_at_ms: 0,
            },
            body,
        }
    }

    #[test]
    fn counts_every_version_by_key_clear_and_malformed() {
        let store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        // Three versions of one key: old ones count as much as the newest.
        batch
            .put(b"a", 1, StoredValue::clear(b"v1".to_vec(), 0))
            .unwrap();
        batch.put(b"a", 2, sealed(1, false)).unwrap();
        batch.put(b"a", 3, sealed(5, false)).unwrap();
        // A sealed tombstone needs its key to be read; a clear one needs nothing.
        batch.put(b"b", 4, sealed(5, true)).unwrap();
        batch.put(b"c", 5, StoredValue::tombstone()).unwrap();
        // An expired value is still a version on disk.
        batch
            .put(b"d", 6, StoredValue::clear(b"x".to_vec(), 1))
            .unwrap();
        let mut short = sealed(5, false);
        short.body.truncate(HEADER_LEN - 1);
        batch.put(b"e", 7, short).unwrap();
        let mut other_version = sealed(5, false);
        other_version.body[0] = 2;
        batch.put(b"f", 8, other_version).unwrap();
        batch.set_applied_index(8);
        store.commit(batch).unwrap();

        let usage = versions_by_key(&store).unwrap();
        assert_eq!(usage.applied_index, 8);
        assert_eq!(usage.clear, 2);
        assert_eq!(usage.by_key, BTreeMap::from([(1, 1), (5, 2)]));
        assert_eq!(usage.under(5), 2);
        assert_eq!(usage.under(7), 0);
        assert_eq!(usage.malformed, 2);
    }

    #[test]
    fn an_empty_store_counts_nothing() {
        let usage = versions_by_key(&MemoryStore::new()).unwrap();
        assert_eq!(usage, VersionsByKey::default());
    }
}

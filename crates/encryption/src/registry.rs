//! The writer-registry key and value codec, byte-compatible with elastickv.
//!
//! A node that encrypts is a *writer*. The registry holds one row per
//! (DEK, low 16 bits of the node id), which is what makes the nonce construction
//! `node_id16 ‖ local_epoch ‖ counter` safe cluster-wide.
//!
//! Key, 27 bytes (no escaping: the id bytes may themselves be `|` or `!`):
//!
//! ```text
//! 0                       20       24  25         27
//! +-----------------------+--------+---+----------+
//! | "!encryption|writers|"| dek_id |'|'| node_id16|
//! |        ASCII          | u32 BE |   |  u16 BE  |
//! +-----------------------+--------+---+----------+
//! ```
//!
//! Value, 12 bytes:
//!
//! ```text
//! 0              8                 10               12
//! +--------------+-----------------+----------------+
//! | full_node_id | first_seen_epoch| last_seen_epoch|
//! |    u64 BE    |      u16 BE     |     u16 BE     |
//! +--------------+-----------------+----------------+
//! ```
//!
//! A value of any other length is corruption, never "no row".

/// Every key the encryption layer stores starts with this prefix; user writes under
/// it are refused.
pub const RESERVED_PREFIX: &[u8] = b"!encryption|";

/// Prefix of every writer-registry key.
pub const WRITERS_PREFIX: &[u8] = b"!encryption|writers|";

/// Length of a writer-registry key.
pub const KEY_LEN: usize = WRITERS_PREFIX.len() + 4 + 1 + 2;

/// Length of the per-DEK prefix of a writer-registry key (prefix, dek_id, `|`).
pub const DEK_PREFIX_LEN: usize = WRITERS_PREFIX.len() + 4 + 1;

/// Length of a writer-registry value.
pub const VALUE_LEN: usize = 12;

const SEPARATOR: u8 = b'|';

/// A registry key or value that does not have the registry's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryCodecError {
    /// A key is not 27 bytes, does not start with [`WRITERS_PREFIX`], or lacks the
    /// `|` separator at offset 24.
    #[error("writer registry key is malformed ({len} bytes)")]
    KeyMalformed {
        /// Length of the key found.
        len: usize,
    },
    /// A value is not 12 bytes.
    #[error("writer registry value is malformed: {len} bytes, want {VALUE_LEN}")]
    ValueMalformed {
        /// Length of the value found.
        len: usize,
    },
}

impl RegistryCodecError {
    /// The error class string used by the elastickv vectors.
    pub fn class(&self) -> &'static str {
        match self {
            RegistryCodecError::KeyMalformed { .. } => "key_malformed",
            RegistryCodecError::ValueMalformed { .. } => "value_malformed",
        }
    }
}

/// Identifies one registry row: a DEK and the low 16 bits of a node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterKey {
    /// The DEK the writer encrypts under.
    pub dek_id: u32,
    /// The low 16 bits of the writer's node id.
    pub node_id16: u16,
}

impl WriterKey {
    /// The key for a node's full 64-bit id; only its low 16 bits are kept.
    pub fn for_node(dek_id: u32, full_node_id: u64) -> WriterKey {
        WriterKey {
            dek_id,
            // Truncation is the point: nonces carry only the low 16 bits.
            node_id16: (full_node_id & 0xFFFF) as u16,
        }
    }

    /// Encodes the 27-byte key.
    pub fn encode(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        let (prefix, rest) = out.split_at_mut(DEK_PREFIX_LEN);
        prefix.copy_from_slice(&dek_prefix(self.dek_id));
        rest.copy_from_slice(&self.node_id16.to_be_bytes());
        out
    }

    /// Decodes a 27-byte key.
    ///
    /// # Errors
    /// [`RegistryCodecError::KeyMalformed`] unless the length is exactly 27, the 20
    /// prefix bytes match exactly, and byte 24 is `|`.
    pub fn decode(bytes: &[u8]) -> Result<WriterKey, RegistryCodecError> {
        let malformed = RegistryCodecError::KeyMalformed { len: bytes.len() };
        let key: &[u8; KEY_LEN] = bytes.try_into().map_err(|_| malformed.clone())?;
        let [prefix @ .., d0, d1, d2, d3, sep, n0, n1] = key;
        if prefix != WRITERS_PREFIX || *sep != SEPARATOR {
            return Err(malformed);
        }
        Ok(WriterKey {
            dek_id: u32::from_be_bytes([*d0, *d1, *d2, *d3]),
            node_id16: u16::from_be_bytes([*n0, *n1]),
        })
    }
}

/// The 25-byte prefix shared by every registry key of one DEK.
pub fn dek_prefix(dek_id: u32) -> [u8; DEK_PREFIX_LEN] {
    let mut out = [0u8; DEK_PREFIX_LEN];
    let (prefix, rest) = out.split_at_mut(WRITERS_PREFIX.len());
    prefix.copy_from_slice(WRITERS_PREFIX);
    let (id, sep) = rest.split_at_mut(4);
    id.copy_from_slice(&dek_id.to_be_bytes());
    sep.copy_from_slice(&[SEPARATOR]);
    out
}

/// One registry row's value: which node owns this (DEK, node_id16) slot and the range
/// of local epochs it has registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriterRecord {
    /// The full 64-bit id of the node that owns the slot.
    pub full_node_id: u64,
    /// The first local epoch registered for this slot.
    pub first_seen_local_epoch: u16,
    /// The highest local epoch registered for this slot.
    pub last_seen_local_epoch: u16,
}

impl WriterRecord {
    /// Encodes the 12-byte value.
    pub fn encode(&self) -> [u8; VALUE_LEN] {
        let mut out = [0u8; VALUE_LEN];
        let (id, epochs) = out.split_at_mut(8);
        id.copy_from_slice(&self.full_node_id.to_be_bytes());
        let (first, last) = epochs.split_at_mut(2);
        first.copy_from_slice(&self.first_seen_local_epoch.to_be_bytes());
        last.copy_from_slice(&self.last_seen_local_epoch.to_be_bytes());
        out
    }

    /// Decodes a 12-byte value. Only the length is checked, so `first > last` is
    /// accepted as elastickv does.
    ///
    /// # Errors
    /// [`RegistryCodecError::ValueMalformed`] for any other length.
    pub fn decode(bytes: &[u8]) -> Result<WriterRecord, RegistryCodecError> {
        let value: &[u8; VALUE_LEN] = bytes
            .try_into()
            .map_err(|_| RegistryCodecError::ValueMalformed { len: bytes.len() })?;
        let [i0, i1, i2, i3, i4, i5, i6, i7, f0, f1, l0, l1] = *value;
        Ok(WriterRecord {
            full_node_id: u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
            first_seen_local_epoch: u16::from_be_bytes([f0, f1]),
            last_seen_local_epoch: u16::from_be_bytes([l0, l1]),
        })
    }
}

/// Whether a key lies in the reserved encryption keyspace (`!encryption|...`), where
/// user writes are refused.
pub fn is_reserved_key(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

//! The MVCC value layout: the 9-byte value header, stored values, and the physical
//! key encoding that orders versions of one user key newest first.
//!
//! Value header (as in elastickv), followed by the body (cleartext or an envelope):
//!
//! ```text
//! 0       1                  9
//! +-------+------------------+------------------
//! | flags | expire_at_ms     | body ...
//! |  u8   | u64 little-endian|
//! +-------+------------------+------------------
//! flags: bit 0 tombstone; bits 1-2 encryption state (00 clear, 01 encrypted,
//!        10 and 11 reserved and refused); bits 3-7 must be zero.
//! ```
//!
//! The *logical* storage key of a version is `user_key ‖ (!commit_version) u64 BE`:
//! this is what an encrypted value's AAD binds (DESIGN.md §6). On disk the user key is
//! first made prefix-free (every `0x00` becomes `0x00 0xFF`, then `0x00 0x01`
//! terminates it) so that one key's versions can never interleave with another key
//! that extends it; ordering between user keys is preserved.

use crate::StoreError;

/// Length of the value header.
pub const VALUE_HEADER_LEN: usize = 9;

const FLAG_TOMBSTONE: u8 = 0b0000_0001;
const ENCRYPTION_MASK: u8 = 0b0000_0110;
const ENCRYPTION_SHIFT: u8 = 1;
const KNOWN_FLAGS: u8 = FLAG_TOMBSTONE | ENCRYPTION_MASK;

/// Whether a value body is cleartext or an encryption envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EncryptionState {
    /// The body is the user value itself.
    #[default]
    Clear,
    /// The body is a storage envelope.
    Encrypted,
}

/// The 9-byte header in front of every stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ValueHeader {
    /// The version deletes the key.
    pub tombstone: bool,
    /// Whether the body is encrypted.
    pub encryption: EncryptionState,
    /// Expiry in milliseconds since the Unix epoch; `0` means the value never expires.
    pub expire_at_ms: u64,
}

impl ValueHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; VALUE_HEADER_LEN] {
        let state = match self.encryption {
            EncryptionState::Clear => 0b00,
            EncryptionState::Encrypted => 0b01,
        };
        let flags = u8::from(self.tombstone) | (state << ENCRYPTION_SHIFT);
        let mut out = [0u8; VALUE_HEADER_LEN];
        let (f, expire) = out.split_at_mut(1);
        f.copy_from_slice(&[flags]);
        expire.copy_from_slice(&self.expire_at_ms.to_le_bytes());
        out
    }

    /// Decodes a header from the front of `bytes`, returning it and the body.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when fewer than 9 bytes are present, a reserved
    /// encryption state is set, or an unknown flag bit is set.
    pub fn decode(bytes: &[u8]) -> Result<(ValueHeader, &[u8]), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "value header",
            reason,
        };
        let Some((&[flags, e0, e1, e2, e3, e4, e5, e6, e7], body)) =
            bytes.split_first_chunk::<VALUE_HEADER_LEN>()
        else {
            return Err(corrupt(format!(
                "value of {} bytes is too short",
                bytes.len()
            )));
        };
        if flags & !KNOWN_FLAGS != 0 {
            return Err(corrupt(format!("unknown flag bits {flags:#04x}")));
        }
        let encryption = match (flags & ENCRYPTION_MASK) >> ENCRYPTION_SHIFT {
            0b00 => EncryptionState::Clear,
            0b01 => EncryptionState::Encrypted,
            other => return Err(corrupt(format!("reserved encryption state {other:#04b}"))),
        };
        let header = ValueHeader {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            encryption,
            expire_at_ms: u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
        };
        Ok((header, body))
    }

    /// Whether a value with this header has expired at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }
}

/// A stored value: header and body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredValue {
    /// The header.
    pub header: ValueHeader,
    /// The body: the user value, or its envelope when encrypted; empty for tombstones.
    pub body: Vec<u8>,
}

impl StoredValue {
    /// A live cleartext value.
    pub fn clear(body: Vec<u8>, expire_at_ms: u64) -> StoredValue {
        StoredValue {
            header: ValueHeader {
                expire_at_ms,
                ..ValueHeader::default()
            },
            body,
        }
    }

    /// Whether the value is live at `now_ms`: not a tombstone and not expired.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        !self.header.tombstone && !self.header.is_expired_at(now_ms)
    }

    /// A tombstone: the version deletes the key.
    pub fn tombstone() -> StoredValue {
        StoredValue {
            header: ValueHeader {
                tombstone: true,
                ..ValueHeader::default()
            },
            body: Vec::new(),
        }
    }

    /// Encodes header ‖ body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VALUE_HEADER_LEN + self.body.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes header ‖ body.
    ///
    /// # Errors
    /// As [`ValueHeader::decode`].
    pub fn decode(bytes: &[u8]) -> Result<StoredValue, StoreError> {
        let (header, body) = ValueHeader::decode(bytes)?;
        Ok(StoredValue {
            header,
            body: body.to_vec(),
        })
    }
}

/// One version of a user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The version's commit version (the Raft index of the entry that wrote it).
    pub commit_version: u64,
    /// The stored value.
    pub value: StoredValue,
}

/// The logical storage key `user_key ‖ (!commit_version) u64 BE`, which encrypted
/// values bind in their AAD.
pub fn logical_key(user_key: &[u8], commit_version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 8);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&(!commit_version).to_be_bytes());
    out
}

/// The prefix-free on-disk form of a user key (see the module docs).
pub fn encode_user_key(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2);
    for &b in user_key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

/// The on-disk key of one version: `encode_user_key(user_key) ‖ (!commit_version) BE`.
pub fn physical_key(user_key: &[u8], commit_version: u64) -> Vec<u8> {
    let mut out = encode_user_key(user_key);
    out.extend_from_slice(&(!commit_version).to_be_bytes());
    out
}

/// Splits an on-disk key into its user key and commit version.
///
/// # Errors
/// [`StoreError::Corrupt`] when the key is not the output of [`physical_key`].
pub fn decode_physical_key(bytes: &[u8]) -> Result<(Vec<u8>, u64), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        what: "data key",
        reason: reason.to_string(),
    };
    let mut user_key = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match rest {
            [0x00, 0xFF, tail @ ..] => {
                user_key.push(0);
                rest = tail;
            }
            [0x00, 0x01, tail @ ..] => {
                let version: [u8; 8] = (*tail)
                    .try_into()
                    .map_err(|_| corrupt("version suffix is not 8 bytes"))?;
                return Ok((user_key, !u64::from_be_bytes(version)));
            }
            [0x00, ..] | [] => return Err(corrupt("unterminated user key")),
            [b, tail @ ..] => {
                user_key.push(*b);
                rest = tail;
            }
        }
    }
}

//! Byte-exact codec for the Raft FSM payloads of sealkv's encryption control plane.
//!
//! Every committed Raft entry starts with an opcode byte. The opcodes in
//! [`ENCRYPTION_OPCODES`] (`0x03..=0x07`) belong to the encryption control plane; this
//! crate encodes and decodes the payloads that follow the opcode for the three that
//! are defined today:
//!
//! | opcode | payload                 | type                   |
//! |--------|-------------------------|------------------------|
//! | `0x03` | register a writer       | [`RegistrationPayload`] |
//! | `0x04` | bootstrap encryption    | [`BootstrapPayload`]    |
//! | `0x05` | rotation family         | [`RotationPayload`]     |
//!
//! The opcode byte is *not* part of a payload: the state machine strips it before
//! calling a decoder. The formats are byte-compatible with elastickv's `fsmwire`
//! package (version 1). All integers are big-endian.
//!
//! The crate does no I/O and knows nothing of RocksDB, Raft or the network.
//! Decoders never panic and never allocate more than the input justifies.
//!
//! ```
//! use sealkv_fsmwire::{RegistrationPayload, OP_REGISTRATION};
//!
//! let reg = RegistrationPayload { dek_id: 7, full_node_id: 0x0102_0304_0506_0708, local_epoch: 3 };
//! let bytes = reg.encode();
//! assert_eq!(bytes.len(), RegistrationPayload::LEN);
//! assert_eq!(RegistrationPayload::decode(&bytes), Ok(reg));
//!
//! // A Raft entry is the opcode followed by the payload.
//! let entry = reg.to_entry();
//! assert_eq!(entry[0], OP_REGISTRATION);
//! ```

#![deny(clippy::indexing_slicing, clippy::panic)]

mod reader;

use std::ops::RangeInclusive;

use reader::Reader;

/// Opcode of a writer registration entry ([`RegistrationPayload`]).
pub const OP_REGISTRATION: u8 = 0x03;
/// Opcode of an encryption bootstrap entry ([`BootstrapPayload`]).
pub const OP_BOOTSTRAP: u8 = 0x04;
/// Opcode of a rotation-family entry ([`RotationPayload`]).
pub const OP_ROTATION: u8 = 0x05;
/// Every opcode reserved for the encryption control plane, defined or not.
///
/// A state machine must send every opcode in this band to its encryption applier,
/// including the ones this version does not define, so that an unknown encryption
/// entry halts instead of being mistaken for something else.
pub const ENCRYPTION_OPCODES: RangeInclusive<u8> = 0x03..=0x07;

/// The only payload version this crate understands.
pub const VERSION_V1: u8 = 0x01;

/// Largest number of registration rows a bootstrap payload may carry (`1 << 14`).
pub const MAX_BATCH_REGISTRY: u32 = 1 << 14;

/// Whether `opcode` belongs to the encryption band `0x03..=0x07`.
pub fn is_encryption_opcode(opcode: u8) -> bool {
    ENCRYPTION_OPCODES.contains(&opcode)
}

/// A decoding failure. Each variant is one of the error classes of the elastickv
/// vectors: `malformed`, `version` and `subtag`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not have the shape of the payload: a field is truncated, a length
    /// overruns the input, a count is over its cap, a purpose is unknown, or bytes
    /// are left over.
    #[error("malformed {payload} payload: {reason}")]
    Malformed {
        /// Which payload was being decoded.
        payload: &'static str,
        /// What was wrong, naming the field.
        reason: String,
    },
    /// The version byte is not [`VERSION_V1`].
    #[error("unknown {payload} payload version {version:#04x}")]
    UnknownVersion {
        /// Which payload was being decoded.
        payload: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The rotation subtag is not one this version understands.
    #[error("unknown rotation subtag {0:#04x}")]
    UnknownSubtag(u8),
}

impl Error {
    /// The error class string used by the elastickv vectors.
    pub fn class(&self) -> &'static str {
        match self {
            Error::Malformed { .. } => "malformed",
            Error::UnknownVersion { .. } => "version",
            Error::UnknownSubtag(_) => "subtag",
        }
    }
}

/// Result of decoding a payload.
pub type Result<T> = std::result::Result<T, Error>;

/// What a DEK is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// Encrypts user values at rest (wire value `1`).
    Storage,
    /// Encrypts Raft proposal payloads (wire value `2`).
    Raft,
}

impl Purpose {
    /// The wire byte of this purpose.
    pub fn to_byte(self) -> u8 {
        match self {
            Purpose::Storage => 1,
            Purpose::Raft => 2,
        }
    }

    /// The purpose of a wire byte, or `None` when the byte is not `1` or `2`.
    pub fn from_byte(byte: u8) -> Option<Purpose> {
        match byte {
            1 => Some(Purpose::Storage),
            2 => Some(Purpose::Raft),
            _ => None,
        }
    }

    /// The lowercase name used in documents and the CLI (`storage`, `raft`).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Storage => "storage",
            Purpose::Raft => "raft",
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation a rotation-family entry carries.
///
/// Only rotate-DEK is defined in version 1; the other subtags are reserved (for
/// enabling envelopes, rewrapping and retiring keys) and decode as
/// [`Error::UnknownSubtag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationSubtag {
    /// Install a new DEK and make it the active key for its purpose (`0x01`).
    RotateDek,
}

impl RotationSubtag {
    /// The wire byte of this subtag.
    pub fn to_byte(self) -> u8 {
        match self {
            RotationSubtag::RotateDek => 0x01,
        }
    }

    /// The subtag of a wire byte, or `None` for a reserved or unknown byte.
    pub fn from_byte(byte: u8) -> Option<RotationSubtag> {
        match byte {
            0x01 => Some(RotationSubtag::RotateDek),
            _ => None,
        }
    }
}

/// One writer registration: node `full_node_id` encrypts under DEK `dek_id` during
/// its process load number `local_epoch`.
///
/// As the 0x03 payload it is preceded by a version byte (15 bytes in all). Inside
/// bootstrap and rotation payloads it appears as a bare 14-byte row:
///
/// ```text
/// 0        4              12     14
/// +--------+--------------+------+
/// | dek_id | full_node_id | epoch|
/// | u32 BE | u64 BE       |u16 BE|
/// +--------+--------------+------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegistrationPayload {
    /// The DEK the node encrypts under.
    pub dek_id: u32,
    /// The node's full 64-bit id; nonces carry only its low 16 bits.
    pub full_node_id: u64,
    /// The node's process-load counter under this DEK.
    pub local_epoch: u16,
}

impl RegistrationPayload {
    /// Size of a bare registration row inside bootstrap and rotation payloads.
    pub const ROW_LEN: usize = 14;
    /// Size of the 0x03 payload: version byte plus one row.
    pub const LEN: usize = 1 + Self::ROW_LEN;

    /// The low 16 bits of the node id, as used in nonces and registry keys.
    pub fn node_id16(&self) -> u16 {
        // Truncation is the point: nonces carry only the low 16 bits.
        (self.full_node_id & 0xFFFF) as u16
    }

    /// Encodes the 15-byte 0x03 payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.push(VERSION_V1);
        self.put_row(&mut out);
        out
    }

    /// Encodes a Raft entry: [`OP_REGISTRATION`] followed by the payload.
    pub fn to_entry(&self) -> Vec<u8> {
        prefixed(OP_REGISTRATION, self.encode())
    }

    /// Decodes the 0x03 payload. The length is checked before the version, so a
    /// payload with the wrong length and a bad version is [`Error::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<RegistrationPayload> {
        const NAME: &str = "registration";
        if bytes.len() != Self::LEN {
            return Err(malformed(
                NAME,
                format!("length {} is not {}", bytes.len(), Self::LEN),
            ));
        }
        let mut r = Reader::new(NAME, bytes);
        let version = r.u8("version")?;
        if version != VERSION_V1 {
            return Err(Error::UnknownVersion {
                payload: NAME,
                version,
            });
        }
        Self::read_row(&mut r, "registration")
    }

    fn put_row(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dek_id.to_be_bytes());
        out.extend_from_slice(&self.full_node_id.to_be_bytes());
        out.extend_from_slice(&self.local_epoch.to_be_bytes());
    }

    fn read_row(r: &mut Reader<'_>, field: &'static str) -> Result<RegistrationPayload> {
        r.need(Self::ROW_LEN, field)?;
        Ok(RegistrationPayload {
            dek_id: r.u32(field)?,
            full_node_id: r.u64(field)?,
            local_epoch: r.u16(field)?,
        })
    }
}

/// The 0x04 payload: install the first storage and raft DEKs and register a batch of
/// writers, all in one entry.
///
/// ```text
/// 0    1                5        9         9+S              13+S     17+S       17+S+R   21+S+R
/// +----+----------------+--------+---------+----------------+--------+----------+--------+---------------+
/// | 01 | storage_dek_id | S u32  | wrapped | raft_dek_id    | R u32  | wrapped  | N u32  | N rows of 14  |
/// +----+----------------+--------+---------+----------------+--------+----------+--------+---------------+
/// ```
///
/// The wrapped blobs are opaque here (60-byte KEK-wrapped DEKs in production); empty
/// blobs and an empty batch decode. More than [`MAX_BATCH_REGISTRY`] rows, a row count
/// that overruns the input, and trailing bytes are malformed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootstrapPayload {
    /// Key id of the storage DEK.
    pub storage_dek_id: u32,
    /// The storage DEK wrapped under the KEK.
    pub wrapped_storage: Vec<u8>,
    /// Key id of the raft DEK.
    pub raft_dek_id: u32,
    /// The raft DEK wrapped under the KEK.
    pub wrapped_raft: Vec<u8>,
    /// Writers registered together with the keys.
    pub batch_registry: Vec<RegistrationPayload>,
}

impl BootstrapPayload {
    /// Size of a bootstrap payload with empty blobs and no rows.
    pub const MIN_LEN: usize = 21;

    /// Encodes the payload.
    ///
    /// # Errors
    /// [`Error::Malformed`] when a blob is longer than `u32::MAX` bytes or the batch
    /// has more than [`MAX_BATCH_REGISTRY`] rows: such a payload could not be decoded.
    pub fn encode(&self) -> Result<Vec<u8>> {
        const NAME: &str = "bootstrap";
        let rows = self.batch_registry.len();
        if rows > MAX_BATCH_REGISTRY as usize {
            return Err(malformed(
                NAME,
                format!("batch of {rows} rows is over the cap of {MAX_BATCH_REGISTRY}"),
            ));
        }
        let mut out = Vec::with_capacity(
            Self::MIN_LEN
                + self.wrapped_storage.len()
                + self.wrapped_raft.len()
                + rows * RegistrationPayload::ROW_LEN,
        );
        out.push(VERSION_V1);
        out.extend_from_slice(&self.storage_dek_id.to_be_bytes());
        put_blob(&mut out, NAME, "wrapped storage DEK", &self.wrapped_storage)?;
        out.extend_from_slice(&self.raft_dek_id.to_be_bytes());
        put_blob(&mut out, NAME, "wrapped raft DEK", &self.wrapped_raft)?;
        // Checked against MAX_BATCH_REGISTRY above, so the count fits in a u32.
        out.extend_from_slice(&(rows as u32).to_be_bytes());
        for row in &self.batch_registry {
            row.put_row(&mut out);
        }
        Ok(out)
    }

    /// Encodes a Raft entry: [`OP_BOOTSTRAP`] followed by the payload.
    ///
    /// # Errors
    /// As [`BootstrapPayload::encode`].
    pub fn to_entry(&self) -> Result<Vec<u8>> {
        Ok(prefixed(OP_BOOTSTRAP, self.encode()?))
    }

    /// Decodes the payload; the first failure in wire order wins.
    pub fn decode(bytes: &[u8]) -> Result<BootstrapPayload> {
        const NAME: &str = "bootstrap";
        let mut r = Reader::new(NAME, bytes);
        let version = r.u8("version")?;
        if version != VERSION_V1 {
            return Err(Error::UnknownVersion {
                payload: NAME,
                version,
            });
        }
        let storage_dek_id = r.u32("storage dek_id")?;
        let wrapped_storage = r.blob("wrapped storage DEK")?.to_vec();
        let raft_dek_id = r.u32("raft dek_id")?;
        let wrapped_raft = r.blob("wrapped raft DEK")?.to_vec();
        let count = r.u32("batch count")?;
        if count > MAX_BATCH_REGISTRY {
            return Err(malformed(
                NAME,
                format!("batch count {count} is over the cap of {MAX_BATCH_REGISTRY}"),
            ));
        }
        // The cap keeps this product far from overflow; the check against the bytes
        // left happens before anything is allocated for the rows.
        let rows_len = count as usize * RegistrationPayload::ROW_LEN;
        r.need(rows_len, "batch rows")?;
        let mut batch_registry = Vec::with_capacity(count as usize);
        for _ in 0..count {
            batch_registry.push(RegistrationPayload::read_row(&mut r, "batch row")?);
        }
        r.finish()?;
        Ok(BootstrapPayload {
            storage_dek_id,
            wrapped_storage,
            raft_dek_id,
            wrapped_raft,
            batch_registry,
        })
    }
}

/// The 0x05 payload: a rotation-family operation proposed by one node.
///
/// ```text
/// 0    1        2        6         7       11        11+W
/// +----+--------+--------+---------+-------+---------+-----------------------+
/// | 01 | subtag | dek_id | purpose | W u32 | wrapped | proposer row (14)     |
/// +----+--------+--------+---------+-------+---------+-----------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPayload {
    /// The operation.
    pub subtag: RotationSubtag,
    /// Key id of the new DEK.
    pub dek_id: u32,
    /// What the new DEK is for.
    pub purpose: Purpose,
    /// The new DEK wrapped under the KEK.
    pub wrapped: Vec<u8>,
    /// The proposing node's registration under the new DEK.
    pub proposer_registration: RegistrationPayload,
}

impl RotationPayload {
    /// Size of a rotation payload with an empty blob.
    pub const MIN_LEN: usize = 25;

    /// Encodes the payload.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the blob is longer than `u32::MAX` bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(Self::MIN_LEN + self.wrapped.len());
        out.push(VERSION_V1);
        out.push(self.subtag.to_byte());
        out.extend_from_slice(&self.dek_id.to_be_bytes());
        out.push(self.purpose.to_byte());
        put_blob(&mut out, "rotation", "wrapped DEK", &self.wrapped)?;
        self.proposer_registration.put_row(&mut out);
        Ok(out)
    }

    /// Encodes a Raft entry: [`OP_ROTATION`] followed by the payload.
    ///
    /// # Errors
    /// As [`RotationPayload::encode`].
    pub fn to_entry(&self) -> Result<Vec<u8>> {
        Ok(prefixed(OP_ROTATION, self.encode()?))
    }

    /// Decodes the payload; the first failure in wire order wins. An unknown subtag
    /// is reported even when nothing follows it.
    pub fn decode(bytes: &[u8]) -> Result<RotationPayload> {
        const NAME: &str = "rotation";
        let mut r = Reader::new(NAME, bytes);
        let version = r.u8("version")?;
        if version != VERSION_V1 {
            return Err(Error::UnknownVersion {
                payload: NAME,
                version,
            });
        }
        let subtag_byte = r.u8("subtag")?;
        let subtag =
            RotationSubtag::from_byte(subtag_byte).ok_or(Error::UnknownSubtag(subtag_byte))?;
        let dek_id = r.u32("dek_id")?;
        let purpose_byte = r.u8("purpose")?;
        let purpose = Purpose::from_byte(purpose_byte)
            .ok_or_else(|| malformed(NAME, format!("unknown purpose {purpose_byte:#04x}")))?;
        let wrapped = r.blob("wrapped DEK")?.to_vec();
        let proposer_registration = RegistrationPayload::read_row(&mut r, "proposer row")?;
        r.finish()?;
        Ok(RotationPayload {
            subtag,
            dek_id,
            purpose,
            wrapped,
            proposer_registration,
        })
    }
}

fn malformed(payload: &'static str, reason: String) -> Error {
    Error::Malformed { payload, reason }
}

fn prefixed(opcode: u8, payload: Vec<u8>) -> Vec<u8> {
    let mut entry = Vec::with_capacity(1 + payload.len());
    entry.push(opcode);
    entry.extend_from_slice(&payload);
    entry
}

fn put_blob(out: &mut Vec<u8>, payload: &'static str, field: &str, blob: &[u8]) -> Result<()> {
    let len = u32::try_from(blob.len()).map_err(|_| {
        malformed(
            payload,
            format!("{field} of {} bytes is over u32::MAX", blob.len()),
        )
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(blob);
    Ok(())
}

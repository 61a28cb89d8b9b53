//! The AES-256-GCM envelope that wraps stored values and Raft payloads, its AADs, the
//! DEK type and the keystore that seals and opens envelopes.
//!
//! # Wire format
//!
//! An envelope is [`OVERHEAD`] (34) bytes longer than its plaintext. Integers are
//! big-endian. The layout is byte-compatible with elastickv's envelope version 1.
//!
//! ```text
//!  0        1        2                 6                        18               18+n        34+n
//!  +--------+--------+-----------------+------------------------+----------------+-----------+
//!  |version |  flag  |  key_id u32 BE  |       nonce (12)       | ciphertext (n) |  tag (16) |
//!  +--------+--------+-----------------+------------------------+----------------+-----------+
//!  |<------ header (6) = header AAD -->|                        |<------ body (n + 16) ----->|
//! ```
//!
//! * `version` is [`ENVELOPE_VERSION`]; any other value is refused on encode and decode.
//! * `flag` bit 0 ([`FLAG_COMPRESSED`]) marks a plaintext compressed before
//!   encryption. The codec accepts any flag value.
//! * `key_id` 0 is reserved ("not bootstrapped") and never seals or opens.
//!
//! # AAD
//!
//! The cipher never adds anything to the AAD it is given; the caller chooses an
//! [`AadMode`]:
//!
//! | mode                  | AAD passed to GCM                                    |
//! |-----------------------|------------------------------------------------------|
//! | [`AadMode::Storage`]  | [`header_aad`] ‖ context (value header ‖ storage key) |
//! | [`AadMode::Raft`]     | [`raft_aad`]: `'R'` ‖ version ‖ key_id                |
//! | [`AadMode::Verbatim`] | the given bytes, as they are                          |
//!
//! **Hazard:** in raft and verbatim mode the flag byte is *not* authenticated, exactly
//! as in the reference: flipping it still opens. A caller in those modes must not let
//! the flag drive anything (such as decompression) without its own check.
//!
//! # Example
//!
//! ```
//! use sealkv_encryption::envelope::{AadMode, Dek, Keystore};
//!
//! let mut keys = Keystore::new();
//! keys.insert(7, Dek::from_bytes([0x42; 32]))?;
//! let context = b"value-header-and-storage-key";
//! let sealed = keys.seal_envelope(0, 7, [1; 12], b"hello", AadMode::Storage { context })?;
//! let opened = keys.open_envelope(&sealed, AadMode::Storage { context })?;
//! assert_eq!(opened.plaintext, b"hello");
//!
//! // Another context (a moved value) fails as a typed integrity error.
//! let moved = keys.open_envelope(&sealed, AadMode::Storage { context: b"elsewhere" });
//! assert_eq!(moved.map(|_| ()).map_err(|e| e.class()), Err("integrity"));
//! # Ok::<(), sealkv_encryption::envelope::EnvelopeError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The only envelope version this crate encodes or decodes.
pub const ENVELOPE_VERSION: u8 = 1;
/// Length of the envelope header: version ‖ flag ‖ key_id. It is also the header AAD.
pub const HEADER_LEN: usize = 6;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext: header, nonce and tag.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Offset of the body (ciphertext ‖ tag) inside an encoded envelope.
pub const BODY_OFFSET: usize = HEADER_LEN + NONCE_LEN;
/// Length of a DEK: an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Flag bit 0: the plaintext was compressed before encryption.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// First byte of the Raft AAD (`'R'`), which keeps a Raft envelope from opening as a
/// storage envelope and the reverse.
pub const RAFT_AAD_TAG: u8 = 0x52;
/// Length of the Raft AAD: tag ‖ version ‖ key_id.
pub const RAFT_AAD_LEN: usize = 6;
/// The key id that means "none"; it is never issued, loaded, sealed or opened.
pub const RESERVED_KEY_ID: u32 = 0;

/// Result of the envelope and keystore operations.
pub type Result<T, E = EnvelopeError> = std::result::Result<T, E>;

/// Why an envelope or cipher operation failed. No message ever contains key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The input is shorter than its format allows: an envelope under [`OVERHEAD`]
    /// bytes, or a body under [`TAG_LEN`] bytes.
    #[error("{part} is {len} bytes, want at least {min}")]
    Short {
        /// What was short: `"envelope"` or `"body"`.
        part: &'static str,
        /// Its length.
        len: usize,
        /// The smallest length allowed.
        min: usize,
    },
    /// The version byte is not [`ENVELOPE_VERSION`].
    #[error("unknown envelope version 0x{version:02x}, want 0x01")]
    Version {
        /// The version found.
        version: u8,
    },
    /// Key id 0 was used; it is reserved for "not bootstrapped".
    #[error("key id 0 is reserved")]
    ReservedKeyId,
    /// The nonce is not [`NONCE_LEN`] bytes.
    #[error("nonce is {len} bytes, want 12")]
    BadNonceSize {
        /// The nonce length given.
        len: usize,
    },
    /// No DEK with this id is loaded in the keystore.
    #[error("unknown key id {key_id}")]
    UnknownKeyId {
        /// The key id asked for.
        key_id: u32,
    },
    /// GCM authentication failed: the ciphertext, tag, nonce or AAD was changed, or
    /// the key is the wrong one. No plaintext is returned.
    #[error("integrity check failed under key id {key_id}")]
    Integrity {
        /// The key id the open was tried with.
        key_id: u32,
    },
    /// Key material given as a slice is not [`KEY_LEN`] bytes.
    #[error("key is {len} bytes, want 32")]
    KeySize {
        /// The length given.
        len: usize,
    },
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The AES-GCM library refused an operation that should not fail (key setup, or
    /// sealing a plaintext over the GCM size limit).
    #[error("aes-gcm {op} failed")]
    Crypto {
        /// The operation: `"key setup"` or `"seal"`.
        op: &'static str,
    },
}

impl EnvelopeError {
    /// The error class, as named by the elastickv vectors (`short`, `version`,
    /// `reserved_key_id`, `bad_nonce_size`, `unknown_key_id`, `integrity`); the
    /// variants with no vector class return `key_size`, `random` and `crypto`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Short { .. } => "short",
            Self::Version { .. } => "version",
            Self::ReservedKeyId => "reserved_key_id",
            Self::BadNonceSize { .. } => "bad_nonce_size",
            Self::UnknownKeyId { .. } => "unknown_key_id",
            Self::Integrity { .. } => "integrity",
            Self::KeySize { .. } => "key_size",
            Self::Random => "random",
            Self::Crypto { .. } => "crypto",
        }
    }
}

/// The header AAD: version ‖ flag ‖ key_id BE, the first [`HEADER_LEN`] bytes of an
/// envelope.
pub fn header_aad(version: u8, flag: u8, key_id: u32) -> [u8; HEADER_LEN] {
    let [a, b, c, d] = key_id.to_be_bytes();
    [version, flag, a, b, c, d]
}

/// The Raft AAD: [`RAFT_AAD_TAG`] ‖ version ‖ key_id BE. The flag is not part of it.
pub fn raft_aad(version: u8, key_id: u32) -> [u8; RAFT_AAD_LEN] {
    let [a, b, c, d] = key_id.to_be_bytes();
    [RAFT_AAD_TAG, version, a, b, c, d]
}

/// The storage AAD: the envelope header ‖ `context`.
///
/// The store passes value header (9 bytes) ‖ storage key as the context, so a
/// ciphertext moved to another key or version, or a changed value header, fails to
/// open. This function treats the context as opaque bytes.
pub fn storage_aad(header: &[u8; HEADER_LEN], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// How the AAD of an envelope is built from its header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AadMode<'a> {
    /// A stored value: [`header_aad`] ‖ `context`, which binds version, flag and
    /// key id.
    Storage {
        /// Value header ‖ storage key, as the store builds it.
        context: &'a [u8],
    },
    /// A Raft payload: [`raft_aad`]. The flag is **not** bound.
    Raft,
    /// The given bytes are the whole AAD. The header is **not** bound.
    Verbatim(&'a [u8]),
}

impl<'a> AadMode<'a> {
    /// The AAD this mode gives for an envelope with these header fields.
    pub fn aad(&self, version: u8, flag: u8, key_id: u32) -> Cow<'a, [u8]> {
        match *self {
            Self::Storage { context } => {
                Cow::Owned(storage_aad(&header_aad(version, flag, key_id), context))
            }
            Self::Raft => Cow::Owned(raft_aad(version, key_id).to_vec()),
            Self::Verbatim(aad) => Cow::Borrowed(aad),
        }
    }
}

/// A decoded envelope. Decoding checks only the length and the version: the tag is
/// checked when the body is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Format version; only [`ENVELOPE_VERSION`] encodes.
    pub version: u8,
    /// Flag byte; bit 0 is [`FLAG_COMPRESSED`], other bits are carried unread.
    pub flag: u8,
    /// Id of the DEK the body was sealed under.
    pub key_id: u32,
    /// The GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext ‖ tag.
    pub body: Vec<u8>,
}

impl Envelope {
    /// The header bytes, which are also the header AAD.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header_aad(self.version, self.flag, self.key_id)
    }

    /// Whether [`FLAG_COMPRESSED`] is set.
    pub fn is_compressed(&self) -> bool {
        self.flag & FLAG_COMPRESSED != 0
    }

    /// Encodes the envelope. Fails with [`EnvelopeError::Version`] for a version
    /// other than 1 (checked first), then [`EnvelopeError::Short`] for a body shorter
    /// than a tag.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version {
                version: self.version,
            });
        }
        if self.body.len() < TAG_LEN {
            return Err(EnvelopeError::Short {
                part: "body",
                len: self.body.len(),
                min: TAG_LEN,
            });
        }
        let mut out = Vec::with_capacity(BODY_OFFSET + self.body.len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Decodes an envelope. Fails with [`EnvelopeError::Short`] under [`OVERHEAD`]
    /// bytes (checked first), then [`EnvelopeError::Version`]. The tag is not checked.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let short = || EnvelopeError::Short {
            part: "envelope",
            len: bytes.len(),
            min: OVERHEAD,
        };
        if bytes.len() < OVERHEAD {
            return Err(short());
        }
        let (header, rest) = bytes.split_first_chunk::<HEADER_LEN>().ok_or_else(short)?;
        let (nonce, body) = rest.split_first_chunk::<NONCE_LEN>().ok_or_else(short)?;
        let [version, flag, id @ ..] = *header;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version { version });
        }
        Ok(Self {
            version,
            flag,
            key_id: u32::from_be_bytes(id),
            nonce: *nonce,
            body: body.to_vec(),
        })
    }
}

/// A data-encryption key: 32 bytes of AES-256 key material.
///
/// The bytes are zeroed when the value is dropped. `Debug` prints no key material and
/// there is no `Display`, so a `Dek` cannot leak through a log line by accident.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Dek([u8; KEY_LEN]);

impl Dek {
    /// Wraps key bytes. The caller's array is a copy that this type cannot zero.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies key bytes from a slice; fails with [`EnvelopeError::KeySize`] unless it
    /// is [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let key = bytes
            .try_into()
            .map_err(|_| EnvelopeError::KeySize { len: bytes.len() })?;
        Ok(Self(key))
    }

    /// Draws a fresh DEK from the system CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut dek = Self([0; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut dek.0).map_err(|_| EnvelopeError::Random)?;
        Ok(dek)
    }

    /// The key bytes, for wrapping under the KEK. Never log them.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Whether `other` has the same bytes, compared in constant time.
    pub fn same_bytes(&self, other: &Dek) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// A DEK with its AES-GCM key schedule, prepared once at insert time.
struct Slot {
    dek: Dek,
    aead: LessSafeKey,
}

/// The loaded DEKs by key id, and the AES-256-GCM operations over them.
///
/// The keystore knows nothing of DEK purposes (storage or Raft): keeping each id to
/// its purpose is the job of the sidecar and the applier. It is a plain map; a caller
/// that shares it between threads puts it behind its own lock or swap.
///
/// `Debug` prints the loaded key ids only.
#[derive(Default)]
pub struct Keystore {
    slots: BTreeMap<u32, Slot>,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystore")
            .field("key_ids", &self.ids())
            .finish()
    }
}

/// Returns the nonce as a GCM nonce, or [`EnvelopeError::BadNonceSize`].
fn gcm_nonce(nonce: &[u8]) -> Result<Nonce> {
    Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| EnvelopeError::BadNonceSize { len: nonce.len() })
}

impl Keystore {
    /// An empty keystore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads `dek` under `key_id`, replacing any DEK already there.
    ///
    /// Fails with [`EnvelopeError::ReservedKeyId`] for key id 0. Replacing is allowed
    /// because every install comes from a committed Raft entry, on which all replicas
    /// agree; refusing a conflicting install is the applier's decision.
    pub fn insert(&mut self, key_id: u32, dek: Dek) -> Result<()> {
        if key_id == RESERVED_KEY_ID {
            return Err(EnvelopeError::ReservedKeyId);
        }
        let key = UnboundKey::new(&AES_256_GCM, dek.as_bytes())
            .map_err(|_| EnvelopeError::Crypto { op: "key setup" })?;
        self.slots.insert(
            key_id,
            Slot {
                dek,
                aead: LessSafeKey::new(key),
            },
        );
        Ok(())
    }

    /// Unloads the DEK under `key_id` and returns it, if it was loaded.
    pub fn remove(&mut self, key_id: u32) -> Option<Dek> {
        self.slots.remove(&key_id).map(|slot| slot.dek)
    }

    /// The DEK under `key_id`, if loaded.
    pub fn get(&self, key_id: u32) -> Option<&Dek> {
        self.slots.get(&key_id).map(|slot| &slot.dek)
    }

    /// The id of a loaded DEK whose bytes equal `dek`'s, compared in constant time.
    pub fn holder_of(&self, dek: &Dek) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, slot)| slot.dek.same_bytes(dek))
            .map(|(&id, _)| id)
    }

    /// Whether a DEK is loaded under `key_id`.
    pub fn contains(&self, key_id: u32) -> bool {
        self.slots.contains_key(&key_id)
    }

    /// The loaded key ids, in ascending order.
    pub fn ids(&self) -> Vec<u32> {
        self.slots.keys().copied().collect()
    }

    /// The number of loaded DEKs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no DEK is loaded.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Checks key id and nonce in the reference's order: reserved id, nonce length,
    /// loaded id.
    fn prepare(&self, key_id: u32, nonce: &[u8]) -> Result<(&LessSafeKey, Nonce)> {
        if key_id == RESERVED_KEY_ID {
            return Err(EnvelopeError::ReservedKeyId);
        }
        let nonce = gcm_nonce(nonce)?;
        let slot = self
            .slots
            .get(&key_id)
            .ok_or(EnvelopeError::UnknownKeyId { key_id })?;
        Ok((&slot.aead, nonce))
    }

    /// Seals `plaintext` under DEK `key_id` and returns ciphertext ‖ tag. The AAD is
    /// passed to GCM exactly as given.
    ///
    /// Fails with [`EnvelopeError::ReservedKeyId`], then
    /// [`EnvelopeError::BadNonceSize`], then [`EnvelopeError::UnknownKeyId`].
    ///
    /// The caller must never seal two plaintexts under one (key id, nonce) pair: GCM
    /// nonce reuse leaks the plaintexts' XOR and the authentication key.
    pub fn seal(&self, key_id: u32, nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let (aead, nonce) = self.prepare(key_id, nonce)?;
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        aead.seal_in_place_append_tag(nonce, Aad::from(aad), &mut out)
            .map_err(|_| EnvelopeError::Crypto { op: "seal" })?;
        Ok(out)
    }

    /// Opens ciphertext ‖ tag sealed by [`Keystore::seal`] with the same key id,
    /// nonce and AAD, and returns the plaintext.
    ///
    /// Fails with [`EnvelopeError::ReservedKeyId`], then
    /// [`EnvelopeError::BadNonceSize`], then [`EnvelopeError::UnknownKeyId`], then
    /// [`EnvelopeError::Integrity`] (which includes input shorter than a tag).
    pub fn open(
        &self,
        key_id: u32,
        nonce: &[u8],
        ciphertext_and_tag: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_owned(key_id, nonce, ciphertext_and_tag.to_vec(), aad)
    }

    /// [`Keystore::open`] over a buffer it may decrypt in place.
    fn open_owned(
        &self,
        key_id: u32,
        nonce: &[u8],
        mut buf: Vec<u8>,
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let (aead, nonce) = self.prepare(key_id, nonce)?;
        match aead.open_in_place(nonce, Aad::from(aad), &mut buf) {
            Ok(plaintext) => {
                let len = plaintext.len();
                buf.truncate(len);
                Ok(buf)
            }
            Err(_) => {
                // The buffer may hold partly decrypted bytes; none may leave.
                buf.zeroize();
                Err(EnvelopeError::Integrity { key_id })
            }
        }
    }

    /// Seals `plaintext` into a version-1 envelope with this flag, key id and nonce,
    /// building the AAD from the header for `mode`.
    ///
    /// Fails as [`Keystore::seal`] does.
    pub fn seal_envelope(
        &self,
        flag: u8,
        key_id: u32,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
        mode: AadMode<'_>,
    ) -> Result<Vec<u8>> {
        let aad = mode.aad(ENVELOPE_VERSION, flag, key_id);
        let body = self.seal(key_id, &nonce, plaintext, &aad)?;
        Envelope {
            version: ENVELOPE_VERSION,
            flag,
            key_id,
            nonce,
            body,
        }
        .encode()
    }

    /// Opens an encoded envelope: decodes it, rebuilds the AAD for `mode` from the
    /// *decoded* header, and opens the body under the key id it names.
    ///
    /// Fails with [`EnvelopeError::Short`] or [`EnvelopeError::Version`] (decode),
    /// then [`EnvelopeError::ReservedKeyId`], [`EnvelopeError::UnknownKeyId`] or
    /// [`EnvelopeError::Integrity`]. In raft and verbatim mode a changed flag is not
    /// detected: see the module docs.
    pub fn open_envelope(&self, bytes: &[u8], mode: AadMode<'_>) -> Result<Opened> {
        let Envelope {
            version,
            flag,
            key_id,
            nonce,
            body,
        } = Envelope::decode(bytes)?;
        let aad = mode.aad(version, flag, key_id);
        let plaintext = self.open_owned(key_id, &nonce, body, &aad)?;
        Ok(Opened {
            version,
            flag,
            key_id,
            plaintext,
        })
    }
}

/// An opened envelope: its header fields and the plaintext.
///
/// `Debug` prints the plaintext's length, not its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The envelope version.
    pub version: u8,
    /// The flag byte. Authenticated only in [`AadMode::Storage`].
    pub flag: u8,
    /// The key id the body was opened with.
    pub key_id: u32,
    /// The authenticated plaintext.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("version", &self.version)
            .field("flag", &self.flag)
            .field("key_id", &self.key_id)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

//! The KV command codec: what the `0x00` (one command) and `0x01` (a batch) Raft
//! entries carry, in sealkv's own versioned serde + bincode encoding.
//!
//! ```text
//! 0        1         2
//! +--------+---------+---------------------------------------------+
//! | opcode | version | bincode (standard config) of KvRequest      |
//! | 00/01  |   01    |   { issued_at_ms, commands }                |
//! +--------+---------+---------------------------------------------+
//! ```
//!
//! After the Raft envelope cutover the proposer carries the version and body in a
//! raft envelope (DESIGN.md §6), marked by [`WRAPPED`] in place of the version:
//!
//! ```text
//! 0        1         2
//! +--------+---------+---------------------------------------------+
//! | opcode | 80      | raft envelope of ( version ‖ bincode body )  |
//! | 00/01  | WRAPPED |   01 ‖ flag ‖ key id ‖ nonce ‖ ct ‖ tag     |
//! +--------+---------+---------------------------------------------+
//! ```
//!
//! A `0x00` entry carries exactly one command, a `0x01` entry one or more. Every
//! time-dependent decision (expiry) is made by the proposer and carried in the entry
//! as absolute milliseconds, so every replica applies the same result.
//!
//! Decoding never allocates more than a small multiple of the input: bincode's limit
//! is chosen from the input length, and every length prefix is checked against it
//! before anything is allocated.
//!
//! # Sizes
//!
//! No entry is larger than [`MAX_ENTRY_BYTES`]: [`KvRequest::to_entry`] refuses to
//! build one, and [`KvRequest::decode`] accepts every entry up to it, so an entry a
//! proposer built is never one the state machine cannot decode. A front end refuses
//! smaller requests first, by the operator's [`SizeLimits`], before it proposes.

use serde::{Deserialize, Serialize};

/// Opcode of an entry carrying one KV command.
pub const OP_KV: u8 = 0x00;
/// Opcode of an entry carrying a batch of KV commands.
pub const OP_KV_BATCH: u8 = 0x01;
/// Reserved opcode (elastickv's HLC lease); it halts the state machine.
pub const OP_RESERVED_HLC: u8 = 0x02;
/// The only command encoding version this crate understands.
pub const COMMAND_VERSION: u8 = 1;
/// In place of the version byte: the rest of the payload is a raft envelope whose
/// plaintext is the version byte and the body.
pub const WRAPPED: u8 = 0x80;

/// The largest KV entry (opcode and version included, before any raft envelope) a
/// proposer builds and every replica decodes; the ceiling of [`SizeLimits`].
pub const MAX_ENTRY_BYTES: usize = 256 << 20;

/// What a raft envelope adds to an entry: a wrapped entry is exactly this much longer
/// than the cleartext one.
pub const WRAP_OVERHEAD: usize = sealkv_encryption::envelope::OVERHEAD;

/// The operator's caps on a request, checked where a command enters, before it is
/// proposed (`--max-value-bytes`, `--max-entry-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// The largest value one put may carry.
    pub max_value_bytes: usize,
    /// The largest entry one request may become, before any raft envelope; at most
    /// [`MAX_ENTRY_BYTES`].
    pub max_entry_bytes: usize,
}

impl Default for SizeLimits {
    /// 8 MiB values in entries of up to 16 MiB (TiKV's `raft-entry-max-size` is
    /// 8 MiB; the entry cap leaves room for the key and a batch of smaller values).
    fn default() -> SizeLimits {
        SizeLimits {
            max_value_bytes: 8 << 20,
            max_entry_bytes: 16 << 20,
        }
    }
}

/// A request larger than the [`SizeLimits`] allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// One value is larger than `max_value_bytes`.
    #[error("value too large: {bytes} bytes, the limit is {limit} (--max-value-bytes)")]
    Value {
        /// The value's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The request's entry would be larger than `max_entry_bytes`.
    #[error(
        "command too large: its raft entry would be {bytes} bytes, the limit is {limit} \
         (--max-entry-bytes)"
    )]
    Entry {
        /// The entry's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

impl SizeLimits {
    /// Checks that the limits are usable: values fit in entries with room for a key,
    /// and entries are at most [`MAX_ENTRY_BYTES`].
    ///
    /// # Errors
    /// A sentence naming the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_value_bytes == 0 {
            return Err("--max-value-bytes must be at least 1".to_string());
        }
        if self.max_entry_bytes > MAX_ENTRY_BYTES {
            return Err(format!(
                "--max-entry-bytes {} is above the most any replica decodes ({MAX_ENTRY_BYTES})",
                self.max_entry_bytes
            ));
        }
        if self.max_entry_bytes < self.max_value_bytes.saturating_add(ENTRY_HEADROOM) {
            return Err(format!(
                "--max-entry-bytes {} must be at least --max-value-bytes {} plus {ENTRY_HEADROOM} \
                 bytes for the key and the command",
                self.max_entry_bytes, self.max_value_bytes
            ));
        }
        Ok(())
    }

    /// Checks `request` against the limits: every value, then the length of the
    /// entry it encodes to.
    ///
    /// # Errors
    /// The first [`SizeError`].
    pub fn check(&self, request: &KvRequest) -> Result<(), SizeError> {
        for command in &request.commands {
            if let Command::Put { value, .. } = command
                && value.len() > self.max_value_bytes
            {
                return Err(SizeError::Value {
                    bytes: value.len(),
                    limit: self.max_value_bytes,
                });
            }
        }
        let bytes = request.entry_len();
        if bytes > self.max_entry_bytes {
            return Err(SizeError::Entry {
                bytes,
                limit: self.max_entry_bytes,
            });
        }
        Ok(())
    }
}

/// Room an entry needs beyond its largest value: the key (Redis keys of up to
/// 64 KiB are the norm) and the command's own bytes.
pub const ENTRY_HEADROOM: usize = 64 << 10;

/// When a put applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PutCondition {
    /// Always (plain `SET`).
    #[default]
    Always,
    /// Only when the key has no live value (`SET NX`).
    IfAbsent,
    /// Only when the key has a live value (`SET XX`).
    IfPresent,
}

/// One KV command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`. Replies `Ok`, or `Nil` when the condition fails.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Absolute expiry in ms since the Unix epoch; `0` means none.
        expire_at_ms: u64,
        /// When to apply.
        condition: PutCondition,
    },
    /// Deletes keys. Replies the number of keys that had a live value.
    Delete {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Adds `delta` to the integer at `key` (absent counts as 0), keeping its expiry.
    /// Replies the new value, or an error reply when the value is not an integer or
    /// the result overflows.
    IncrBy {
        /// The key.
        key: Vec<u8>,
        /// The amount to add (negative to decrement).
        delta: i64,
    },
    /// Sets the expiry of a live key; an expiry at or before the request's time
    /// deletes it. Replies 1 when the key was live, else 0.
    Expire {
        /// The key.
        key: Vec<u8>,
        /// Absolute expiry in ms since the Unix epoch.
        expire_at_ms: u64,
    },
    /// Storage maintenance for every replica (DESIGN.md §12), proposed by nodes,
    /// never built from a client's command. Replies `Ok`.
    Maintain(Maintenance),
}

/// What a [`Command::Maintain`] asks of every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Maintenance {
    /// A new GC safe point, `(index, at_ms)`, computed by the proposer from its own
    /// applied-index history and retention window. Applying it never moves either
    /// bound back, and clamps the index to the entry's own.
    pub horizon: Option<(u64, u64)>,
    /// Every node collects garbage up to the safe point and compacts its store.
    pub compact: bool,
    /// Every node reseals each version that is cleartext or sealed under a storage
    /// key that is not the active one.
    pub rewrite: bool,
}

/// The body of a KV entry: the proposer's clock and the commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRequest {
    /// The proposer's wall clock when it proposed, in ms since the Unix epoch. Expiry
    /// is judged against this, never against the applying replica's clock.
    pub issued_at_ms: u64,
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// A KV entry that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The entry is shorter than its opcode and version bytes.
    #[error("kv entry of {0} bytes has no version byte")]
    Truncated(usize),
    /// The version byte is not [`COMMAND_VERSION`].
    #[error("unknown kv command version {0:#04x}")]
    UnknownVersion(u8),
    /// The bincode body does not decode, or bytes are left over.
    #[error("malformed kv request: {0}")]
    Malformed(String),
    /// A `0x00` entry does not carry exactly one command, or a batch is empty.
    #[error("kv entry with opcode {opcode:#04x} carries {count} commands")]
    BadCount {
        /// The entry's opcode.
        opcode: u8,
        /// How many commands it carries.
        count: usize,
    },
    /// The request could not be encoded.
    #[error("encode kv request: {0}")]
    Encode(String),
    /// The entry is larger than [`MAX_ENTRY_BYTES`].
    #[error("kv entry of {0} bytes is larger than the {MAX_ENTRY_BYTES} bytes any replica decodes")]
    TooLarge(usize),
}

/// A KV request that could not be encoded in a raft envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The request itself does not encode.
    #[error(transparent)]
    Encode(#[from] CommandError),
    /// The keyring cannot seal.
    #[error("seal kv request in a raft envelope")]
    Seal(#[source] sealkv_encryption::keyring::KeyringError),
}

impl KvRequest {
    /// The length of the entry [`to_entry`](Self::to_entry) builds, computed without
    /// building it.
    pub fn entry_len(&self) -> usize {
        let mut counter = bincode::enc::write::SizeWriter::default();
        match bincode::serde::encode_into_writer(self, &mut counter, bincode::config::standard()) {
            Ok(()) => 2usize.saturating_add(counter.bytes_written),
            Err(_) => usize::MAX,
        }
    }

    /// Encodes a full Raft entry: opcode ([`OP_KV`] for one command, else
    /// [`OP_KV_BATCH`]), version, body.
    ///
    /// # Errors
    /// [`CommandError::BadCount`] for an empty request; [`CommandError::TooLarge`]
    /// above [`MAX_ENTRY_BYTES`]; [`CommandError::Encode`] if bincode fails.
    pub fn to_entry(&self) -> Result<Vec<u8>, CommandError> {
        let opcode = match self.commands.len() {
            0 => {
                return Err(CommandError::BadCount {
                    opcode: OP_KV_BATCH,
                    count: 0,
                });
            }
            1 => OP_KV,
            _ => OP_KV_BATCH,
        };
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| CommandError::Encode(e.to_string()))?;
        if body.len() + 2 > MAX_ENTRY_BYTES {
            return Err(CommandError::TooLarge(body.len() + 2));
        }
        let mut out = Vec::with_capacity(2 + body.len());
        out.push(opcode);
        out.push(COMMAND_VERSION);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Encodes a full Raft entry as [`to_entry`](Self::to_entry) does, with the
    /// version and body sealed in a raft envelope under `keyring`'s active raft key.
    ///
    /// # Errors
    /// [`WrapError::Encode`] as for `to_entry`; [`WrapError::Seal`] when the keyring
    /// cannot seal (no active raft key, not registered, counter exhausted).
    pub fn to_wrapped_entry(
        &self,
        keyring: &sealkv_encryption::keyring::Keyring,
    ) -> Result<Vec<u8>, WrapError> {
        let clear = self.to_entry()?;
        let Some((&opcode, payload)) = clear.split_first() else {
            return Err(WrapError::Encode(CommandError::Truncated(0)));
        };
        let sealed = keyring.seal_raft(payload).map_err(WrapError::Seal)?;
        let mut out = Vec::with_capacity(2 + sealed.len());
        out.push(opcode);
        out.push(WRAPPED);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decodes the payload of a KV entry (the bytes after `opcode`).
    ///
    /// # Errors
    /// Any [`CommandError`]; the state machine halts on it.
    pub fn decode(opcode: u8, payload: &[u8]) -> Result<KvRequest, CommandError> {
        let Some((&version, body)) = payload.split_first() else {
            return Err(CommandError::Truncated(payload.len()));
        };
        if version != COMMAND_VERSION {
            return Err(CommandError::UnknownVersion(version));
        }
        let (request, used): (KvRequest, usize) = decode_bounded(body)?;
        if used != body.len() {
            return Err(CommandError::Malformed(format!(
                "{} trailing bytes",
                body.len() - used
            )));
        }
        let count = request.commands.len();
        let ok = match opcode {
            OP_KV => count == 1,
            _ => count >= 1,
        };
        if !ok {
            return Err(CommandError::BadCount { opcode, count });
        }
        Ok(request)
    }
}

/// Decodes with a bincode byte limit of at least 64 times the input (and at least
/// 4 KiB), so a lying length prefix can never make the decoder allocate far more
/// than the entry's own size (serde's sequences also preallocate cautiously, and
/// grow only with elements actually read). Every body of an entry up to
/// [`MAX_ENTRY_BYTES`] gets a limit; a longer one is [`CommandError::TooLarge`].
fn decode_bounded(body: &[u8]) -> Result<(KvRequest, usize), CommandError> {
    use bincode::config::standard;
    fn run<C: bincode::config::Config>(
        body: &[u8],
        config: C,
    ) -> Result<(KvRequest, usize), CommandError> {
        bincode::serde::decode_from_slice(body, config)
            .map_err(|e| CommandError::Malformed(e.to_string()))
    }
    let need = body.len().saturating_mul(64);
    match need {
        0..=4096 => run(body, standard().with_limit::<4096>()),
        4097..=262_144 => run(body, standard().with_limit::<262_144>()),
        262_145..=16_777_216 => run(body, standard().with_limit::<16_777_216>()),
        16_777_217..=1_073_741_824 => run(body, standard().with_limit::<1_073_741_824>()),
        _ if body.len() + 2 <= MAX_ENTRY_BYTES => {
            run(body, standard().with_limit::<{ MAX_ENTRY_BYTES * 64 }>())
        }
        _ => Err(CommandError::TooLarge(body.len() + 2)),
    }
}

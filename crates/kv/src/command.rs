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
}

/// A KV request that could not be encoded in a raft envelope.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    /// The request itself does not encode.
    #[error(transparent)]
    Encode(#[from] CommandError),
    /// The keyring cannot seal.
    #[error("seal kv request in a raft envelope")]
    Seal(#[source] sealkv_encryption::keyring::KeyringError),
}

impl KvRequest {
    /// Encodes a full Raft entry: opcode ([`OP_KV`] for one command, else
    /// [`OP_KV_BATCH`]), version, body.
    ///
    /// # Errors
    /// [`CommandError::BadCount`] for an empty request; [`CommandError::Encode`] if
    /// bincode fails.
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
/// than the entry's own size.
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
        _ => Err(CommandError::Malformed(format!(
            "entry of {} bytes is too large",
            body.len()
        ))),
    }
}

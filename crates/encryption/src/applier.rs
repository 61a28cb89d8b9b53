//! The encryption applier: applies the committed Raft entries of the encryption band
//! (`0x03..=0x07`) to the writer registry.
//!
//! # Registration rules
//!
//! Applying a registration `(dek, full_id, epoch)` to the row at
//! `(dek, full_id & 0xFFFF)`:
//!
//! | row                                  | outcome                                  |
//! |--------------------------------------|------------------------------------------|
//! | none                                 | insert `first = last = epoch`            |
//! | same `full_id`, `epoch > last`       | set `last = epoch`, keep `first`         |
//! | same `full_id`, `epoch == last`      | nothing: a replay after restart, success |
//! | same `full_id`, `epoch < last`       | [`ApplyError::EpochRollback`]             |
//! | different `full_id`                  | [`ApplyError::NodeIdCollision`]           |
//!
//! Every [`ApplyError`] means the entry could not be applied; the state machine must
//! halt on it and never skip the entry.
//!
//! # Stage 6A
//!
//! Bootstrap (`0x04`) and rotation (`0x05`) install keys, which needs the KEK. This
//! applier is built without a KEK, so both decode their payload (a malformed payload
//! is still [`ApplyError::Decode`]) and then fail with
//! [`ApplyError::KekNotConfigured`]. The opcodes `0x06` and `0x07` are reserved and
//! fail with [`ApplyError::UnsupportedOpcode`].

use std::sync::Arc;

use sealkv_fsmwire::{
    BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, OP_ROTATION, RegistrationPayload,
    RotationPayload,
};

use crate::registry::{WriterKey, WriterRecord};
use crate::store::{RegistryStoreError, WriterRegistryStore};

/// Why an encryption entry could not be applied. Each one halts the state machine.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload after the opcode does not decode.
    #[error("decode payload of opcode {opcode:#04x}")]
    Decode {
        /// The entry's opcode.
        opcode: u8,
        /// The codec's error.
        #[source]
        source: sealkv_fsmwire::Error,
    },
    /// The opcode is in the encryption band but not one this applier implements, or
    /// it is not in the band at all.
    #[error("unsupported encryption opcode {0:#04x}")]
    UnsupportedOpcode(u8),
    /// The node registered an epoch below the one on record: its nonce counter went
    /// backwards, most likely because it was restored from an old disk.
    #[error(
        "epoch rollback for dek {dek_id} node {full_node_id:#x} (node16 {node_id16:#06x}): \
         epoch {epoch} is below last seen {last_seen_local_epoch}"
    )]
    EpochRollback {
        /// The DEK of the registration.
        dek_id: u32,
        /// The low 16 bits of the node id.
        node_id16: u16,
        /// The registering node's full id.
        full_node_id: u64,
        /// The epoch the entry registers.
        epoch: u16,
        /// The last epoch on record for the node.
        last_seen_local_epoch: u16,
    },
    /// Two nodes share the low 16 bits of their id under one DEK, so their nonces
    /// could collide.
    #[error(
        "node id collision under dek {dek_id}: node16 {node_id16:#06x} belongs to node \
         {registered_full_node_id:#x}, not {proposed_full_node_id:#x}"
    )]
    NodeIdCollision {
        /// The DEK of the registration.
        dek_id: u32,
        /// The shared low 16 bits.
        node_id16: u16,
        /// The node that owns the slot.
        registered_full_node_id: u64,
        /// The node that tried to register into it.
        proposed_full_node_id: u64,
    },
    /// The entry installs keys but this applier has no KEK to unwrap them.
    #[error("opcode {opcode:#04x} needs a KEK, and none is configured")]
    KekNotConfigured {
        /// The entry's opcode.
        opcode: u8,
    },
    /// The registry store failed; the entry's effects may be partly durable, which is
    /// safe because a replay of a registration is a no-op.
    #[error("writer registry store")]
    Store(#[from] RegistryStoreError),
}

/// Result of applying an encryption entry.
pub type Result<T> = std::result::Result<T, ApplyError>;

/// What applying a registration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new row was inserted.
    Inserted,
    /// The row's last-seen epoch moved up from `previous_last`.
    Advanced {
        /// The last-seen epoch before this entry.
        previous_last: u16,
    },
    /// The row already records this epoch: a replay, nothing written.
    Replayed,
}

/// What applying one encryption entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A writer registration (`0x03`).
    Registration(RegistrationOutcome),
}

/// Applies encryption entries to a writer registry.
///
/// Build it once at startup from the registry glue and hand it to the state machine.
pub struct Applier {
    registry: Arc<dyn WriterRegistryStore>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("kek", &"not configured")
            .finish_non_exhaustive()
    }
}

impl Applier {
    /// An applier over `registry`, without a KEK (Stage 6A): registrations apply,
    /// bootstrap and rotation fail with [`ApplyError::KekNotConfigured`].
    pub fn new(registry: Arc<dyn WriterRegistryStore>) -> Applier {
        Applier { registry }
    }

    /// The registry this applier writes to.
    pub fn registry(&self) -> &dyn WriterRegistryStore {
        self.registry.as_ref()
    }

    /// Applies the entry with `opcode` and `payload` (the entry data after the opcode
    /// byte) committed at Raft `index`.
    ///
    /// # Errors
    /// Any [`ApplyError`]; the caller must halt and must not mark the entry applied.
    pub fn apply(&self, index: u64, opcode: u8, payload: &[u8]) -> Result<Applied> {
        let decode_err = |source| ApplyError::Decode { opcode, source };
        match opcode {
            OP_REGISTRATION => {
                let reg = RegistrationPayload::decode(payload).map_err(decode_err)?;
                Ok(Applied::Registration(self.apply_registration(&reg)?))
            }
            OP_BOOTSTRAP => {
                let boot = BootstrapPayload::decode(payload).map_err(decode_err)?;
                self.apply_bootstrap(index, &boot)
            }
            OP_ROTATION => {
                let rot = RotationPayload::decode(payload).map_err(decode_err)?;
                self.apply_rotation(index, &rot)
            }
            other => Err(ApplyError::UnsupportedOpcode(other)),
        }
    }

    /// Applies one registration by the rules in the module docs. The row is durable
    /// before this returns.
    ///
    /// # Errors
    /// [`ApplyError::EpochRollback`], [`ApplyError::NodeIdCollision`] or
    /// [`ApplyError::Store`].
    pub fn apply_registration(&self, reg: &RegistrationPayload) -> Result<RegistrationOutcome> {
        let key = WriterKey::for_node(reg.dek_id, reg.full_node_id);
        let existing = self.registry.get_writer(key)?;
        let (outcome, record) = next_record(key, existing, reg)?;
        if let Some(record) = record {
            self.registry.put_writers(&[(key, record)])?;
        }
        Ok(outcome)
    }

    /// Applies a bootstrap entry. Without a KEK this always fails.
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`].
    pub fn apply_bootstrap(&self, _index: u64, _boot: &BootstrapPayload) -> Result<Applied> {
        Err(ApplyError::KekNotConfigured {
            opcode: OP_BOOTSTRAP,
        })
    }

    /// Applies a rotation entry. Without a KEK this always fails.
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`].
    pub fn apply_rotation(&self, _index: u64, _rot: &RotationPayload) -> Result<Applied> {
        Err(ApplyError::KekNotConfigured {
            opcode: OP_ROTATION,
        })
    }
}

/// Decides what a registration does to the row it lands on: the outcome and the
/// record to write, if any.
fn next_record(
    key: WriterKey,
    existing: Option<WriterRecord>,
    reg: &RegistrationPayload,
) -> Result<(RegistrationOutcome, Option<WriterRecord>)> {
    let Some(row) = existing else {
        let record = WriterRecord {
            full_node_id: reg.full_node_id,
            first_seen_local_epoch: reg.local_epoch,
            last_seen_local_epoch: reg.local_epoch,
        };
        return Ok((RegistrationOutcome::Inserted, Some(record)));
    };
    if row.full_node_id != reg.full_node_id {
        return Err(ApplyError::NodeIdCollision {
            dek_id: key.dek_id,
            node_id16: key.node_id16,
            registered_full_node_id: row.full_node_id,
            proposed_full_node_id: reg.full_node_id,
        });
    }
    match reg.local_epoch.cmp(&row.last_seen_local_epoch) {
        std::cmp::Ordering::Greater => {
            let record = WriterRecord {
                last_seen_local_epoch: reg.local_epoch,
                ..row
            };
            let outcome = RegistrationOutcome::Advanced {
                previous_last: row.last_seen_local_epoch,
            };
            Ok((outcome, Some(record)))
        }
        std::cmp::Ordering::Equal => Ok((RegistrationOutcome::Replayed, None)),
        std::cmp::Ordering::Less => Err(ApplyError::EpochRollback {
            dek_id: key.dek_id,
            node_id16: key.node_id16,
            full_node_id: reg.full_node_id,
            epoch: reg.local_epoch,
            last_seen_local_epoch: row.last_seen_local_epoch,
        }),
    }
}

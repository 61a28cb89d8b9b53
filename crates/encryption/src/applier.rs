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
//! halt on it and never skip the entry. A deterministic refusal (a second bootstrap,
//! a rotation to a key id already in use) is not an error: it is
//! [`Applied::Rejected`], changes nothing, is the same on every replica, and the
//! entry counts as applied.
//!
//! # Key-installing entries
//!
//! Bootstrap (`0x04`) and rotation (`0x05`, subtag rotate-DEK) install DEKs, which
//! needs the KEK: an applier built with [`Applier::new`] has none, decodes the
//! payload (a malformed payload is still [`ApplyError::Decode`]) and fails with
//! [`ApplyError::KekNotConfigured`]. One built with [`Applier::with_keyring`] applies
//! them against the node's [`Keyring`]:
//!
//! 1. **Replay check.** When the sidecar already reflects an index at or past the
//!    entry's, the entry was applied before. If the sidecar holds the entry's keys
//!    (same id, same wrapped bytes) the entry's registry rows are re-applied and the
//!    result is [`Applied::Replayed`]; keys and sidecar are left alone. If it does not,
//!    the entry was rejected when first applied and is rejected again
//!    ([`Rejection::Superseded`]), whatever the current state would say.
//! 2. **Deterministic refusals** ([`Applied::Rejected`]): bootstrap when keys are
//!    already active, with a key id of 0, or with equal storage and raft ids;
//!    rotation before bootstrap, to key id 0, to an id already loaded or below a
//!    loaded one, or with a proposer row for another key.
//! 3. **Plan the registry rows** by the registration rules against the registry,
//!    without writing. A collision or rollback halts with nothing changed.
//! 4. **Unwrap** the DEKs with the KEK; failure halts with nothing changed.
//! 5. **Write the sidecar** durably (`raft_applied_index` = the entry's index, the new
//!    keys active, older keys kept) and only then load the keys in memory.
//! 6. **Write the registry rows** durably.
//! 7. **Mark** this node registered for each new key whose row names it at the epoch
//!    the sidecar records, so the key starts sealing.
//!
//! # Crash argument
//!
//! The entry is acknowledged only after step 7, so the state machine replays it
//! after any crash before that; the question is what the replay finds.
//!
//! * **Before step 5 completes**, the sidecar on disk is the old one (durable
//!   replace is all-or-nothing) and no key was loaded, so nothing was sealed under
//!   the new keys. The replay sees an older sidecar index and applies the entry from
//!   scratch; the registry rows were not written either, so the plan is the same.
//! * **Between steps 5 and 6**, the sidecar holds the new keys and the entry's index,
//!   but the rows are missing. Nothing was sealed: sealing needs step 7. On restart
//!   [`Keyring::open`] raises the new keys' epochs above the sidecar's and makes that
//!   durable; the replay then takes the replay path, which writes the missing rows.
//!   The rows record the entry's epoch, which is below the raised one, so the node's
//!   own registration of its new epoch, proposed after startup, advances its row.
//! * **After step 6**, the replay re-applies rows that are already there, which the
//!   registration rules treat as a no-op.
//!
//! The state machine commits its applied index in batches, so after a crash the
//! registry and the sidecar may already reflect entries *after* the one being
//! replayed. The replay path therefore treats a row of the same node at an epoch at or
//! below the recorded one as already applied instead of as a rollback, and a
//! rejected entry stays rejected even when the state has since changed (step 1). A row
//! of another node in the slot is still a collision and halts.
//!
//! A node's nonces stay unique throughout: a key seals only after its (key, node,
//! epoch) row is durable, every process load raises the epoch durably before
//! sealing, and a fresh key's first epoch comes from its registry row, which no
//! earlier load can have used because the key did not exist.
//!
//! # Key retirement
//!
//! A `0x05` entry with subtag `0x04` ([`KeyRetirement`]) removes a storage key that
//! is loaded and not active from the keyring and the sidecar
//! ([`Applier::apply_retirement`]); anything else is [`Applied::Rejected`]. A
//! replay is recognised by the sidecar index, as for the envelope switches. The
//! key's registry rows stay.
//!
//! The opcodes `0x06` and `0x07` are reserved and fail with
//! [`ApplyError::UnsupportedOpcode`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sealkv_fsmwire::{
    BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, OP_ROTATION, Purpose, RegistrationPayload,
    RotationPayload, RotationSubtag,
};

use crate::keyring::{Keyring, KeyringError, NewKey};
use crate::registry::{WriterKey, WriterRecord};
pub use crate::retire::KeyRetirement;
use crate::sidecar::Sidecar;
use crate::store::{RegistryStoreError, WriterRegistryStore};

/// Why an encryption entry could not be applied. Each one halts the state machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The keyring failed: the KEK could not be loaded or does not unwrap a DEK of
    /// the entry, or the sidecar could not be written.
    #[error("keyring")]
    Keyring(#[from] KeyringError),
    /// Returned by [`Applier::precheck`] only, never by [`Applier::apply`]: the
    /// applier would refuse this entry ([`Applied::Rejected`]) in the current state,
    /// so it is not worth a place in the log. Used for key retirements, which must
    /// never reach the log when they cannot apply.
    #[error("would be refused: {0}")]
    WouldReject(Rejection),
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
#[non_exhaustive]
pub enum Applied {
    /// A writer registration (`0x03`).
    Registration(RegistrationOutcome),
    /// A bootstrap (`0x04`) installed the first storage and raft keys.
    Bootstrapped {
        /// The new active storage key.
        storage_key_id: u32,
        /// The new active raft key.
        raft_key_id: u32,
    },
    /// A rotation (`0x05`) installed a key and made it active for its purpose. Older
    /// keys stay loaded, so what they sealed still opens.
    Rotated {
        /// The purpose of the new key.
        purpose: Purpose,
        /// The new active key.
        key_id: u32,
    },
    /// A key-installing entry the sidecar already reflects: its registry rows were
    /// re-applied, nothing else changed.
    Replayed {
        /// The entry's opcode.
        opcode: u8,
    },
    /// An envelope switch (`0x05`, subtag `0x02` or `0x03`) turned an envelope on.
    EnvelopeEnabled {
        /// Which envelope.
        switch: EnvelopeSwitch,
        /// The Raft envelope cutover index now in force (0: none).
        raft_cutover_index: u64,
    },
    /// A key retirement (`0x05`, subtag `0x04`) removed a storage key from the
    /// keyring and the sidecar ([`KeyRetirement`]).
    Retired {
        /// The removed key.
        key_id: u32,
    },
    /// A deterministic refusal: nothing changed, every replica refuses the same way,
    /// and the entry counts as applied.
    Rejected {
        /// Why.
        reason: Rejection,
    },
}

/// The rotation family's envelope switches, sealkv's use of two of the subtags the
/// family reserves (elastickv's decoder refuses them, so a mixed cluster halts on
/// them rather than diverging).
///
/// ```text
/// payload (after the 0x05 opcode), exactly 2 bytes:
/// +---------+--------+
/// | version | subtag |   version 01; subtag 02 storage envelope, 03 raft envelope
/// +---------+--------+
/// ```
///
/// * **storage**: from this entry on, every user value the state machine writes is
///   sealed in a storage envelope.
/// * **raft**: this entry's index becomes the Raft envelope cutover: every KV entry
///   after it must carry its payload in a raft envelope.
///
/// Both are one-way: there is no switch back to cleartext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvelopeSwitch {
    /// Turn the storage envelope on.
    Storage,
    /// Turn the Raft envelope on.
    Raft,
}

impl EnvelopeSwitch {
    /// The switch's payload version.
    pub const VERSION: u8 = 1;
    /// Subtag of the storage envelope switch.
    pub const SUBTAG_STORAGE: u8 = 0x02;
    /// Subtag of the Raft envelope switch.
    pub const SUBTAG_RAFT: u8 = 0x03;

    /// The switch's subtag.
    pub fn subtag(self) -> u8 {
        match self {
            EnvelopeSwitch::Storage => Self::SUBTAG_STORAGE,
            EnvelopeSwitch::Raft => Self::SUBTAG_RAFT,
        }
    }

    /// The payload after the `0x05` opcode.
    pub fn encode(self) -> [u8; 2] {
        [Self::VERSION, self.subtag()]
    }

    /// Recognises an envelope switch in a `0x05` payload: `Ok(None)` when the
    /// payload is not one (it is then decoded as a [`RotationPayload`]).
    ///
    /// # Errors
    /// [`sealkv_fsmwire::Error::Malformed`] when a switch carries trailing bytes.
    pub fn decode(payload: &[u8]) -> std::result::Result<Option<Self>, sealkv_fsmwire::Error> {
        let switch = match payload {
            [Self::VERSION, Self::SUBTAG_STORAGE, ..] => EnvelopeSwitch::Storage,
            [Self::VERSION, Self::SUBTAG_RAFT, ..] => EnvelopeSwitch::Raft,
            _ => return Ok(None),
        };
        if payload.len() != 2 {
            return Err(sealkv_fsmwire::Error::Malformed {
                payload: "envelope switch",
                reason: format!("{} trailing bytes", payload.len() - 2),
            });
        }
        Ok(Some(switch))
    }
}

impl std::fmt::Display for EnvelopeSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvelopeSwitch::Storage => "storage",
            EnvelopeSwitch::Raft => "raft",
        })
    }
}

/// Why a key-installing entry was refused (see [`Applied::Rejected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// A bootstrap arrived when keys are already active.
    #[error("encryption is already bootstrapped")]
    AlreadyBootstrapped,
    /// A rotation arrived before any bootstrap.
    #[error("encryption is not bootstrapped")]
    NotBootstrapped,
    /// The entry installs key id 0, which means "none".
    #[error("{purpose} key id 0 is reserved")]
    ReservedKeyId {
        /// The purpose of the key.
        purpose: Purpose,
    },
    /// A bootstrap gives the storage and raft keys the same id.
    #[error("storage and raft keys share id {key_id}")]
    SameKeyIds {
        /// The shared id.
        key_id: u32,
    },
    /// A rotation installs a key id that is already loaded.
    #[error("key id {key_id} is already in use")]
    KeyIdInUse {
        /// The key id.
        key_id: u32,
    },
    /// A rotation installs a key id below a loaded one. Every rotation takes an id
    /// above every id in use, and a retired key's id is always below the active key
    /// of its purpose (which replaced it and is never retired), so this refusal
    /// keeps a retired id from being issued again.
    #[error("key id {key_id} is not above loaded key {above}")]
    KeyIdNotAbove {
        /// The key id.
        key_id: u32,
        /// The loaded key above it.
        above: u32,
    },
    /// A rotation's proposer row registers another key than the one it installs.
    #[error("proposer row registers key {row_key_id}, not the new key {key_id}")]
    ProposerKeyMismatch {
        /// The key the rotation installs.
        key_id: u32,
        /// The key the proposer row names.
        row_key_id: u32,
    },
    /// The entry's DEK has the bytes of a DEK already loaded (or of the entry's
    /// other DEK): two key ids would share one AES key, and so its nonces.
    #[error("the DEK of key {key_id} has the same bytes as key {same_as}")]
    DuplicateKey {
        /// The key the entry installs.
        key_id: u32,
        /// The key with the same bytes.
        same_as: u32,
    },
    /// A retirement names a key id that is not loaded (never issued, retired
    /// already, or 0).
    #[error("key {key_id} is not a loaded key")]
    UnknownKey {
        /// The key id.
        key_id: u32,
    },
    /// A retirement names the active key of its purpose.
    #[error("key {key_id} is the active {purpose} key")]
    ActiveKey {
        /// The key id.
        key_id: u32,
        /// Its purpose.
        purpose: Purpose,
    },
    /// A retirement names a raft-purpose key: Raft log entries sealed under it may
    /// still be read (replayed, sent to a follower), and retiring raft keys is not
    /// built.
    #[error("key {key_id} is a raft key; only storage keys can be retired")]
    RaftKey {
        /// The key id.
        key_id: u32,
    },
    /// The sidecar is already past this entry and does not hold its keys: the entry
    /// was refused when it was first applied, and a replay refuses it again.
    #[error("refused when first applied (sidecar is at index {sidecar_index})")]
    Superseded {
        /// The sidecar's applied index.
        sidecar_index: u64,
    },
}

/// Applies encryption entries to a writer registry and, when built with a keyring,
/// installs the keys they carry.
///
/// Build it once at startup from the registry glue and hand it to the state machine.
pub struct Applier {
    registry: Arc<dyn WriterRegistryStore>,
    keyring: Option<Arc<Keyring>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Applier");
        match &self.keyring {
            Some(keyring) => d.field("keyring", keyring),
            None => d.field("kek", &"not configured"),
        };
        d.finish_non_exhaustive()
    }
}

impl Applier {
    /// An applier over `registry`, without a KEK: registrations apply, bootstrap and
    /// rotation fail with [`ApplyError::KekNotConfigured`].
    pub fn new(registry: Arc<dyn WriterRegistryStore>) -> Applier {
        Applier {
            registry,
            keyring: None,
        }
    }

    /// An applier over `registry` that installs keys into `keyring` (see the module
    /// docs). Share the same keyring with the paths that seal and open.
    pub fn with_keyring(registry: Arc<dyn WriterRegistryStore>, keyring: Arc<Keyring>) -> Applier {
        Applier {
            registry,
            keyring: Some(keyring),
        }
    }

    /// The registry this applier writes to.
    pub fn registry(&self) -> &dyn WriterRegistryStore {
        self.registry.as_ref()
    }

    /// The keyring keys are installed into, if any.
    pub fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }

    /// Applies the entry with `opcode` and `payload` (the entry data after the opcode
    /// byte) committed at Raft `index`.
    ///
    /// A key-family entry (`0x04`, `0x05`) that is refused still moves the
    /// sidecar's `raft_applied_index` to its index, so that the sidecar reflects
    /// every key-family entry applied before it: the node's startup refuses a
    /// sidecar that is behind such an entry in the Raft log.
    ///
    /// # Errors
    /// Any [`ApplyError`]; the caller must halt and must not mark the entry applied.
    pub fn apply(&self, index: u64, opcode: u8, payload: &[u8]) -> Result<Applied> {
        let applied = self.dispatch(index, opcode, payload)?;
        if let (Applied::Rejected { .. }, Some(keyring)) = (&applied, &self.keyring) {
            keyring.note_applied(index)?;
        }
        Ok(applied)
    }

    /// Checks, without applying it, an entry a node is about to propose: it must
    /// decode as [`apply`](Self::apply) decodes it, and the writer-registry rows it
    /// carries must follow the registration rules against the rows applied so far
    /// (no rollback, no collision). What every replica would halt on is refused
    /// before it reaches the log; a refusal the applier answers deterministically
    /// (a key id in use, say) is left to the applier.
    ///
    /// # Errors
    /// The [`ApplyError`] applying it now would halt with.
    pub fn precheck(&self, opcode: u8, payload: &[u8]) -> Result<()> {
        let decode_err = |source| ApplyError::Decode { opcode, source };
        let rows = match opcode {
            OP_REGISTRATION => vec![RegistrationPayload::decode(payload).map_err(decode_err)?],
            OP_BOOTSTRAP => {
                let boot = BootstrapPayload::decode(payload).map_err(decode_err)?;
                if self.keyring.as_ref().is_some_and(|k| k.is_bootstrapped()) {
                    return Ok(());
                }
                boot.batch_registry
            }
            OP_ROTATION => {
                if EnvelopeSwitch::decode(payload)
                    .map_err(decode_err)?
                    .is_some()
                {
                    return Ok(());
                }
                if let Some(retire) = KeyRetirement::decode(payload).map_err(decode_err)? {
                    let Some(keyring) = &self.keyring else {
                        return Err(ApplyError::KekNotConfigured { opcode });
                    };
                    return match retire_refusal(keyring, retire.key_id) {
                        Some(reason) => Err(ApplyError::WouldReject(reason)),
                        None => Ok(()),
                    };
                }
                let rot = RotationPayload::decode(payload).map_err(decode_err)?;
                vec![rot.proposer_registration]
            }
            other => return Err(ApplyError::UnsupportedOpcode(other)),
        };
        self.plan_rows(&rows, false).map(drop)
    }

    fn dispatch(&self, index: u64, opcode: u8, payload: &[u8]) -> Result<Applied> {
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
                if let Some(kind) = EnvelopeSwitch::decode(payload).map_err(decode_err)? {
                    return self.apply_envelope_switch(index, kind);
                }
                if let Some(retire) = KeyRetirement::decode(payload).map_err(decode_err)? {
                    return self.apply_retirement(index, retire);
                }
                let rot = RotationPayload::decode(payload).map_err(decode_err)?;
                self.apply_rotation(index, &rot)
            }
            other => Err(ApplyError::UnsupportedOpcode(other)),
        }
    }

    /// Applies one registration by the rules in the module docs. The row is durable
    /// before this returns. With a keyring, a row of this node at the epoch of its
    /// key lets that key seal ([`Keyring::mark_registered`]).
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
        if let Some(keyring) = &self.keyring {
            keyring.mark_registered(reg.dek_id, reg.full_node_id, reg.local_epoch);
        }
        Ok(outcome)
    }

    /// Applies a bootstrap entry (see the module docs).
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`] without a keyring; a collision or rollback in
    /// the batch; [`ApplyError::Keyring`] when the KEK does not unwrap a DEK or the
    /// sidecar cannot be written; [`ApplyError::Store`].
    pub fn apply_bootstrap(&self, index: u64, boot: &BootstrapPayload) -> Result<Applied> {
        let Some(keyring) = &self.keyring else {
            return Err(ApplyError::KekNotConfigured {
                opcode: OP_BOOTSTRAP,
            });
        };
        let installs = [
            (boot.storage_dek_id, boot.wrapped_storage.as_slice()),
            (boot.raft_dek_id, boot.wrapped_raft.as_slice()),
        ];
        if let Some(outcome) = self.replay(
            keyring,
            index,
            OP_BOOTSTRAP,
            &installs,
            &boot.batch_registry,
        )? {
            return Ok(outcome);
        }
        let reject = |reason| Ok(Applied::Rejected { reason });
        if keyring.is_bootstrapped() {
            return reject(Rejection::AlreadyBootstrapped);
        }
        for (purpose, key_id) in [
            (Purpose::Storage, boot.storage_dek_id),
            (Purpose::Raft, boot.raft_dek_id),
        ] {
            if key_id == 0 {
                return reject(Rejection::ReservedKeyId { purpose });
            }
        }
        if boot.storage_dek_id == boot.raft_dek_id {
            return reject(Rejection::SameKeyIds {
                key_id: boot.storage_dek_id,
            });
        }

        let rows = self.plan_rows(&boot.batch_registry, false)?;
        let node = keyring.node_id();
        let mut new: Vec<NewKey> = Vec::with_capacity(2);
        for (purpose, key_id, wrapped) in [
            (Purpose::Storage, boot.storage_dek_id, &boot.wrapped_storage),
            (Purpose::Raft, boot.raft_dek_id, &boot.wrapped_raft),
        ] {
            let dek = keyring.unwrap(key_id, wrapped)?;
            if let Some(same_as) = keyring.duplicate_of(&new, &dek) {
                return reject(Rejection::DuplicateKey { key_id, same_as });
            }
            new.push(NewKey {
                key_id,
                purpose,
                wrapped: wrapped.clone(),
                dek,
                local_epoch: rows.own_epoch(key_id, node).unwrap_or(0),
            });
        }
        self.commit(keyring, index, new, &rows)?;
        Ok(Applied::Bootstrapped {
            storage_key_id: boot.storage_dek_id,
            raft_key_id: boot.raft_dek_id,
        })
    }

    /// The keyring a rotation-family entry of sealkv's own at `index` (a switch, a
    /// retirement) applies to, or `Err(Applied::Replayed)` when the sidecar already
    /// reflects the entry (a replay after a crash between the sidecar and the
    /// applied index changes nothing).
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`] without a keyring.
    fn sidecar_entry(&self, index: u64) -> Result<std::result::Result<&Arc<Keyring>, Applied>> {
        let Some(keyring) = &self.keyring else {
            return Err(ApplyError::KekNotConfigured {
                opcode: OP_ROTATION,
            });
        };
        if keyring.sidecar_applied_index() >= index && keyring.has_sidecar() {
            return Ok(Err(Applied::Replayed {
                opcode: OP_ROTATION,
            }));
        }
        Ok(Ok(keyring))
    }

    /// Applies an envelope switch (see [`EnvelopeSwitch`]). Turning on an envelope
    /// that is already on keeps it as it is (the Raft cutover does not move).
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`] without a keyring (a node that cannot
    /// encrypt must not apply past the switch); [`ApplyError::Keyring`] when the
    /// sidecar cannot be written.
    pub fn apply_envelope_switch(&self, index: u64, switch: EnvelopeSwitch) -> Result<Applied> {
        let keyring = match self.sidecar_entry(index)? {
            Ok(keyring) => keyring,
            Err(replayed) => return Ok(replayed),
        };
        if !keyring.is_bootstrapped() {
            return Ok(Applied::Rejected {
                reason: Rejection::NotBootstrapped,
            });
        }
        let mut storage = keyring.storage_envelope_active();
        let mut cutover = keyring.raft_envelope_cutover_index();
        match switch {
            EnvelopeSwitch::Storage => storage = true,
            EnvelopeSwitch::Raft if cutover == 0 => cutover = index,
            EnvelopeSwitch::Raft => {}
        }
        keyring.set_envelopes(index, storage, cutover)?;
        Ok(Applied::EnvelopeEnabled {
            switch,
            raft_cutover_index: cutover,
        })
    }

    /// Applies a key retirement ([`KeyRetirement`]): removes the key from the
    /// keyring and the sidecar ([`Keyring::retire`]). Deterministic on every
    /// replica: the decision depends only on the key state, which every replica
    /// holds alike at the same index. Refused ([`Applied::Rejected`]) when the key
    /// is not loaded, is active, or is a raft key, and before bootstrap. A replay
    /// (the sidecar already reflects the entry's index) changes nothing.
    ///
    /// The writer-registry rows of the key stay: they record which epochs were
    /// used under it, and they keep its id above a later rotation's choice (a
    /// rotation takes an id above every id in the keyring and the registry), so a
    /// retired id is never issued again.
    ///
    /// # Errors
    /// [`ApplyError::KekNotConfigured`] without a keyring; [`ApplyError::Keyring`]
    /// when the sidecar cannot be written.
    pub fn apply_retirement(&self, index: u64, retire: KeyRetirement) -> Result<Applied> {
        let keyring = match self.sidecar_entry(index)? {
            Ok(keyring) => keyring,
            Err(replayed) => return Ok(replayed),
        };
        if let Some(reason) = retire_refusal(keyring, retire.key_id) {
            return Ok(Applied::Rejected { reason });
        }
        keyring.retire(index, retire.key_id)?;
        Ok(Applied::Retired {
            key_id: retire.key_id,
        })
    }

    /// Applies a rotation entry (see the module docs).
    ///
    /// # Errors
    /// As [`Applier::apply_bootstrap`].
    pub fn apply_rotation(&self, index: u64, rot: &RotationPayload) -> Result<Applied> {
        let Some(keyring) = &self.keyring else {
            return Err(ApplyError::KekNotConfigured {
                opcode: OP_ROTATION,
            });
        };
        match rot.subtag {
            RotationSubtag::RotateDek => {}
        }
        let rows = [rot.proposer_registration];
        let installs = [(rot.dek_id, rot.wrapped.as_slice())];
        if let Some(outcome) = self.replay(keyring, index, OP_ROTATION, &installs, &rows)? {
            return Ok(outcome);
        }
        let reject = |reason| Ok(Applied::Rejected { reason });
        if !keyring.is_bootstrapped() {
            return reject(Rejection::NotBootstrapped);
        }
        if rot.dek_id == 0 {
            return reject(Rejection::ReservedKeyId {
                purpose: rot.purpose,
            });
        }
        if keyring.contains_key(rot.dek_id) {
            return reject(Rejection::KeyIdInUse { key_id: rot.dek_id });
        }
        if let Some(above) = keyring
            .key_ids()
            .into_iter()
            .max()
            .filter(|&m| m > rot.dek_id)
        {
            return reject(Rejection::KeyIdNotAbove {
                key_id: rot.dek_id,
                above,
            });
        }
        if rot.proposer_registration.dek_id != rot.dek_id {
            return reject(Rejection::ProposerKeyMismatch {
                key_id: rot.dek_id,
                row_key_id: rot.proposer_registration.dek_id,
            });
        }

        let planned = self.plan_rows(&rows, false)?;
        let dek = keyring.unwrap(rot.dek_id, &rot.wrapped)?;
        if let Some(same_as) = keyring.duplicate_of(&[], &dek) {
            return reject(Rejection::DuplicateKey {
                key_id: rot.dek_id,
                same_as,
            });
        }
        let new = NewKey {
            key_id: rot.dek_id,
            purpose: rot.purpose,
            wrapped: rot.wrapped.clone(),
            dek,
            local_epoch: planned
                .own_epoch(rot.dek_id, keyring.node_id())
                .unwrap_or(0),
        };
        self.commit(keyring, index, vec![new], &planned)?;
        Ok(Applied::Rotated {
            purpose: rot.purpose,
            key_id: rot.dek_id,
        })
    }

    /// Step 1 of the module docs: `Some` when the sidecar already reflects `index`.
    fn replay(
        &self,
        keyring: &Keyring,
        index: u64,
        opcode: u8,
        installs: &[(u32, &[u8])],
        rows: &[RegistrationPayload],
    ) -> Result<Option<Applied>> {
        let Some(doc) = keyring.sidecar() else {
            return Ok(None);
        };
        if doc.raft_applied_index < index {
            return Ok(None);
        }
        if !installs
            .iter()
            .all(|&(key_id, wrapped)| holds(&doc, key_id, wrapped))
        {
            return Ok(Some(Applied::Rejected {
                reason: Rejection::Superseded {
                    sidecar_index: doc.raft_applied_index,
                },
            }));
        }
        let plan = self.plan_rows(rows, true)?;
        let writes = plan.writes();
        if !writes.is_empty() {
            self.registry.put_writers(&writes)?;
        }
        let node = keyring.node_id();
        for &(key_id, _) in installs {
            if let Some(epoch) = plan.own_epoch(key_id, node) {
                keyring.mark_registered(key_id, node, epoch);
            }
        }
        Ok(Some(Applied::Replayed { opcode }))
    }

    /// Steps 5 to 7 of the module docs.
    fn commit(&self, keyring: &Keyring, index: u64, new: Vec<NewKey>, rows: &Plan) -> Result<()> {
        let node = keyring.node_id();
        let marks: Vec<(u32, u16)> = new
            .iter()
            .filter_map(|k| {
                rows.own_epoch(k.key_id, node)
                    .map(|epoch| (k.key_id, epoch))
            })
            .collect();
        keyring.install(index, new)?;
        let writes = rows.writes();
        if !writes.is_empty() {
            self.registry.put_writers(&writes)?;
        }
        for (key_id, epoch) in marks {
            keyring.mark_registered(key_id, node, epoch);
        }
        Ok(())
    }

    /// Runs `rows` through the registration rules against the registry, in order,
    /// without writing. In a `replay`, a row of the same node at or below the
    /// recorded epoch is already applied, not a rollback.
    fn plan_rows(&self, rows: &[RegistrationPayload], replay: bool) -> Result<Plan> {
        let mut plan = Plan::default();
        for reg in rows {
            let key = WriterKey::for_node(reg.dek_id, reg.full_node_id);
            let existing = match plan.slots.get(&key) {
                Some(record) => Some(*record),
                None => self.registry.get_writer(key)?,
            };
            if let Some(row) = existing {
                plan.slots.insert(key, row);
                if replay
                    && row.full_node_id == reg.full_node_id
                    && reg.local_epoch <= row.last_seen_local_epoch
                {
                    continue;
                }
            }
            if let (_, Some(record)) = next_record(key, existing, reg)? {
                plan.slots.insert(key, record);
                plan.changed.insert(key);
            }
        }
        Ok(plan)
    }
}

/// The registry rows an entry leads to, computed before anything is written.
#[derive(Default)]
struct Plan {
    /// The resulting row of every slot the entry touches.
    slots: BTreeMap<WriterKey, WriterRecord>,
    /// The slots whose row the entry inserts or advances.
    changed: BTreeSet<WriterKey>,
}

impl Plan {
    /// The rows to write.
    fn writes(&self) -> Vec<(WriterKey, WriterRecord)> {
        self.changed
            .iter()
            .filter_map(|key| Some((*key, *self.slots.get(key)?)))
            .collect()
    }

    /// This node's epoch under `key_id` after the entry, when its slot is touched
    /// and holds this node.
    fn own_epoch(&self, key_id: u32, node: u64) -> Option<u16> {
        self.slots
            .get(&WriterKey::for_node(key_id, node))
            .filter(|record| record.full_node_id == node)
            .map(|record| record.last_seen_local_epoch)
    }
}

/// Why `keyring` refuses to retire `key_id`, or `None` when it may.
fn retire_refusal(keyring: &Keyring, key_id: u32) -> Option<Rejection> {
    if !keyring.is_bootstrapped() {
        return Some(Rejection::NotBootstrapped);
    }
    let Some(purpose) = keyring.purpose_of(key_id) else {
        return Some(Rejection::UnknownKey { key_id });
    };
    if keyring.active_key_id(purpose) == Some(key_id) {
        return Some(Rejection::ActiveKey { key_id, purpose });
    }
    if purpose == Purpose::Raft {
        return Some(Rejection::RaftKey { key_id });
    }
    None
}

/// Whether the sidecar holds `key_id` with exactly these wrapped bytes.
fn holds(doc: &Sidecar, key_id: u32, wrapped: &[u8]) -> bool {
    doc.key(key_id)
        .and_then(|k| k.wrapped.as_deref())
        .is_some_and(|w| w == wrapped)
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

//! Encryption in the node: its configuration, the startup guards of DESIGN.md §8,
//! the entries of the encryption control plane, and the task that bootstraps a
//! fresh encrypted cluster and registers this node's epochs.
//!
//! # Startup
//!
//! [`open_keyring`] runs after the store and the registry glue are open, before the
//! applier is built; [`check_sidecar_against_log`] runs once the Raft log is open,
//! before the driver starts. Each refusal is its own [`GuardError`] variant whose
//! message names the flag or file to fix.
//!
//! # Registration at startup
//!
//! [`sealkv_encryption::keyring::Keyring::open`] raised the epoch of every active key
//! and made the sidecar durable; [`open_keyring`] then checked that each new epoch is
//! above the writer registry's record for this node. The node may then seal under
//! those epochs at once (the entries it replays need it) and proposes their
//! registration through Raft as soon as a leader is known; `NONCE-SAFETY.md` gives
//! the argument.
//!
//! # The encryption task
//!
//! [`maintain`] runs beside the listeners. Every half second it proposes what is
//! missing, in order: this node's pending registrations; on the leader of a cluster
//! with encryption enabled that holds no user data yet, the bootstrap (two fresh
//! DEKs wrapped under the KEK, a registration row for every voter and learner),
//! then the storage and the Raft envelope switches, back to back. Writes are
//! refused until both envelopes are on, so a fresh encrypted cluster never stores a
//! user value in cleartext, in the store or in the Raft log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft::{GetEntriesContext, Storage as _};
use sealkv_encryption::WriterRegistryStore;
use sealkv_encryption::applier::EnvelopeSwitch;
use sealkv_encryption::durable::DurableError;
use sealkv_encryption::envelope::Dek;
use sealkv_encryption::kek::{KekProvider, wrap_dek};
use sealkv_encryption::keyring::{Keyring, KeyringError};
use sealkv_encryption::registry::WriterKey;
use sealkv_encryption::sidecar::sidecar_path;
use sealkv_fsmwire::{
    BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, OP_ROTATION, Purpose, RegistrationPayload,
    RotationPayload, RotationSubtag,
};
use sealkv_store::RaftLog;

use crate::consensus::transport::Transport;
use crate::consensus::{ProposeError, RaftHandle, Role};

/// How a node is configured for encryption.
#[derive(Clone, Default)]
pub struct EncryptionConfig {
    /// `--encryption-enabled`.
    pub enabled: bool,
    /// Where the KEK comes from (`--kek-file`, or `SEALKV_KEK_BASE64`).
    pub kek: Option<Arc<dyn KekProvider>>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("enabled", &self.enabled)
            .field("kek", &self.kek.as_ref().map(|k| k.kind()))
            .finish()
    }
}

/// A startup refusal (DESIGN.md §8). Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The sidecar exists, so this node has encrypted data, but encryption is not
    /// enabled: running would silently downgrade to cleartext.
    #[error(
        "{} exists but encryption is not enabled: start with --encryption-enabled and the \
         KEK (--kek-file or SEALKV_KEK_BASE64); sealkv does not run an encrypted node in cleartext",
        path.display()
    )]
    SidecarWithoutEncryption {
        /// The sidecar.
        path: PathBuf,
    },
    /// The store holds the cluster's encryption state and encryption is not
    /// enabled: the node could not read its values nor apply the next key entry.
    #[error(
        "the store in {} holds the cluster's encryption keys but encryption is not enabled: \
         start with --encryption-enabled and the KEK (--kek-file or SEALKV_KEK_BASE64)",
        data_dir.display()
    )]
    KeyStateWithoutEncryption {
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The sidecar is missing although this node sealed under the cluster's keys.
    #[error(
        "{} is missing, but this node sealed under key {key_id} up to epoch {epoch}: a new \
         sidecar would reuse its nonces. Restore the sidecar that goes with this data dir, or \
         replace the node (`sealkv cluster remove-node`, then an empty data dir under a new \
         id with --join and `sealkv cluster add-node`)",
        path.display()
    )]
    SidecarMissing {
        /// The sidecar.
        path: PathBuf,
        /// A key this node is registered under.
        key_id: u32,
        /// Its last registered epoch.
        epoch: u16,
    },
    /// Encryption is enabled and no KEK is configured.
    #[error(
        "encryption is enabled but no KEK is configured: pass --kek-file PATH or set SEALKV_KEK_BASE64"
    )]
    NoKek,
    /// The KEK cannot be loaded.
    #[error("load the KEK from the {kind} provider (--kek-file or SEALKV_KEK_BASE64)")]
    KekUnavailable {
        /// The provider kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: KeyringError,
    },
    /// The KEK does not unwrap a key of the sidecar.
    #[error(
        "the KEK ({kind}) does not unwrap key {key_id} of {}: pass the KEK this cluster was \
         bootstrapped with (--kek-file or SEALKV_KEK_BASE64)",
        path.display()
    )]
    KekDoesNotUnwrap {
        /// The provider kind.
        kind: &'static str,
        /// The key.
        key_id: u32,
        /// The sidecar.
        path: PathBuf,
    },
    /// An active key's local epoch reached 0xFFFF: another process load would reuse
    /// nonces.
    #[error(
        "the local epoch of active key {key_id} in {} is exhausted (0xffff): rotate the key \
         from another node (sealkv encryption rotate-dek), then start this one",
        path.display()
    )]
    EpochExhausted {
        /// The key.
        key_id: u32,
        /// The sidecar.
        path: PathBuf,
    },
    /// The sidecar's directory cannot be fsynced, so a sidecar write is not durable.
    #[error(
        "the sidecar directory {} cannot be fsynced: put --data-dir on a filesystem that \
         supports directory fsync",
        dir.display()
    )]
    SidecarDirNotDurable {
        /// The directory.
        dir: PathBuf,
        /// The failed step.
        #[source]
        source: DurableError,
    },
    /// The Raft log applied a key-family entry the sidecar does not reflect: the
    /// sidecar was restored from an older copy or lost.
    #[error(
        "{} is at raft index {sidecar_index} but the state machine applied an encryption \
         entry (opcode {opcode:#04x}) at index {entry_index}: the sidecar is older than the \
         data; restore the sidecar that goes with this data dir, or rebuild the node from \
         the cluster",
        path.display()
    )]
    SidecarBehindLog {
        /// The sidecar.
        path: PathBuf,
        /// Its applied index.
        sidecar_index: u64,
        /// The entry it misses.
        entry_index: u64,
        /// That entry's opcode.
        opcode: u8,
    },
    /// The node's epoch is not above the writer registry's record: its sidecar went
    /// backwards (a restore), and sealing would repeat nonces.
    #[error(
        "local epoch {epoch} of key {key_id} is not above the writer registry's record \
         ({registered}) for this node: {} was restored from an older copy; rebuild this \
         node's data dir from the cluster",
        path.display()
    )]
    EpochNotAboveRegistry {
        /// The key.
        key_id: u32,
        /// The epoch this load would use.
        epoch: u16,
        /// The registry's last-seen epoch.
        registered: u16,
        /// The sidecar.
        path: PathBuf,
    },
    /// Another node owns this node's low 16 id bits under a key.
    #[error(
        "node id {node_id:#x} shares its low 16 bits with node {registered:#x}, registered \
         under key {key_id}: give this node an id with different low 16 bits (--id)"
    )]
    NodeIdCollision {
        /// This node.
        node_id: u64,
        /// The registered owner.
        registered: u64,
        /// The key.
        key_id: u32,
    },
    /// Any other keyring failure (an unreadable sidecar, a failed write).
    #[error("open the key sidecar")]
    Keyring(#[source] KeyringError),
    /// The Raft log could not be read for the sidecar check.
    #[error("read the raft log to check the sidecar")]
    RaftLog(#[source] raft::Error),
}

/// The keyring of an encrypted node, and the registrations it must propose.
#[derive(Debug)]
pub struct OpenedKeyring {
    /// The keyring.
    pub keyring: Arc<Keyring>,
    /// (key, this node, epoch) for every active key: proposed once a leader is known.
    pub to_register: Vec<RegistrationPayload>,
    /// Set once `to_register` has been applied through Raft: until then the node
    /// takes no client writes, so nothing it seals under this load's epochs leaves
    /// it before the cluster accepted those epochs (NONCE-SAFETY.md §4).
    pub registered: Arc<AtomicBool>,
}

/// Runs the startup guards that need only the store: without encryption, refuses a
/// sidecar; with it, opens the keyring (raising and fsyncing its epochs) and checks
/// the new epochs against the writer registry.
///
/// # Errors
/// The [`GuardError`] of the check that failed.
pub fn open_keyring(
    config: &EncryptionConfig,
    data_dir: &Path,
    node_id: u64,
    registry: &dyn WriterRegistryStore,
    store_has_key_state: bool,
) -> Result<Option<OpenedKeyring>, GuardError> {
    let path = sidecar_path(data_dir);
    if !config.enabled {
        if path.exists() {
            return Err(GuardError::SidecarWithoutEncryption { path });
        }
        if store_has_key_state {
            return Err(GuardError::KeyStateWithoutEncryption {
                data_dir: data_dir.to_path_buf(),
            });
        }
        return Ok(None);
    }
    let kek = config.kek.clone().ok_or(GuardError::NoKek)?;
    let kind = kek.kind();
    // DESIGN.md §8 in one call; the raised epochs reach the disk only once every
    // other startup check has passed (`startup::run` commits them just before the
    // Raft driver starts).
    let started = Keyring::start(data_dir, node_id, kek, registry, store_has_key_state).map_err(
        |e| match e {
            KeyringError::KekDoesNotUnwrap { key_id, .. } => GuardError::KekDoesNotUnwrap {
                kind,
                key_id,
                path: path.clone(),
            },
            KeyringError::EpochExhausted { key_id } => GuardError::EpochExhausted {
                key_id,
                path: path.clone(),
            },
            KeyringError::SidecarDirNotDurable { dir, source } => {
                GuardError::SidecarDirNotDurable { dir, source }
            }
            e @ KeyringError::KekUnavailable { .. } => {
                GuardError::KekUnavailable { kind, source: e }
            }
            KeyringError::SidecarMissing { key_id, epoch, .. } => GuardError::SidecarMissing {
                path: path.clone(),
                key_id,
                epoch,
            },
            KeyringError::EpochNotAboveRegistry {
                key_id,
                epoch,
                registered,
            } => GuardError::EpochNotAboveRegistry {
                key_id,
                epoch,
                registered,
                path: path.clone(),
            },
            KeyringError::NodeIdCollision {
                key_id,
                registered_full_node_id,
                ..
            } => GuardError::NodeIdCollision {
                node_id,
                registered: registered_full_node_id,
                key_id,
            },
            other => GuardError::Keyring(other),
        },
    )?;
    let (keyring, to_register) = (started.keyring, started.to_register);
    for warning in keyring.epoch_warnings() {
        tracing::warn!(
            key_id = warning.key_id,
            local_epoch = warning.local_epoch,
            "the local epoch of an active key is close to 0xffff, where this node will refuse \
             to start: rotate the key (sealkv encryption rotate-dek)"
        );
    }
    let registered = Arc::new(AtomicBool::new(to_register.is_empty()));
    Ok(Some(OpenedKeyring {
        keyring: Arc::new(keyring),
        to_register,
        registered,
    }))
}

/// Refuses a sidecar that is behind a key-family entry (`0x04`, `0x05`) the state
/// machine applied: scans the entries still in the log after the sidecar's applied
/// index up to `applied_index`.
///
/// # Errors
/// [`GuardError::SidecarBehindLog`], or [`GuardError::RaftLog`] when the log cannot
/// be read.
pub fn check_sidecar_against_log(
    keyring: &Keyring,
    log: &RaftLog,
    applied_index: u64,
) -> Result<(), GuardError> {
    let sidecar_index = keyring.sidecar_applied_index();
    let low = (sidecar_index + 1).max(log.first_index());
    let high = applied_index.min(log.last_index());
    if low > high {
        return Ok(());
    }
    let entries = log
        .entries(low, high + 1, None, GetEntriesContext::empty(false))
        .map_err(GuardError::RaftLog)?;
    for entry in entries {
        if let Some(&opcode) = entry.get_data().first()
            && (opcode == OP_BOOTSTRAP || opcode == OP_ROTATION)
        {
            return Err(GuardError::SidecarBehindLog {
                path: keyring.sidecar_path().to_path_buf(),
                sidecar_index,
                entry_index: entry.index,
                opcode,
            });
        }
    }
    Ok(())
}

/// Why an encryption operation could not be proposed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Encryption is not enabled on this node, or no KEK is loaded.
    #[error(
        "precondition failed: encryption is not enabled on this node or no KEK is loaded \
         (start it with --encryption-enabled and --kek-file)"
    )]
    NotEnabled,
    /// A key could not be generated or wrapped.
    #[error("generate or wrap a key")]
    Key(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A payload could not be encoded.
    #[error("encode the entry")]
    Encode(#[source] sealkv_fsmwire::Error),
    /// Raft refused or lost the proposal.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// This node stopped leading while the operation waited for its turn.
    #[error("this node is no longer the leader; retry")]
    NotLeader,
    /// The operation would break a rule of the key protocol; nothing was proposed.
    #[error("refused: {0}")]
    Refused(String),
    /// The operation could not be forwarded to the leader, or the leader refused it.
    #[error("forward to the leader: {0}")]
    Forward(String),
}

fn entry(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(opcode);
    out.extend_from_slice(payload);
    out
}

/// A fresh DEK wrapped under the KEK.
fn new_wrapped_dek(kek: &dyn KekProvider) -> Result<Vec<u8>, ControlError> {
    let dek = Dek::generate().map_err(|e| ControlError::Key(Box::new(e)))?;
    let kek = kek.load().map_err(|e| ControlError::Key(Box::new(e)))?;
    let wrapped = wrap_dek(&kek, dek.as_bytes()).map_err(|e| ControlError::Key(Box::new(e)))?;
    Ok(wrapped.to_vec())
}

/// The `0x03` entry registering (key, node, epoch).
pub fn registration_entry(reg: &RegistrationPayload) -> Vec<u8> {
    entry(OP_REGISTRATION, &reg.encode())
}

/// A `0x04` bootstrap entry: storage key 1 and raft key 2, fresh and wrapped under
/// the KEK, and a registration at epoch 1 of both keys for every member.
///
/// # Errors
/// [`ControlError::Key`] or [`ControlError::Encode`].
pub fn bootstrap_entry(kek: &dyn KekProvider, members: &[u64]) -> Result<Vec<u8>, ControlError> {
    const STORAGE_KEY: u32 = 1;
    const RAFT_KEY: u32 = 2;
    let batch_registry = [STORAGE_KEY, RAFT_KEY]
        .into_iter()
        .flat_map(|dek_id| {
            members
                .iter()
                .map(move |&full_node_id| RegistrationPayload {
                    dek_id,
                    full_node_id,
                    local_epoch: 1,
                })
        })
        .collect();
    let payload = BootstrapPayload {
        storage_dek_id: STORAGE_KEY,
        wrapped_storage: new_wrapped_dek(kek)?,
        raft_dek_id: RAFT_KEY,
        wrapped_raft: new_wrapped_dek(kek)?,
        batch_registry,
    };
    Ok(entry(
        OP_BOOTSTRAP,
        &payload.encode().map_err(ControlError::Encode)?,
    ))
}

/// A `0x05` rotate-DEK entry proposed by the keyring's node: a fresh key `key_id`
/// of `purpose`, and the proposer registered for it at epoch 1.
///
/// # Errors
/// [`ControlError::Key`] or [`ControlError::Encode`].
pub fn rotation_entry(
    kek: &dyn KekProvider,
    keyring: &Keyring,
    key_id: u32,
    purpose: Purpose,
) -> Result<Vec<u8>, ControlError> {
    let payload = RotationPayload {
        subtag: RotationSubtag::RotateDek,
        dek_id: key_id,
        purpose,
        wrapped: new_wrapped_dek(kek)?,
        proposer_registration: RegistrationPayload {
            dek_id: key_id,
            full_node_id: keyring.node_id(),
            local_epoch: 1,
        },
    };
    Ok(entry(
        OP_ROTATION,
        &payload.encode().map_err(ControlError::Encode)?,
    ))
}

/// The `0x05` entry turning `switch` on.
pub fn switch_entry(switch: EnvelopeSwitch) -> Vec<u8> {
    entry(OP_ROTATION, &switch.encode())
}

/// Why a node may not join an encrypted cluster.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A registered writer owns the id's low 16 bits.
    #[error(
        "node id {id} shares its low 16 bits with writer {owner} registered under key \
         {key_id}: nonces could repeat; give the new node an id with other low 16 bits"
    )]
    Registered {
        /// The joining id.
        id: u64,
        /// The registered writer.
        owner: u64,
        /// A key it is registered under.
        key_id: u32,
    },
    /// A current member has the same low 16 bits.
    #[error(
        "node id {id} shares its low 16 bits with member {other}: give the new node an id \
         with other low 16 bits"
    )]
    Member {
        /// The joining id.
        id: u64,
        /// The member.
        other: u64,
    },
    /// The registry could not be read.
    #[error("read the writer registry: {0}")]
    Registry(String),
    /// The registration could not be proposed.
    #[error("register the new node")]
    Register(#[source] ControlError),
}

/// What the encryption operations and the encryption task work with.
///
/// Every operation that proposes control-plane entries (bootstrap, rotation,
/// envelope switches, registrations, the admission of a new node) runs on the
/// leader only, one at a time, after a Raft ReadIndex barrier: its choices (key
/// ids, the rows it may write) are made from every entry committed before it, and
/// no two operations interleave their entries. A follower forwards the request to
/// the leader's admin endpoint ([`Control::leader_admin`]).
#[derive(Clone)]
pub struct Control {
    /// The Raft driver.
    pub raft: RaftHandle,
    /// The keyring.
    pub keyring: Arc<Keyring>,
    /// The KEK.
    pub kek: Arc<dyn KekProvider>,
    /// The writer registry (for status).
    pub registry: Arc<dyn WriterRegistryStore>,
    /// Whether the store holds any user key (a cluster with data is moved to
    /// encryption by an operator, not automatically).
    pub has_user_data: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Where the other nodes' admin endpoints are (their transport hellos).
    pub transport: Arc<Transport>,
    /// Held for the whole of one operation on the leader.
    pub serial: Arc<tokio::sync::Mutex<()>>,
    /// Set once this load's epochs passed the check against the cluster's record
    /// ([`Control::check_record`]); the Raft driver applies nothing before (but
    /// when it leads, or is alone).
    pub apply_gate: Arc<AtomicBool>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("keyring", &self.keyring)
            .field("kek", &self.kek.kind())
            .finish_non_exhaustive()
    }
}

/// The (dek, node) rows a registration may not be proposed over: the reason, or
/// `None` when the row is new or below the registration's epoch.
fn row_refusal(
    registry: &dyn WriterRegistryStore,
    reg: &RegistrationPayload,
) -> Result<Option<String>, ControlError> {
    let key = WriterKey::for_node(reg.dek_id, reg.full_node_id);
    let row = registry
        .get_writer(key)
        .map_err(|e| ControlError::Key(Box::new(e)))?;
    Ok(row.and_then(|row| {
        if row.full_node_id != reg.full_node_id {
            Some(format!(
                "node {:#x} shares its low 16 bits with node {:#x}, registered under key {}",
                reg.full_node_id, row.full_node_id, reg.dek_id
            ))
        } else if reg.local_epoch < row.last_seen_local_epoch {
            Some(format!(
                "node {:#x} is registered under key {} at epoch {}, above {}",
                reg.full_node_id, reg.dek_id, row.last_seen_local_epoch, reg.local_epoch
            ))
        } else {
            None
        }
    }))
}

impl Control {
    /// Proposes `data` and waits until this node applied it.
    async fn propose(&self, data: Vec<u8>) -> Result<sealkv_kv::Outcome, ControlError> {
        Ok(self.raft.propose(data).await?)
    }

    /// The admin address of the leader, when another node leads: where a
    /// follower forwards an operation. `Ok(None)` when this node leads.
    ///
    /// # Errors
    /// [`ControlError::Propose`] with `NoLeader` when no leader is known or its
    /// address is not yet.
    pub fn leader_admin(&self) -> Result<Option<String>, ControlError> {
        let status = self.raft.status();
        match status.leader_id {
            Some(id) if id == status.id => Ok(None),
            Some(id) => self
                .transport
                .admin_addr_of(id)
                .map(Some)
                .ok_or(ControlError::Propose(ProposeError::NoLeader)),
            None => Err(ControlError::Propose(ProposeError::NoLeader)),
        }
    }

    /// Takes the operation lock on the leader and waits until this node applied
    /// everything committed before: what the operation reads is then the
    /// cluster's latest state.
    async fn lead(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ControlError> {
        let guard = Arc::clone(&self.serial).lock_owned().await;
        if self.leader_admin()?.is_some() {
            return Err(ControlError::NotLeader);
        }
        self.raft.linearizable_barrier().await?;
        Ok(guard)
    }

    /// Before `id` joins: refuses an id whose low 16 bits belong to a registered
    /// writer (any key, any full id: a removed node's id included, since its
    /// epochs are on record) or to another member, so two nodes can never share a
    /// nonce prefix; then proposes the registration of `id` at epoch 0 under every
    /// active key, which is the epoch the node gets when it installs those keys
    /// from the log (DESIGN.md §5: a node added later is registered with its
    /// membership change). A retry after the registration applied and the
    /// membership change did not finds `id`'s own rows and goes on.
    ///
    /// # Errors
    /// [`AdmitError`].
    pub async fn admit(&self, id: u64) -> Result<(), AdmitError> {
        let _serial = self.lead().await.map_err(AdmitError::Register)?;
        let status = self.raft.status();
        let node16 = (id & 0xFFFF) as u16;
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| AdmitError::Registry(e.to_string()))?;
        if let Some((key, row)) = rows
            .iter()
            .find(|(key, row)| key.node_id16 == node16 && row.full_node_id != id)
        {
            return Err(AdmitError::Registered {
                id,
                owner: row.full_node_id,
                key_id: key.dek_id,
            });
        }
        let members = status.voters.iter().chain(&status.learners);
        if let Some(&other) = members
            .into_iter()
            .find(|&&m| m != id && m & 0xFFFF == id & 0xFFFF)
        {
            return Err(AdmitError::Member { id, other });
        }
        for purpose in [Purpose::Storage, Purpose::Raft] {
            let Some(dek_id) = self.keyring.active_key_id(purpose) else {
                continue;
            };
            if rows
                .iter()
                .any(|(key, row)| key.dek_id == dek_id && row.full_node_id == id)
            {
                continue;
            }
            let reg = RegistrationPayload {
                dek_id,
                full_node_id: id,
                local_epoch: 0,
            };
            self.propose(registration_entry(&reg))
                .await
                .map_err(AdmitError::Register)?;
        }
        Ok(())
    }

    /// Proposes the bootstrap with every current member registered.
    ///
    /// # Errors
    /// [`ControlError`]; [`ControlError::Refused`] when the keys exist already.
    pub async fn bootstrap(&self) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        if self.keyring.is_bootstrapped() {
            return Err(ControlError::Refused(
                "the cluster's keys are bootstrapped already".to_string(),
            ));
        }
        let status = self.raft.status();
        let mut members = status.voters.clone();
        members.extend(&status.learners);
        if let Some((a, b)) = low16_collision(&members) {
            return Err(ControlError::Refused(format!(
                "members {a} and {b} share their low 16 bits, so they would build the same \
                 nonces: replace one of them under another id before bootstrapping"
            )));
        }
        self.propose(bootstrap_entry(self.kek.as_ref(), &members)?)
            .await
    }

    /// Proposes a rotation of the `purpose` key to a new key whose id is above
    /// every id the keyring or the writer registry has seen. Every other member is
    /// registered for the new key at epoch 0 (the epoch it installs the key at)
    /// first, so that every replica is registered before it seals under the key;
    /// the rotation entry registers this node.
    ///
    /// # Errors
    /// [`ControlError`].
    pub async fn rotate(&self, purpose: Purpose) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        if !self.keyring.is_bootstrapped() {
            return Err(ControlError::Refused(
                "the cluster has no keys to rotate: bootstrap first (sealkv encryption bootstrap)"
                    .to_string(),
            ));
        }
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| ControlError::Key(Box::new(e)))?;
        let key_id = self
            .keyring
            .key_ids()
            .into_iter()
            .chain(rows.iter().map(|(key, _)| key.dek_id))
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| ControlError::Refused("no key id is left".to_string()))?;
        let status = self.raft.status();
        let me = self.keyring.node_id();
        for &member in status.voters.iter().chain(&status.learners) {
            if member == me {
                continue;
            }
            let reg = RegistrationPayload {
                dek_id: key_id,
                full_node_id: member,
                local_epoch: 0,
            };
            if let Some(reason) = row_refusal(self.registry.as_ref(), &reg)? {
                return Err(ControlError::Refused(reason));
            }
            self.propose(registration_entry(&reg)).await?;
        }
        self.propose(rotation_entry(
            self.kek.as_ref(),
            &self.keyring,
            key_id,
            purpose,
        )?)
        .await
    }

    /// Proposes turning `switch` on.
    ///
    /// # Errors
    /// [`ControlError`].
    pub async fn enable(&self, switch: EnvelopeSwitch) -> Result<sealkv_kv::Outcome, ControlError> {
        let _serial = self.lead().await?;
        self.propose(switch_entry(switch)).await
    }

    /// Proposes `registrations` (a node's own, forwarded to the leader, or this
    /// node's): each must name its node's own row at an epoch not below the
    /// registry's record. A registration at the recorded epoch is proposed again
    /// and applies as unchanged. Returns how many applied.
    ///
    /// # Errors
    /// [`ControlError::Refused`] for a registration below the record or over
    /// another node's row; any other [`ControlError`].
    pub async fn register(
        &self,
        registrations: &[RegistrationPayload],
    ) -> Result<usize, ControlError> {
        let _serial = self.lead().await?;
        for reg in registrations {
            if let Some(reason) = row_refusal(self.registry.as_ref(), reg)? {
                return Err(ControlError::Refused(reason));
            }
        }
        for reg in registrations {
            self.propose(registration_entry(reg)).await?;
        }
        Ok(registrations.len())
    }

    /// The cluster's record of node `id` (key id, last epoch), read on the leader
    /// after a ReadIndex barrier.
    ///
    /// # Errors
    /// [`ControlError::NotLeader`] elsewhere; [`ControlError::Propose`] when the
    /// barrier fails; [`ControlError::Key`] when the registry cannot be read.
    pub async fn record_of(&self, id: u64) -> Result<Vec<(u32, u16)>, ControlError> {
        if self.leader_admin()?.is_some() {
            return Err(ControlError::NotLeader);
        }
        self.raft.linearizable_barrier().await?;
        let rows = self
            .registry
            .list_writers()
            .map_err(|e| ControlError::Key(Box::new(e)))?;
        Ok(rows
            .into_iter()
            .filter(|(_, row)| row.full_node_id == id)
            .map(|(key, row)| (key.dek_id, row.last_seen_local_epoch))
            .collect())
    }

    /// Before this node applies anything: checks its epochs against the leader's
    /// record of it ([`Keyring::check_cluster_record`]). `Ok(true)` once checked
    /// (or when this node leads: the driver then applies without it), `Ok(false)`
    /// to try again later (no leader yet, the leader unreachable).
    ///
    /// # Errors
    /// The line to stop the node with: its data dir is an earlier copy or was
    /// wiped.
    pub async fn check_record(&self) -> Result<bool, String> {
        let admin = match self.leader_admin() {
            Ok(Some(admin)) => admin,
            Ok(None) => return Ok(true),
            Err(_) => return Ok(false),
        };
        let me = self.keyring.node_id();
        let answer =
            crate::admin_client::forward(&admin, &format!("/v1/encryption/writers/{me}"), None, me)
                .await;
        let rows: Vec<(u32, u16)> = match answer {
            Ok((200, json)) => json["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let dek = u32::try_from(r["dek_id"].as_u64()?).ok()?;
                    let last = u16::try_from(r["last_seen_local_epoch"].as_u64()?).ok()?;
                    Some((dek, last))
                })
                .collect(),
            Ok((code, json)) => {
                tracing::debug!(code, "check this node's epochs at the leader: {json}");
                return Ok(false);
            }
            Err(e) => {
                tracing::debug!("check this node's epochs at the leader: {e}");
                return Ok(false);
            }
        };
        match self.keyring.check_cluster_record(&rows) {
            Ok(()) => Ok(true),
            Err(e) => Err(format!(
                "node {me}: {e}. Replace the node: `sealkv cluster remove-node --id {me}`, then \
                 start an empty data dir under a new id with --join and `sealkv cluster add-node`"
            )),
        }
    }

    /// The registrations this node still needs: the ones left from startup and
    /// any key it is not yet registered for (after a rotation another node
    /// proposed).
    pub fn own_registrations(
        &self,
        from_startup: &[RegistrationPayload],
    ) -> Vec<RegistrationPayload> {
        let mut regs = from_startup.to_vec();
        for reg in self.keyring.pending_registrations() {
            if !regs.contains(&reg) {
                regs.push(reg);
            }
        }
        regs
    }

    /// Registers `registrations` through the leader: here when this node leads,
    /// else by the leader's admin endpoint.
    ///
    /// # Errors
    /// As [`register`](Self::register); [`ControlError::Forward`] when the leader
    /// cannot be reached or refuses.
    pub async fn register_through_leader(
        &self,
        registrations: &[RegistrationPayload],
    ) -> Result<usize, ControlError> {
        let Some(admin) = self.leader_admin()? else {
            return self.register(registrations).await;
        };
        let body = registrations_json(registrations);
        let (code, answer) = crate::admin_client::forward(
            &admin,
            "/v1/encryption/register-writer",
            Some(&body),
            self.keyring.node_id(),
        )
        .await
        .map_err(ControlError::Forward)?;
        if !(200..300).contains(&code) {
            let reason = answer["error"].as_str().unwrap_or("no reason given");
            return Err(ControlError::Forward(format!(
                "the leader at {admin} answered {code}: {reason}"
            )));
        }
        Ok(registrations.len())
    }
}

/// Two of `ids` whose low 16 bits are equal, if any: under one key they would
/// build the same nonces (DESIGN.md §5).
pub fn low16_collision(ids: &[u64]) -> Option<(u64, u64)> {
    ids.iter().enumerate().find_map(|(i, &a)| {
        ids.iter()
            .skip(i + 1)
            .find(|&&b| a & 0xFFFF == b & 0xFFFF && a != b)
            .map(|&b| (a, b))
    })
}

/// `{"registrations": [{"dek_id", "full_node_id", "local_epoch"}, ...]}`, the body
/// of a forwarded `POST /v1/encryption/register-writer`.
pub fn registrations_json(registrations: &[RegistrationPayload]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = registrations
        .iter()
        .map(|r| {
            serde_json::json!({
                "dek_id": r.dek_id,
                "full_node_id": r.full_node_id,
                "local_epoch": r.local_epoch,
            })
        })
        .collect();
    serde_json::json!({ "registrations": rows })
}

/// The encryption task (see the module docs): runs until `stop` resolves. Sets
/// `registered` once the startup registrations `to_register` are applied.
pub async fn maintain(
    control: Control,
    mut to_register: Vec<RegistrationPayload>,
    registered: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Before anything applies: this load's epochs against the cluster's record.
    let mut check = tokio::time::interval(Duration::from_millis(100));
    while !control.apply_gate.load(Ordering::Acquire) {
        tokio::select! {
            () = &mut stop => return,
            _ = check.tick() => {}
        }
        match control.check_record().await {
            Ok(true) => {
                tracing::info!("checked this node's key epochs against the cluster's record");
                control.apply_gate.store(true, Ordering::Release);
            }
            Ok(false) => {}
            Err(line) => {
                tracing::error!("{line}");
                control.raft.stop_with(line);
                return;
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let status = control.raft.status();
        if status.halted.is_some() || status.leader_id.is_none() {
            continue;
        }
        let regs = control.own_registrations(&to_register);
        if !regs.is_empty() {
            match control.register_through_leader(&regs).await {
                Ok(n) => {
                    tracing::info!(registrations = n, "registered this node's key epochs");
                    to_register.clear();
                }
                Err(e) => {
                    tracing::warn!(
                        "register this node's key epochs: {}",
                        crate::error_chain(&e)
                    );
                    continue;
                }
            }
        }
        registered.store(true, Ordering::Release);
        if status.role != Role::Leader {
            continue;
        }
        // The steps run back to back, each once the one before has applied.
        while let Some(step) = next_step(&control) {
            let result = match step {
                Step::Bootstrap => control.bootstrap().await,
                Step::Storage => control.enable(EnvelopeSwitch::Storage).await,
                Step::Raft => control.enable(EnvelopeSwitch::Raft).await,
            };
            match result {
                Ok(outcome) => tracing::info!(?outcome, "encryption: {step:?}"),
                Err(e) => {
                    tracing::warn!("encryption: {step:?}: {e}");
                    break;
                }
            }
        }
    }
}

/// What the leader still has to propose to turn encryption on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Bootstrap the keys (only on a cluster without user data).
    Bootstrap,
    /// Turn the storage envelope on.
    Storage,
    /// Turn the Raft envelope on.
    Raft,
}

fn next_step(control: &Control) -> Option<Step> {
    let keyring = &control.keyring;
    if !keyring.is_bootstrapped() {
        (!(control.has_user_data)()).then_some(Step::Bootstrap)
    } else if !keyring.storage_envelope_active() {
        Some(Step::Storage)
    } else if keyring.raft_envelope_cutover_index() == 0 {
        Some(Step::Raft)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::low16_collision;

    #[test]
    fn ids_that_share_their_low_16_bits_collide() {
        assert_eq!(low16_collision(&[1, 2, 3]), None);
        assert_eq!(low16_collision(&[1, 2, 0x1_0001]), Some((1, 0x1_0001)));
        assert_eq!(low16_collision(&[0x2_0005, 7, 0x5]), Some((0x2_0005, 5)));
        // The same id twice is one node, not a collision.
        assert_eq!(low16_collision(&[4, 4]), None);
    }
}

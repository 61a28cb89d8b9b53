//! The node's live key state: the sidecar document, the unwrapped DEKs and the nonce
//! state of each key, shared between the applier (which installs keys) and the
//! storage and Raft paths (which seal and open envelopes).
//!
//! # Nonces
//!
//! Every envelope sealed here carries a 12-byte nonce built from three parts, all
//! big-endian:
//!
//! ```text
//!  0            2               4                                12
//!  +------------+---------------+--------------------------------+
//!  | node_id16  |  local_epoch  |            counter             |
//!  |   u16 BE   |    u16 BE     |             u64 BE             |
//!  +------------+---------------+--------------------------------+
//! ```
//!
//! * `node_id16` is the low 16 bits of the node id. The writer registry holds one
//!   row per (DEK, node_id16) and halts on a second node claiming the same slot, so
//!   no two nodes share this prefix under one DEK.
//! * `local_epoch` counts process loads of this node under this DEK. [`Keyring::open`]
//!   raises it by one for every active key and makes the sidecar durable *before*
//!   anything is sealed, so two process loads never share an epoch; the registry
//!   (checked by [`Keyring::check_registry`]) catches a node restored from an old
//!   disk, whose sidecar epoch went backwards.
//! * `counter` starts at 0 at every load and is taken with an atomic increment; it
//!   is refused ([`KeyringError::NonceExhausted`]) rather than allowed to wrap.
//!
//! Which keys seal in a process load:
//!
//! * a key whose epoch [`Keyring::open`] raised seals once (key, node, epoch) is
//!   marked registered ([`Keyring::mark_registered`]): by the applier when its
//!   registry row is applied, or by the node after [`Keyring::check_registry`]
//!   found the epoch above the registry's record; until then sealing fails with
//!   [`KeyringError::NotRegistered`];
//! * a key installed by a committed entry in this load seals at once: it is new, so
//!   no earlier load sealed under it with this `node_id16`; its registration
//!   follows through Raft;
//! * a key whose epoch was not raised in this load (an inactive key after a
//!   restart) never seals again: an earlier load may have used that epoch.
//!
//! # Startup
//!
//! [`Keyring::open`] runs the checks of the startup path, in order: the sidecar's
//! directory can be fsynced; the sidecar loads; the KEK unwraps every key; no active
//! key's epoch has reached `0xFFFF`. Then it raises the epochs and writes the sidecar
//! durably. After opening the store, the node calls [`Keyring::check_registry`] and
//! proposes the registrations it returns before it encrypts.
//!
//! # Concurrency
//!
//! Seals and opens take a read lock and an atomic increment, so they run in
//! parallel. Installing keys writes the sidecar under a separate writer lock and
//! only takes the write lock to swap the new state in, so a sidecar fsync never
//! blocks a seal.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use sealkv_encryption::kek::EnvKekProvider;
//! use sealkv_encryption::keyring::{Keyring, KeyringError};
//! use sealkv_fsmwire::Purpose;
//!
//! let dir = tempfile::tempdir()?;
//! let kek = Arc::new(EnvKekProvider::from_base64(
//!     "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
//! )?);
//! let keyring = Keyring::open(dir.path(), 7, kek)?;
//! // No sidecar yet: encryption is not bootstrapped, and nothing seals.
//! assert!(!keyring.is_bootstrapped());
//! assert!(matches!(
//!     keyring.seal_raft(b"payload"),
//!     Err(KeyringError::NoActiveKey(Purpose::Raft))
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use sealkv_fsmwire::{Purpose, RegistrationPayload};

use crate::durable::{self, DurableError};
use crate::envelope::{AadMode, Dek, EnvelopeError, Keystore, NONCE_LEN};
use crate::kek::{KekError, KekProvider, unwrap_dek};
use crate::registry::WriterKey;
use crate::sidecar::{self, SIDECAR_DIR, Sidecar, SidecarError, SidecarKey};
use crate::store::{RegistryStoreError, WriterRegistryStore};

/// Length of the value header that prefixes the storage AAD context: flags (1) ‖
/// expire-at (u64 little-endian).
pub const VALUE_HEADER_LEN: usize = 9;

/// The local epoch no active key may have at startup: one more load would wrap.
pub const EPOCH_EXHAUSTED: u16 = 0xFFFF;

/// From this local epoch on, [`Keyring::epoch_warnings`] lists the key: it is time
/// to rotate it.
pub const EPOCH_WARNING_THRESHOLD: u16 = 0xFF00;

/// Unix permission bits of the sidecar directory when the keyring creates it.
pub const SIDECAR_DIR_MODE: u32 = 0o700;

/// Why the keyring could not open, install, seal or open. No message ever contains
/// key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The sidecar directory did not exist and could not be created.
    #[error("create sidecar directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The sidecar directory cannot be fsynced, so a sidecar write could not be made
    /// durable. Move the data directory to a filesystem that supports it.
    #[error("sidecar directory {} is not durable", dir.display())]
    SidecarDirNotDurable {
        /// The directory checked.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: DurableError,
    },
    /// The sidecar exists but could not be read or does not pass the loader rules.
    #[error("load sidecar {}", path.display())]
    LoadSidecar {
        /// The sidecar file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: SidecarError,
    },
    /// The sidecar could not be written durably.
    #[error("write sidecar {}", path.display())]
    WriteSidecar {
        /// The sidecar file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: SidecarError,
    },
    /// A sidecar key id is not written in canonical decimal (for example `"007"`).
    /// sealkv never writes one, so the file was edited by hand.
    #[error("sidecar key id {key_id:?} is not in canonical decimal form")]
    NonCanonicalKeyId {
        /// The key id as written.
        key_id: String,
    },
    /// A sidecar key has no wrapped DEK (`"wrapped": null`).
    #[error("sidecar key {key_id} has no wrapped dek")]
    WrappedKeyMissing {
        /// The key id.
        key_id: u32,
    },
    /// The KEK could not be loaded from its provider.
    #[error("load kek from the {kind} provider")]
    KekUnavailable {
        /// The provider kind (`"file"`, `"env"`).
        kind: &'static str,
        /// The provider's error.
        #[source]
        source: KekError,
    },
    /// The KEK does not unwrap a DEK: it is the wrong KEK, or the wrapped bytes were
    /// changed.
    #[error("kek does not unwrap dek {key_id}")]
    KekDoesNotUnwrap {
        /// The key id.
        key_id: u32,
        /// The unwrap error.
        #[source]
        source: KekError,
    },
    /// An active key's local epoch has reached `0xFFFF`: another process load would
    /// reuse epochs. Rotate the key from a node that can still start.
    #[error("local epoch of active key {key_id} is exhausted (0xffff); rotate the key")]
    EpochExhausted {
        /// The key id.
        key_id: u32,
    },
    /// The writer registry failed.
    #[error("writer registry")]
    Registry(#[from] RegistryStoreError),
    /// The registry row for this node's slot under a key belongs to another node
    /// with the same low 16 bits: their nonces would collide.
    #[error(
        "node id collision under key {key_id}: node16 {node_id16:#06x} belongs to node \
         {registered_full_node_id:#x}, not this node {full_node_id:#x}"
    )]
    NodeIdCollision {
        /// The key id.
        key_id: u32,
        /// The shared low 16 bits.
        node_id16: u16,
        /// The node the registry records.
        registered_full_node_id: u64,
        /// This node.
        full_node_id: u64,
    },
    /// This node's epoch under a key is not above what the registry records for it:
    /// the sidecar went backwards, most likely a restore from an old disk.
    #[error(
        "local epoch {epoch} of key {key_id} is not above the registered epoch \
         {registered}; the sidecar is older than the registry"
    )]
    EpochNotAboveRegistry {
        /// The key id.
        key_id: u32,
        /// This node's epoch for this load.
        epoch: u16,
        /// The last epoch the registry records for this node.
        registered: u16,
    },
    /// The cluster's writer registry records this node under a key at an epoch
    /// this load would reuse: at or above this load's epoch for a key it holds,
    /// or above 0 for a key it does not hold (its sidecar was lost). The data dir
    /// is an earlier copy, or was wiped.
    #[error(
        "the cluster's writer registry records this node under key {key_id} at epoch \
         {recorded}, and this data dir would seal under it at epoch {epoch}: the data dir \
         is an earlier copy of this node's, or was wiped"
    )]
    EarlierCopy {
        /// The key.
        key_id: u32,
        /// The epoch this load would seal at (0 for a key it does not hold).
        epoch: u16,
        /// The last epoch the cluster records for this node under the key.
        recorded: u16,
    },
    /// The sidecar is missing although the store holds the cluster's key state and
    /// the registry records this node above epoch 0: a new sidecar would start its
    /// epochs over.
    #[error(
        "{} is missing, but this node sealed under key {key_id} up to epoch {epoch}",
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
    /// Key state carried by a snapshot has a DEK with the bytes of another key:
    /// two key ids would share one AES key, and so its nonces.
    #[error("the DEK of key {key_id} has the same bytes as key {same_as}")]
    DuplicateDek {
        /// The key being adopted.
        key_id: u32,
        /// The key with the same bytes.
        same_as: u32,
    },
    /// No key of this purpose is active: encryption is not bootstrapped.
    #[error("no active {0} key")]
    NoActiveKey(Purpose),
    /// The (key, node, epoch) is not yet registered through Raft, so sealing under
    /// it could reuse a nonce.
    #[error("key {key_id} is not registered for local epoch {epoch}")]
    NotRegistered {
        /// The key id.
        key_id: u32,
        /// This node's epoch under the key.
        epoch: u16,
    },
    /// The nonce counter of this load reached its end; restart the node (which
    /// raises the epoch) or rotate the key.
    #[error("nonce counter of key {key_id} at epoch {epoch} is exhausted")]
    NonceExhausted {
        /// The key id.
        key_id: u32,
        /// This node's epoch under the key.
        epoch: u16,
    },
    /// A DEK could not be installed or a seal failed inside the cipher.
    #[error("cipher operation under key {key_id}")]
    Cipher {
        /// The key id.
        key_id: u32,
        /// The envelope error.
        #[source]
        source: EnvelopeError,
    },
    /// An envelope did not open: it is short, of an unknown version, names a key
    /// that is not loaded, or failed authentication. No plaintext is returned.
    #[error("open envelope: {}", source.class())]
    Integrity {
        /// The envelope error; [`KeyringError::reason`] gives its class.
        #[source]
        source: EnvelopeError,
    },
    /// An envelope opened but carries flag bits this keyring never writes (such as
    /// compression); its plaintext is not returned.
    #[error("envelope under key {key_id} has unsupported flag {flag:#04x}")]
    UnsupportedFlag {
        /// The key id.
        key_id: u32,
        /// The flag byte.
        flag: u8,
    },
    /// The operation needs bootstrapped encryption.
    #[error("encryption is not bootstrapped")]
    NotBootstrapped,
}

impl KeyringError {
    /// For an open that failed, the envelope error class (`short`, `version`,
    /// `reserved_key_id`, `unknown_key_id`, `integrity`), or `unsupported_flag`; for
    /// metrics by reason. `None` for every other error.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Integrity { source } => Some(source.class()),
            Self::UnsupportedFlag { .. } => Some("unsupported_flag"),
            _ => None,
        }
    }
}

/// Result of a keyring operation.
pub type Result<T, E = KeyringError> = std::result::Result<T, E>;

/// Builds the nonce `node_id16 ‖ local_epoch ‖ counter` (see the module docs).
pub fn nonce(full_node_id: u64, local_epoch: u16, counter: u64) -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    // Truncation is the point: nonces carry only the low 16 bits.
    let node16 = (full_node_id & 0xFFFF) as u16;
    let (node, rest) = out.split_at_mut(2);
    node.copy_from_slice(&node16.to_be_bytes());
    let (epoch, count) = rest.split_at_mut(2);
    epoch.copy_from_slice(&local_epoch.to_be_bytes());
    count.copy_from_slice(&counter.to_be_bytes());
    out
}

/// An active key whose local epoch is at or above [`EPOCH_WARNING_THRESHOLD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochWarning {
    /// The key id.
    pub key_id: u32,
    /// The key's purpose.
    pub purpose: Purpose,
    /// The epoch of this load (after the startup bump).
    pub local_epoch: u16,
}

/// The keyring's state for status pages and metrics. Holds no key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringStatus {
    /// This node's full id.
    pub node_id: u64,
    /// Whether a sidecar file exists.
    pub sidecar_present: bool,
    /// Whether any key is active.
    pub bootstrapped: bool,
    /// The Raft index the sidecar reflects (0 without a sidecar).
    pub sidecar_applied_index: u64,
    /// Whether user values are written in storage envelopes.
    pub storage_envelope_active: bool,
    /// The Raft index from which proposals are wrapped (0: none).
    pub raft_envelope_cutover_index: u64,
    /// The active storage key id.
    pub active_storage: Option<u32>,
    /// The active raft key id.
    pub active_raft: Option<u32>,
    /// Every loaded key, by ascending id.
    pub keys: Vec<KeyStatus>,
}

/// One key of a [`KeyringStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key id.
    pub key_id: u32,
    /// Its purpose.
    pub purpose: Purpose,
    /// Whether it is the active key of its purpose.
    pub active: bool,
    /// This node's epoch under it.
    pub local_epoch: u16,
    /// Whether (key, node, epoch) is registered, so the key seals.
    pub registered: bool,
    /// Envelopes sealed under it in this process load (the nonce counter).
    pub encryptions: u64,
}

/// A key to install: an unwrapped DEK with what the sidecar records of it.
pub(crate) struct NewKey {
    pub(crate) key_id: u32,
    pub(crate) purpose: Purpose,
    pub(crate) wrapped: Vec<u8>,
    pub(crate) dek: Dek,
    pub(crate) local_epoch: u16,
}

/// Where a key's epoch in this process load comes from, which decides whether it
/// may seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Raised at [`Keyring::open`]: this load's own, and sealing once the node has
    /// checked it against the registry and marked it registered.
    Raised,
    /// Installed by a committed entry in this load: the key is new, so no earlier
    /// load of any node with this `node_id16` sealed under it (the registry and the
    /// membership checks keep `node_id16` unique), and it seals at once.
    Installed,
    /// Loaded but not raised (an inactive key): an earlier load may have used this
    /// epoch, so it never seals.
    Stale,
}

/// The nonce state of one key for this process load.
struct NonceState {
    purpose: Purpose,
    local_epoch: u16,
    /// Where this load's epoch comes from.
    origin: Origin,
    counter: AtomicU64,
    registered: AtomicBool,
}

impl NonceState {
    fn new(purpose: Purpose, local_epoch: u16, origin: Origin) -> NonceState {
        NonceState {
            purpose,
            local_epoch,
            origin,
            counter: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Takes the next counter value, refusing to wrap.
    fn next_counter(&self) -> Option<u64> {
        self.counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .ok()
    }
}

/// What the keyring reads and swaps as one unit.
struct Live {
    /// The sidecar on disk; `None` when there is no file.
    sidecar: Option<Sidecar>,
    keys: Keystore,
    nonces: BTreeMap<u32, NonceState>,
}

impl Live {
    fn doc(&self) -> Sidecar {
        self.sidecar.clone().unwrap_or_default()
    }

    fn active(&self, purpose: Purpose) -> Option<u32> {
        self.sidecar.as_ref()?.active_key_id(purpose)
    }
}

/// What [`Keyring::start`] opened.
#[derive(Debug)]
pub struct Started {
    /// The keyring, with this load's raised epochs not yet written.
    pub keyring: Keyring,
    /// (key, this node, epoch) for every active key: to propose through Raft.
    pub to_register: Vec<RegistrationPayload>,
}

/// The node's live key state (see the module docs). Share it as `Arc<Keyring>`.
///
/// `Debug` prints the node id and key ids only.
pub struct Keyring {
    node_id: u64,
    sidecar_path: PathBuf,
    kek: Arc<dyn KekProvider>,
    live: RwLock<Live>,
    /// Serializes sidecar writers (the applier, [`Keyring::set_envelopes`]).
    writer: Mutex<()>,
    warnings: Vec<EpochWarning>,
    /// Whether the sidecar on disk holds this load's raised epochs; until then
    /// nothing seals under them ([`Keyring::commit_epochs`]).
    epochs_durable: AtomicBool,
    /// Per key this node does not hold, the cluster's record of it
    /// ([`Keyring::check_cluster_record`]): a key installed or adopted later
    /// takes an epoch above it.
    epoch_floors: Mutex<BTreeMap<u32, u16>>,
    #[cfg(any(test, feature = "testing"))]
    crash_point: Mutex<Option<durable::DurableStep>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("node_id", &self.node_id)
            .field("sidecar", &self.sidecar_path)
            .field("kek", &self.kek.kind())
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

/// Parses a validated sidecar's key id, refusing a non-canonical form.
fn canonical_id(id: &str) -> Result<u32> {
    match id.parse::<u32>() {
        Ok(n) if n.to_string() == id => Ok(n),
        _ => Err(KeyringError::NonCanonicalKeyId {
            key_id: id.to_string(),
        }),
    }
}

impl Keyring {
    /// Opens the keyring of the node `node_id` whose data directory is `data_dir`:
    /// the startup path of DESIGN.md §8, in this order.
    ///
    /// 1. Creates `<data_dir>/encryption` (mode 0700) if it is missing, and checks
    ///    that it can be fsynced.
    /// 2. Loads `<data_dir>/encryption/keys.json` if it exists. Without it the
    ///    keyring is empty (encryption not bootstrapped) and no file is created.
    /// 3. Loads the KEK and unwraps every key of the sidecar.
    /// 4. Refuses an active key whose local epoch is `0xFFFF`.
    /// 5. Raises the local epoch of every active key by one and writes the sidecar
    ///    durably before returning, so this process load never reuses an epoch.
    ///
    /// Active keys whose new epoch is at or above [`EPOCH_WARNING_THRESHOLD`] are
    /// listed by [`Keyring::epoch_warnings`]. No key is registered yet: call
    /// [`Keyring::check_registry`] next.
    ///
    /// # Errors
    /// [`KeyringError::CreateDir`], [`KeyringError::SidecarDirNotDurable`],
    /// [`KeyringError::LoadSidecar`], [`KeyringError::NonCanonicalKeyId`],
    /// [`KeyringError::KekUnavailable`], [`KeyringError::WrappedKeyMissing`],
    /// [`KeyringError::KekDoesNotUnwrap`], [`KeyringError::EpochExhausted`] or
    /// [`KeyringError::WriteSidecar`]. Nothing is written unless every check passed.
    pub fn open(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
    ) -> Result<Keyring> {
        let keyring = Keyring::open_deferred(data_dir, node_id, kek)?;
        keyring.commit_epochs()?;
        Ok(keyring)
    }

    /// DESIGN.md §8's startup path in one call, for a node with a writer registry:
    ///
    /// 1. [`open_deferred`](Self::open_deferred): the sidecar directory and its
    ///    fsync, the sidecar, the KEK unwrapping every key, no exhausted epoch, and
    ///    this load's raised epochs in memory;
    /// 2. when `store_holds_key_state` (the caller's store holds the cluster's key
    ///    state) and there is no sidecar, refuses if the registry records this
    ///    node above epoch 0: it sealed under keys whose sidecar is gone;
    /// 3. [`check_registry`](Self::check_registry): each raised epoch above the
    ///    registry's record, no node16 collision;
    /// 4. marks this load's epochs registered, so replayed entries seal at once;
    ///    the caller proposes [`Started::to_register`] through Raft.
    ///
    /// Nothing is written: the caller runs its own remaining checks, then
    /// [`commit_epochs`](Self::commit_epochs) before anything can seal.
    ///
    /// # Errors
    /// As [`open_deferred`](Self::open_deferred) and
    /// [`check_registry`](Self::check_registry), and
    /// [`KeyringError::SidecarMissing`].
    pub fn start(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
        registry: &dyn WriterRegistryStore,
        store_holds_key_state: bool,
    ) -> Result<Started> {
        let keyring = Keyring::open_deferred(data_dir, node_id, kek)?;
        if store_holds_key_state && !keyring.has_sidecar() {
            let owned = registry
                .list_writers()?
                .into_iter()
                .find(|(_, row)| row.full_node_id == node_id && row.last_seen_local_epoch > 0);
            if let Some((slot, row)) = owned {
                return Err(KeyringError::SidecarMissing {
                    path: keyring.sidecar_path.clone(),
                    key_id: slot.dek_id,
                    epoch: row.last_seen_local_epoch,
                });
            }
        }
        let to_register = keyring.check_registry(registry)?;
        for reg in &to_register {
            keyring.mark_registered(reg.dek_id, reg.full_node_id, reg.local_epoch);
        }
        Ok(Started {
            keyring,
            to_register,
        })
    }

    /// Steps 1 to 4 of [`open`](Self::open), and step 5 in memory only: the
    /// raised epochs are what [`check_registry`](Self::check_registry) and the
    /// registrations use, but they reach the disk only with
    /// [`commit_epochs`](Self::commit_epochs), and nothing seals under them
    /// before. A node runs every other startup check in between, so a start that
    /// fails (a check refuses, a port is taken) and is retried in a loop does not
    /// use up epochs.
    ///
    /// # Errors
    /// As [`open`](Self::open), but for [`KeyringError::WriteSidecar`].
    pub fn open_deferred(
        data_dir: impl AsRef<Path>,
        node_id: u64,
        kek: Arc<dyn KekProvider>,
    ) -> Result<Keyring> {
        let data_dir = data_dir.as_ref();
        let dir = data_dir.join(SIDECAR_DIR);
        ensure_dir(&dir)?;
        durable::check_dir_fsync(&dir).map_err(|source| KeyringError::SidecarDirNotDurable {
            dir: dir.clone(),
            source,
        })?;
        let sidecar_path = sidecar::sidecar_path(data_dir);
        let loaded = Sidecar::load(&sidecar_path).map_err(|source| KeyringError::LoadSidecar {
            path: sidecar_path.clone(),
            source,
        })?;

        let mut keys = Keystore::new();
        let mut nonces = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut raised = false;
        let sidecar = match loaded {
            None => None,
            Some(mut doc) => {
                let mut parsed = Vec::new();
                for (id, key) in doc.keys.iter().flatten() {
                    let key_id = canonical_id(id)?;
                    // A validated sidecar has a known purpose for every key.
                    let purpose = key.purpose_kind().ok_or(KeyringError::LoadSidecar {
                        path: sidecar_path.clone(),
                        source: SidecarError::UnknownPurpose {
                            key_id: id.clone(),
                            purpose: key.purpose.clone(),
                        },
                    })?;
                    parsed.push((key_id, purpose));
                }
                if !parsed.is_empty() {
                    let kek = load_kek(kek.as_ref())?;
                    for &(key_id, _) in &parsed {
                        let wrapped = doc
                            .key(key_id)
                            .and_then(|k| k.wrapped.as_deref())
                            .ok_or(KeyringError::WrappedKeyMissing { key_id })?;
                        let dek = unwrap_dek(&kek, wrapped)
                            .map_err(|source| KeyringError::KekDoesNotUnwrap { key_id, source })?;
                        keys.insert(key_id, dek)
                            .map_err(|source| KeyringError::Cipher { key_id, source })?;
                    }
                }
                let active: Vec<u32> = [Purpose::Storage, Purpose::Raft]
                    .into_iter()
                    .filter_map(|p| doc.active_key_id(p))
                    .collect();
                for &key_id in &active {
                    if doc.key(key_id).map(|k| k.local_epoch) == Some(EPOCH_EXHAUSTED) {
                        return Err(KeyringError::EpochExhausted { key_id });
                    }
                }
                if let Some(map) = doc.keys.as_mut() {
                    for &key_id in &active {
                        if let Some(key) = map.get_mut(&key_id.to_string()) {
                            // Checked against 0xFFFF above.
                            key.local_epoch = key.local_epoch.saturating_add(1);
                        }
                    }
                }
                for (key_id, purpose) in parsed {
                    let epoch = doc.key(key_id).map_or(0, |k| k.local_epoch);
                    if active.contains(&key_id) && epoch >= EPOCH_WARNING_THRESHOLD {
                        warnings.push(EpochWarning {
                            key_id,
                            purpose,
                            local_epoch: epoch,
                        });
                    }
                    let origin = if active.contains(&key_id) {
                        Origin::Raised
                    } else {
                        Origin::Stale
                    };
                    nonces.insert(key_id, NonceState::new(purpose, epoch, origin));
                }
                raised = !active.is_empty();
                Some(doc)
            }
        };

        Ok(Keyring {
            node_id,
            sidecar_path,
            kek,
            live: RwLock::new(Live {
                sidecar,
                keys,
                nonces,
            }),
            writer: Mutex::new(()),
            warnings,
            epochs_durable: AtomicBool::new(!raised),
            epoch_floors: Mutex::new(BTreeMap::new()),
            #[cfg(any(test, feature = "testing"))]
            crash_point: Mutex::new(None),
        })
    }

    /// Writes the sidecar with this load's raised epochs durably (step 5 of
    /// [`open`](Self::open)), once; sealing under them is allowed from then on.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`]; nothing seals under the raised epochs then.
    pub fn commit_epochs(&self) -> Result<()> {
        if self.epochs_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        let _writer = self.lock_writer();
        let doc = self.read().doc();
        self.write_sidecar(&doc)
    }

    fn read(&self) -> RwLockReadGuard<'_, Live> {
        // No code path panics while holding the lock, so a poisoned lock still
        // guards a consistent state.
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node's full id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The path of the sidecar file.
    pub fn sidecar_path(&self) -> &Path {
        &self.sidecar_path
    }

    /// The active keys whose epoch for this load is at or above
    /// [`EPOCH_WARNING_THRESHOLD`], as found by [`Keyring::open`]. The node logs them.
    pub fn epoch_warnings(&self) -> &[EpochWarning] {
        &self.warnings
    }

    /// The Raft index the sidecar reflects; 0 without a sidecar.
    pub fn sidecar_applied_index(&self) -> u64 {
        self.read()
            .sidecar
            .as_ref()
            .map_or(0, |s| s.raft_applied_index)
    }

    /// The sidecar document as last written (or loaded), or `None` when there is no
    /// sidecar file. It holds only wrapped keys.
    pub fn sidecar(&self) -> Option<Sidecar> {
        self.read().sidecar.clone()
    }

    /// Whether a sidecar file exists (it may still have no active key).
    pub fn has_sidecar(&self) -> bool {
        self.read().sidecar.is_some()
    }

    /// The active key id of `purpose`, if any.
    pub fn active_key_id(&self, purpose: Purpose) -> Option<u32> {
        self.read().active(purpose)
    }

    /// The loaded key ids, ascending.
    pub fn key_ids(&self) -> Vec<u32> {
        self.read().keys.ids()
    }

    /// Whether a key with this id is loaded.
    pub fn contains_key(&self, key_id: u32) -> bool {
        self.read().keys.contains(key_id)
    }

    /// This node's epoch under every loaded key, by ascending key id.
    pub fn local_epochs(&self) -> Vec<(u32, u16)> {
        self.read()
            .nonces
            .iter()
            .map(|(&id, n)| (id, n.local_epoch))
            .collect()
    }

    /// Whether user values are written in storage envelopes.
    pub fn storage_envelope_active(&self) -> bool {
        self.read()
            .sidecar
            .as_ref()
            .is_some_and(|s| s.storage_envelope_active)
    }

    /// The Raft index from which proposals are wrapped in raft envelopes (0: none).
    pub fn raft_envelope_cutover_index(&self) -> u64 {
        self.read()
            .sidecar
            .as_ref()
            .map_or(0, |s| s.raft_envelope_cutover_index)
    }

    /// Whether encryption is bootstrapped: some key is active.
    pub fn is_bootstrapped(&self) -> bool {
        let live = self.read();
        live.active(Purpose::Storage).is_some() || live.active(Purpose::Raft).is_some()
    }

    /// Everything a status page shows, without key bytes.
    pub fn status(&self) -> KeyringStatus {
        let live = self.read();
        let active_storage = live.active(Purpose::Storage);
        let active_raft = live.active(Purpose::Raft);
        let keys = live
            .nonces
            .iter()
            .map(|(&key_id, n)| KeyStatus {
                key_id,
                purpose: n.purpose,
                active: Some(key_id) == active_storage || Some(key_id) == active_raft,
                local_epoch: n.local_epoch,
                registered: n.registered.load(Ordering::Acquire),
                encryptions: n.counter.load(Ordering::Relaxed),
            })
            .collect();
        let doc = live.sidecar.as_ref();
        KeyringStatus {
            node_id: self.node_id,
            sidecar_present: doc.is_some(),
            bootstrapped: active_storage.is_some() || active_raft.is_some(),
            sidecar_applied_index: doc.map_or(0, |s| s.raft_applied_index),
            storage_envelope_active: doc.is_some_and(|s| s.storage_envelope_active),
            raft_envelope_cutover_index: doc.map_or(0, |s| s.raft_envelope_cutover_index),
            active_storage,
            active_raft,
            keys,
        }
    }

    /// Checks this load against the cluster's record of this node (the rows of
    /// the leader's writer registry naming this node: key id and last epoch),
    /// before the node applies anything:
    ///
    /// * an active key this node holds must seal at an epoch above the record;
    /// * a key it does not hold may be recorded at epoch 0 (registered when the
    ///   node was admitted or the key rotated) or 1 (registered by the bootstrap),
    ///   before the node installed it; above that the node held the key in a
    ///   load that restarted, and its sidecar is gone. The record becomes the
    ///   key's floor: when the node installs or adopts the key, it takes an
    ///   epoch above it, so a node whose data dir was wiped after one load never
    ///   reuses that load's epoch;
    /// * inactive keys never seal and are not checked.
    ///
    /// # Errors
    /// [`KeyringError::EarlierCopy`] for the first row that fails; no floor is
    /// set then.
    pub fn check_cluster_record(&self, rows: &[(u32, u16)]) -> Result<()> {
        let live = self.read();
        let active = [live.active(Purpose::Storage), live.active(Purpose::Raft)];
        let mut floors = Vec::new();
        for &(key_id, recorded) in rows {
            let epoch = match live.nonces.get(&key_id) {
                Some(_) if !active.contains(&Some(key_id)) => continue,
                Some(state) if state.local_epoch > recorded => continue,
                Some(state) => state.local_epoch,
                None if recorded <= 1 => {
                    floors.push((key_id, recorded));
                    continue;
                }
                None => 0,
            };
            return Err(KeyringError::EarlierCopy {
                key_id,
                epoch,
                recorded,
            });
        }
        self.epoch_floors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(floors);
        Ok(())
    }

    /// `new` with each key's epoch raised above its floor, if it has one.
    fn above_floors(&self, mut new: Vec<NewKey>) -> Vec<NewKey> {
        let floors = self
            .epoch_floors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &mut new {
            if let Some(&floor) = floors.get(&key.key_id) {
                key.local_epoch = key.local_epoch.max(floor.saturating_add(1));
            }
        }
        new
    }

    /// The startup registry check, run after the store is open and before anything
    /// is encrypted. For each active key, reads the row of (key, this node):
    ///
    /// * a row of another node with the same low 16 bits is
    ///   [`KeyringError::NodeIdCollision`];
    /// * a row whose last epoch is at or above this load's epoch is
    ///   [`KeyringError::EpochNotAboveRegistry`];
    /// * otherwise (no row, or a lower epoch) the registration of (key, node, epoch)
    ///   is returned: the node proposes each through Raft, and the key seals once
    ///   it is applied.
    ///
    /// A key already marked registered at its epoch is skipped. The check reads
    /// only; it changes nothing.
    ///
    /// # Errors
    /// The two above, or [`KeyringError::Registry`] when the store fails.
    pub fn check_registry(
        &self,
        registry: &dyn WriterRegistryStore,
    ) -> Result<Vec<RegistrationPayload>> {
        let live = self.read();
        let mut out = Vec::new();
        for purpose in [Purpose::Storage, Purpose::Raft] {
            let Some(key_id) = live.active(purpose) else {
                continue;
            };
            let Some(state) = live.nonces.get(&key_id) else {
                continue;
            };
            let epoch = state.local_epoch;
            let row = registry.get_writer(WriterKey::for_node(key_id, self.node_id))?;
            if let Some(row) = row {
                if row.full_node_id != self.node_id {
                    return Err(KeyringError::NodeIdCollision {
                        key_id,
                        node_id16: WriterKey::for_node(key_id, self.node_id).node_id16,
                        registered_full_node_id: row.full_node_id,
                        full_node_id: self.node_id,
                    });
                }
                let registered = state.registered.load(Ordering::Acquire);
                if registered && row.last_seen_local_epoch == epoch {
                    continue;
                }
                if row.last_seen_local_epoch >= epoch {
                    return Err(KeyringError::EpochNotAboveRegistry {
                        key_id,
                        epoch,
                        registered: row.last_seen_local_epoch,
                    });
                }
            }
            out.push(RegistrationPayload {
                dek_id: key_id,
                full_node_id: self.node_id,
                local_epoch: epoch,
            });
        }
        Ok(out)
    }

    /// The registrations this node still has to propose: (key, node, epoch) for
    /// every active key not yet registered at its epoch. After a rotation this node
    /// did not propose, the new key appears here.
    pub fn pending_registrations(&self) -> Vec<RegistrationPayload> {
        let live = self.read();
        [Purpose::Storage, Purpose::Raft]
            .into_iter()
            .filter_map(|p| live.active(p))
            .filter_map(|key_id| {
                let state = live.nonces.get(&key_id)?;
                (!state.registered.load(Ordering::Acquire)).then_some(RegistrationPayload {
                    dek_id: key_id,
                    full_node_id: self.node_id,
                    local_epoch: state.local_epoch,
                })
            })
            .collect()
    }

    /// Records that (dek_id, full_node_id, epoch) is registered. The applier calls
    /// it after a registration row (from a registration, bootstrap or rotation
    /// entry) is durable. Only this node's rows at the key's current epoch count;
    /// anything else is ignored. Returns whether the key was marked.
    pub fn mark_registered(&self, dek_id: u32, full_node_id: u64, epoch: u16) -> bool {
        if full_node_id != self.node_id {
            return false;
        }
        let live = self.read();
        match live.nonces.get(&dek_id) {
            Some(state) if state.local_epoch == epoch && state.origin != Origin::Stale => {
                state.registered.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Seals a user value under the active storage key. The AAD is the envelope
    /// header ‖ `value_header` ‖ `storage_key` (DESIGN.md §6), so the envelope opens
    /// only at the same key and version with the same header.
    ///
    /// # Errors
    /// [`KeyringError::NoActiveKey`], [`KeyringError::NotRegistered`],
    /// [`KeyringError::NonceExhausted`] or [`KeyringError::Cipher`].
    pub fn seal_storage(
        &self,
        plaintext: &[u8],
        value_header: &[u8; VALUE_HEADER_LEN],
        storage_key: &[u8],
    ) -> Result<Vec<u8>> {
        let context = storage_context(value_header, storage_key);
        self.seal(
            Purpose::Storage,
            plaintext,
            AadMode::Storage { context: &context },
        )
    }

    /// Opens a storage envelope under whatever loaded key it names, so values
    /// sealed before a rotation stay readable.
    ///
    /// # Errors
    /// [`KeyringError::Integrity`] (see [`KeyringError::reason`]) or
    /// [`KeyringError::UnsupportedFlag`]; never empty or wrong bytes.
    pub fn open_storage(
        &self,
        envelope: &[u8],
        value_header: &[u8; VALUE_HEADER_LEN],
        storage_key: &[u8],
    ) -> Result<Vec<u8>> {
        let context = storage_context(value_header, storage_key);
        self.open_envelope(envelope, AadMode::Storage { context: &context })
    }

    /// Seals a Raft payload under the active raft key, with the raft AAD
    /// (`'R'` ‖ version ‖ key id).
    ///
    /// # Errors
    /// As [`Keyring::seal_storage`].
    pub fn seal_raft(&self, payload: &[u8]) -> Result<Vec<u8>> {
        self.seal(Purpose::Raft, payload, AadMode::Raft)
    }

    /// Opens a raft envelope under whatever loaded key it names.
    ///
    /// # Errors
    /// As [`Keyring::open_storage`].
    pub fn open_raft(&self, envelope: &[u8]) -> Result<Vec<u8>> {
        self.open_envelope(envelope, AadMode::Raft)
    }

    /// Seals under the active key of `purpose` when it may seal in this load (see
    /// [`Origin`]); otherwise under the newest other key of the purpose that may.
    /// Which key sealed is in the envelope, so replicas need not agree on it.
    fn seal(&self, purpose: Purpose, plaintext: &[u8], mode: AadMode<'_>) -> Result<Vec<u8>> {
        let live = self.read();
        let active = live
            .active(purpose)
            .ok_or(KeyringError::NoActiveKey(purpose))?;
        let durable = self.epochs_durable.load(Ordering::Acquire);
        let usable = |s: &NonceState| match s.origin {
            Origin::Raised => durable && s.registered.load(Ordering::Acquire),
            Origin::Installed => true,
            Origin::Stale => false,
        };
        let chosen = match live.nonces.get(&active) {
            Some(state) if usable(state) => Some((active, state)),
            _ => live
                .nonces
                .iter()
                .rev()
                .find(|(_, s)| s.purpose == purpose && usable(s))
                .map(|(id, s)| (*id, s)),
        };
        let Some((key_id, state)) = chosen else {
            let epoch = live.nonces.get(&active).map_or(0, |s| s.local_epoch);
            return Err(KeyringError::NotRegistered {
                key_id: active,
                epoch,
            });
        };
        let epoch = state.local_epoch;
        let counter = state
            .next_counter()
            .ok_or(KeyringError::NonceExhausted { key_id, epoch })?;
        let nonce = nonce(self.node_id, epoch, counter);
        #[cfg(feature = "nonce-ledger")]
        crate::ledger::record(key_id, &nonce);
        live.keys
            .seal_envelope(0, key_id, nonce, plaintext, mode)
            .map_err(|source| KeyringError::Cipher { key_id, source })
    }

    fn open_envelope(&self, envelope: &[u8], mode: AadMode<'_>) -> Result<Vec<u8>> {
        let opened = self
            .read()
            .keys
            .open_envelope(envelope, mode)
            .map_err(|source| KeyringError::Integrity { source })?;
        if opened.flag != 0 {
            return Err(KeyringError::UnsupportedFlag {
                key_id: opened.key_id,
                flag: opened.flag,
            });
        }
        Ok(opened.plaintext)
    }

    /// Unwraps a DEK from a committed entry with the KEK.
    pub(crate) fn unwrap(&self, key_id: u32, wrapped: &[u8]) -> Result<Dek> {
        let kek = load_kek(self.kek.as_ref())?;
        unwrap_dek(&kek, wrapped)
            .map_err(|source| KeyringError::KekDoesNotUnwrap { key_id, source })
    }

    /// The id of a loaded key whose DEK has `dek`'s bytes (constant-time compare).
    pub(crate) fn holder_of(&self, dek: &Dek) -> Option<u32> {
        self.read().keys.holder_of(dek)
    }

    /// Installs `new` keys from the entry at `index`, each becoming the active key
    /// of its purpose: writes the new sidecar (with `raft_applied_index = index`)
    /// durably, then swaps the keys in. Older keys stay loaded. The caller has
    /// checked that the ids are fresh and non-zero. Nothing in memory changes when
    /// the write fails.
    pub(crate) fn install(&self, index: u64, new: Vec<NewKey>) -> Result<()> {
        let new = self.above_floors(new);
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        let created = created_now();
        let map = doc.keys.get_or_insert_with(BTreeMap::new);
        for key in &new {
            map.insert(
                key.key_id.to_string(),
                SidecarKey {
                    purpose: key.purpose.as_str().to_string(),
                    wrapped: Some(key.wrapped.clone()),
                    created: created.clone(),
                    local_epoch: key.local_epoch,
                },
            );
            match key.purpose {
                Purpose::Storage => doc.active.storage = key.key_id,
                Purpose::Raft => doc.active.raft = key.key_id,
            }
        }
        doc.raft_applied_index = index;
        self.commit_keys(doc, new)
    }

    /// Writes `doc` durably, then loads the `new` keys (sealing at once, as keys
    /// installed in this load) and swaps `doc` in. The caller holds the writer lock
    /// and has put the new keys into `doc`.
    fn commit_keys(&self, doc: Sidecar, new: Vec<NewKey>) -> Result<()> {
        // Set the key schedules up before anything is written, so a failure here
        // leaves both disk and memory as they were.
        let mut staged = Keystore::new();
        let mut states = Vec::with_capacity(new.len());
        for key in new {
            staged
                .insert(key.key_id, key.dek)
                .map_err(|source| KeyringError::Cipher {
                    key_id: key.key_id,
                    source,
                })?;
            states.push((
                key.key_id,
                NonceState::new(key.purpose, key.local_epoch, Origin::Installed),
            ));
        }
        self.write_sidecar(&doc)?;

        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        for (key_id, state) in states {
            if let Some(dek) = staged.remove(key_id) {
                // Cannot fail: the same DEK was just inserted under the same id.
                live.keys
                    .insert(key_id, dek)
                    .map_err(|source| KeyringError::Cipher { key_id, source })?;
            }
            live.nonces.insert(key_id, state);
        }
        live.sidecar = Some(doc);
        Ok(())
    }

    /// The cluster-wide part of the key state as a sidecar document (JSON): the
    /// wrapped keys, active ids, envelope switches and the index they reflect, with
    /// every `local_epoch` 0 (epochs are each node's own). The state machine keeps
    /// it in its metadata so that a Raft snapshot carries the keys to a node that
    /// never saw the entries that installed them. `None` before any key-family
    /// entry was applied.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`] if the document does not encode (it was
    /// validated when written, so this does not happen in practice).
    pub fn shared_json(&self) -> Result<Option<Vec<u8>>> {
        let Some(mut doc) = self.read().sidecar.clone() else {
            return Ok(None);
        };
        for key in doc.keys.iter_mut().flat_map(|k| k.values_mut()) {
            key.local_epoch = 0;
        }
        let text = sidecar::to_json(&doc).map_err(|source| KeyringError::WriteSidecar {
            path: self.sidecar_path.clone(),
            source,
        })?;
        Ok(Some(text.into_bytes()))
    }

    /// Adopts the cluster-wide key state `shared` (from [`Keyring::shared_json`] on
    /// another node, carried by a Raft snapshot) when it reflects more entries than
    /// this node's sidecar: keys this node lacks are unwrapped and installed
    /// (sealing at once, like keys installed by an entry), the active ids and
    /// envelope switches are taken over, and the sidecar is written durably. A new
    /// key's epoch is one above the registry's record for this node, or 0 without
    /// one. Returns whether anything changed; an older or equal state changes
    /// nothing, so adopting is idempotent.
    ///
    /// # Errors
    /// [`KeyringError::LoadSidecar`] when `shared` does not load,
    /// [`KeyringError::KekDoesNotUnwrap`], [`KeyringError::EpochExhausted`],
    /// [`KeyringError::Registry`] or [`KeyringError::WriteSidecar`].
    pub fn adopt(&self, shared: &[u8], registry: &dyn WriterRegistryStore) -> Result<bool> {
        let theirs = sidecar::from_json(shared).map_err(|source| KeyringError::LoadSidecar {
            path: PathBuf::from("<snapshot metadata>"),
            source,
        })?;
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        if theirs.raft_applied_index <= doc.raft_applied_index && self.has_sidecar() {
            return Ok(false);
        }
        let mut new = Vec::new();
        for (id, key) in theirs.keys.iter().flatten() {
            let key_id = canonical_id(id)?;
            if self.contains_key(key_id) {
                continue;
            }
            let purpose = key
                .purpose_kind()
                .ok_or(KeyringError::NonCanonicalKeyId { key_id: id.clone() })?;
            let wrapped = key
                .wrapped
                .as_deref()
                .ok_or(KeyringError::WrappedKeyMissing { key_id })?;
            let local_epoch =
                match registry.get_writer(WriterKey::for_node(key_id, self.node_id))? {
                    Some(row) if row.full_node_id == self.node_id => {
                        if row.last_seen_local_epoch == EPOCH_EXHAUSTED {
                            return Err(KeyringError::EpochExhausted { key_id });
                        }
                        row.last_seen_local_epoch + 1
                    }
                    _ => 0,
                };
            let dek = self.unwrap(key_id, wrapped)?;
            let twin = new.iter().find_map(|k: &NewKey| {
                aws_lc_rs::constant_time::verify_slices_are_equal(k.dek.as_bytes(), dek.as_bytes())
                    .ok()
                    .map(|()| k.key_id)
            });
            if let Some(same_as) = twin.or_else(|| self.holder_of(&dek)) {
                return Err(KeyringError::DuplicateDek { key_id, same_as });
            }
            new.push(NewKey {
                key_id,
                purpose,
                wrapped: wrapped.to_vec(),
                dek,
                local_epoch,
            });
            doc.keys.get_or_insert_with(BTreeMap::new).insert(
                key_id.to_string(),
                SidecarKey {
                    purpose: purpose.as_str().to_string(),
                    wrapped: Some(wrapped.to_vec()),
                    created: key.created.clone(),
                    local_epoch,
                },
            );
        }
        doc.active = theirs.active;
        doc.storage_envelope_active = theirs.storage_envelope_active;
        doc.raft_envelope_cutover_index = theirs.raft_envelope_cutover_index;
        doc.raft_applied_index = theirs.raft_applied_index;
        let new = self.above_floors(new);
        for key in &new {
            if let Some(k) = doc
                .keys
                .as_mut()
                .and_then(|m| m.get_mut(&key.key_id.to_string()))
            {
                k.local_epoch = key.local_epoch;
            }
        }
        self.commit_keys(doc, new)?;
        Ok(true)
    }

    /// Records the envelope switches applied by the entry at `index`: whether user
    /// values are written in storage envelopes, and the Raft index from which
    /// proposals are wrapped. Writes the sidecar durably with
    /// `raft_applied_index = index`. An `index` the sidecar already reflects is a
    /// replay and changes nothing.
    ///
    /// # Errors
    /// [`KeyringError::NotBootstrapped`] (no key is active, so nothing could be
    /// sealed) or [`KeyringError::WriteSidecar`].
    pub fn set_envelopes(&self, index: u64, storage: bool, raft_cutover: u64) -> Result<()> {
        let _writer = self.lock_writer();
        let mut doc = {
            let live = self.read();
            let Some(doc) = live.sidecar.as_ref() else {
                return Err(KeyringError::NotBootstrapped);
            };
            if doc.active_key_id(Purpose::Storage).is_none()
                && doc.active_key_id(Purpose::Raft).is_none()
            {
                return Err(KeyringError::NotBootstrapped);
            }
            if doc.raft_applied_index >= index {
                return Ok(());
            }
            doc.clone()
        };
        doc.storage_envelope_active = storage;
        doc.raft_envelope_cutover_index = raft_cutover;
        doc.raft_applied_index = index;
        self.write_sidecar(&doc)?;
        self.live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .sidecar = Some(doc);
        Ok(())
    }

    /// Records that the key-family entry at `index` was applied without changing
    /// keys (it was refused): writes the sidecar durably with
    /// `raft_applied_index = index`, creating a sidecar without keys when there is
    /// none. An `index` the sidecar already reflects changes nothing.
    ///
    /// # Errors
    /// [`KeyringError::WriteSidecar`].
    pub fn note_applied(&self, index: u64) -> Result<()> {
        let _writer = self.lock_writer();
        let mut doc = self.read().doc();
        if doc.raft_applied_index >= index && self.has_sidecar() {
            return Ok(());
        }
        doc.raft_applied_index = index;
        self.write_sidecar(&doc)?;
        self.live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .sidecar = Some(doc);
        Ok(())
    }

    fn write_sidecar(&self, doc: &Sidecar) -> Result<()> {
        let write_err = |source| KeyringError::WriteSidecar {
            path: self.sidecar_path.clone(),
            source,
        };
        #[cfg(any(test, feature = "testing"))]
        {
            let crash = self
                .crash_point
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(step) = crash {
                let text = sidecar::to_json(doc).map_err(write_err)?;
                durable::durable_replace_stop_after(
                    &self.sidecar_path,
                    text.as_bytes(),
                    sidecar::SIDECAR_MODE,
                    step,
                )
                .map_err(|e| write_err(SidecarError::Durable(e)))?;
                return Err(write_err(SidecarError::Durable(DurableError::Step {
                    step,
                    path: self.sidecar_path.clone(),
                    source: io::Error::other("simulated crash"),
                })));
            }
        }
        doc.write(&self.sidecar_path).map_err(write_err)?;
        // Every write carries the live epochs, this load's raised ones included.
        self.epochs_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes the next sidecar write stop right after `step` and fail, leaving the
    /// files as a crash at that moment would. Memory is left unchanged, as after a
    /// crash; drop the keyring and reopen it to model the restart.
    #[cfg(any(test, feature = "testing"))]
    pub fn crash_next_sidecar_write_after(&self, step: durable::DurableStep) {
        *self
            .crash_point
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(step);
    }

    /// Sets the nonce counter of `key_id` for this load, to exercise counter
    /// exhaustion. Returns whether the key is loaded.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_nonce_counter(&self, key_id: u32, counter: u64) -> bool {
        let live = self.read();
        match live.nonces.get(&key_id) {
            Some(state) => {
                state.counter.store(counter, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// value header ‖ storage key: the storage AAD context.
fn storage_context(value_header: &[u8; VALUE_HEADER_LEN], storage_key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(VALUE_HEADER_LEN + storage_key.len());
    context.extend_from_slice(value_header);
    context.extend_from_slice(storage_key);
    context
}

fn load_kek(provider: &dyn KekProvider) -> Result<crate::kek::Kek> {
    provider
        .load()
        .map_err(|source| KeyringError::KekUnavailable {
            kind: provider.kind(),
            source,
        })
}

/// Creates the sidecar directory with mode 0700 when it is missing, and fsyncs its
/// parent so the new entry survives a crash.
fn ensure_dir(dir: &Path) -> Result<()> {
    let create_err = |source| KeyringError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(create_err(e)),
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(SIDECAR_DIR_MODE);
    }
    builder.create(dir).map_err(create_err)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        durable::check_dir_fsync(parent).map_err(|source| KeyringError::SidecarDirNotDurable {
            dir: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The current UTC time as RFC 3339 text (`2024-05-01T12:34:56Z`), for the
/// sidecar's free-form `created` field.
fn created_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Formats seconds since the unix epoch as RFC 3339 UTC text.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days, over unsigned days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(secs), want, "{secs}");
        }
    }

    #[test]
    fn nonce_layout() {
        let n = nonce(0xdead_beef_0001_0203, 0x0405, 0x0607_0809_0a0b_0c0d);
        assert_eq!(n, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    }
}

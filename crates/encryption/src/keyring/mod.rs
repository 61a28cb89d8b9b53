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

mod error;
mod install;
mod open;
mod seal;

pub use error::KeyringError;

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

    /// The purpose of the loaded key `key_id`; `None` when it is not loaded.
    pub fn purpose_of(&self, key_id: u32) -> Option<Purpose> {
        self.read().nonces.get(&key_id).map(|n| n.purpose)
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

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
use sealkv_encryption::applier::{EnvelopeSwitch, KeyRetirement};
use sealkv_encryption::envelope::Dek;
use sealkv_encryption::kek::{KekProvider, wrap_dek};
use sealkv_encryption::keyring::{Keyring, KeyringError};
use sealkv_encryption::registry::WriterKey;
use sealkv_encryption::sidecar::sidecar_path;
use sealkv_fsmwire::{
    BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, OP_ROTATION, Purpose, RegistrationPayload,
    RotationPayload, RotationSubtag,
};
use sealkv_kv::VersionsByKey;
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

mod control;
mod entries;
mod guards;
mod task;

pub use control::{
    AdmitError, Control, ControlError, low16_collision, registrations_json, usage_from_json,
    usage_json,
};
pub use entries::{bootstrap_entry, registration_entry, rotation_entry, switch_entry};
pub use guards::{GuardError, OpenedKeyring, check_sidecar_against_log, open_keyring};
pub use task::maintain;

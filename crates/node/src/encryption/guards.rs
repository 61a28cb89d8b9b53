//! The startup guards of DESIGN.md §8 that need the store and the Raft log: each
//! refusal is its own [`GuardError`] variant naming what to fix.

use super::*;

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
    /// Encryption is enabled and no KEK is configured.
    #[error(
        "encryption is enabled but no KEK is configured: pass --kek-file PATH or set SEALKV_KEK_BASE64"
    )]
    NoKek,
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
    /// The keyring refused to open (DESIGN.md §8): its own error, and, in the
    /// message, what the operator does about it.
    #[error("{}", advice(source, path, *node_id, kind))]
    Keyring {
        /// The sidecar.
        path: PathBuf,
        /// This node.
        node_id: u64,
        /// Where the KEK comes from (`file`, `env`).
        kind: &'static str,
        /// The keyring's refusal.
        #[source]
        source: Box<KeyringError>,
    },
    /// The Raft log could not be read for the sidecar check.
    #[error("read the raft log to check the sidecar")]
    RaftLog(#[source] raft::Error),
}

/// What the operator does about a keyring refusal, naming the flag or file to fix.
fn advice(source: &KeyringError, path: &Path, node_id: u64, kind: &str) -> String {
    let sidecar = path.display();
    match source {
        KeyringError::SidecarMissing { key_id, epoch, .. } => format!(
            "{sidecar} is missing, but this node sealed under key {key_id} up to epoch {epoch}: \
             a new sidecar would reuse its nonces. Restore the sidecar that goes with this data \
             dir, or replace the node (`sealkv cluster remove-node`, then an empty data dir \
             under a new id with --join and `sealkv cluster add-node`)"
        ),
        KeyringError::KekUnavailable { .. } => {
            format!("load the KEK from the {kind} provider (--kek-file or SEALKV_KEK_BASE64)")
        }
        KeyringError::KekDoesNotUnwrap { key_id, .. } => format!(
            "the KEK ({kind}) does not unwrap key {key_id} of {sidecar}: pass the KEK this \
             cluster was bootstrapped with (--kek-file or SEALKV_KEK_BASE64)"
        ),
        KeyringError::EpochExhausted { key_id } => format!(
            "the local epoch of active key {key_id} in {sidecar} is exhausted (0xffff): rotate \
             the key from another node (sealkv encryption rotate-dek), then start this one"
        ),
        KeyringError::SidecarDirNotDurable { dir, .. } => format!(
            "the sidecar directory {} cannot be fsynced: put --data-dir on a filesystem that \
             supports directory fsync",
            dir.display()
        ),
        KeyringError::EpochNotAboveRegistry {
            key_id,
            epoch,
            registered,
        } => format!(
            "local epoch {epoch} of key {key_id} is not above the writer registry's record \
             ({registered}) for this node: {sidecar} was restored from an older copy; rebuild \
             this node's data dir from the cluster"
        ),
        KeyringError::NodeIdCollision {
            key_id,
            registered_full_node_id,
            ..
        } => format!(
            "node id {node_id:#x} shares its low 16 bits with node {registered_full_node_id:#x}, \
             registered under key {key_id}: give this node an id with different low 16 bits (--id)"
        ),
        _ => format!("open the key sidecar {sidecar}"),
    }
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
        |source| GuardError::Keyring {
            path: path.clone(),
            node_id,
            kind,
            source: Box::new(source),
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

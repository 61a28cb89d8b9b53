//! [`KeyringError`]: every way the keyring can fail.

use super::*;

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

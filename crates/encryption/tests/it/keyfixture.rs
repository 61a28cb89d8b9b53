//! Shared fixtures of the keyring and key-installing applier tests: a test KEK, DEKs
//! wrapped under it, payload builders and a node (data directory, registry, keyring,
//! applier) that can be restarted.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use sealkv_encryption::applier::Applier;
use sealkv_encryption::kek::{EnvKekProvider, Kek, KekProvider, wrap_dek_with_nonce};
use sealkv_encryption::keyring::Keyring;
use sealkv_encryption::sidecar::{ActiveKeys, Sidecar, SidecarKey, sidecar_path};
use sealkv_encryption::testing::MemoryRegistry;
use sealkv_fsmwire::{
    BootstrapPayload, Purpose, RegistrationPayload, RotationPayload, RotationSubtag,
};

/// This node: node16 0x0007.
pub const NODE: u64 = 0x0000_0001_0000_0007;
/// Another member with its own node16 (0x0009).
pub const OTHER: u64 = 0x0000_0002_0000_0009;
/// A node that shares node16 0x0007 with [`NODE`].
pub const COLLIDER: u64 = 0x0000_0003_0000_0007;

/// The KEK bytes every fixture wraps under.
pub const KEK_BYTES: [u8; 32] = [0x11; 32];

/// The test KEK.
pub fn kek() -> Kek {
    Kek::from_bytes(KEK_BYTES)
}

/// A provider of `bytes`, through the environment-variable provider.
pub fn provider(bytes: [u8; 32]) -> Arc<dyn KekProvider> {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    Arc::new(EnvKekProvider::from_base64(&text).expect("valid base64"))
}

/// The DEK bytes of key `id` (distinct per id).
pub fn dek_bytes(id: u32) -> [u8; 32] {
    std::array::from_fn(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8))
}

/// Key `id` wrapped under the test KEK. The wrap nonce is derived from the id, so
/// one key always wraps to the same bytes, as a replayed entry carries them.
pub fn wrapped(id: u32) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&id.to_be_bytes());
    wrap_dek_with_nonce(&kek(), &dek_bytes(id), nonce)
        .expect("wrap")
        .to_vec()
}

/// A registration row.
pub fn row(dek_id: u32, full_node_id: u64, local_epoch: u16) -> RegistrationPayload {
    RegistrationPayload {
        dek_id,
        full_node_id,
        local_epoch,
    }
}

/// A bootstrap of storage key `storage` and raft key `raft` with `rows`.
pub fn bootstrap(storage: u32, raft: u32, rows: Vec<RegistrationPayload>) -> BootstrapPayload {
    BootstrapPayload {
        storage_dek_id: storage,
        wrapped_storage: wrapped(storage),
        raft_dek_id: raft,
        wrapped_raft: wrapped(raft),
        batch_registry: rows,
    }
}

/// A rotate-DEK of key `id` for `purpose`, proposed by `proposer` at `epoch`.
pub fn rotation(id: u32, purpose: Purpose, proposer: u64, epoch: u16) -> RotationPayload {
    RotationPayload {
        subtag: RotationSubtag::RotateDek,
        dek_id: id,
        purpose,
        wrapped: wrapped(id),
        proposer_registration: row(id, proposer, epoch),
    }
}

/// Writes a sidecar directly: `keys` as (id, purpose, local_epoch), wrapped under
/// the test KEK.
pub fn write_sidecar(
    data_dir: &Path,
    index: u64,
    active: ActiveKeys,
    keys: &[(u32, Purpose, u16)],
) {
    std::fs::create_dir_all(data_dir.join("encryption")).expect("mkdir");
    let doc = Sidecar {
        raft_applied_index: index,
        active,
        keys: Some(
            keys.iter()
                .map(|&(id, purpose, local_epoch)| {
                    let key = SidecarKey {
                        purpose: purpose.as_str().to_string(),
                        wrapped: Some(wrapped(id)),
                        created: "2024-01-01T00:00:00Z".to_string(),
                        local_epoch,
                    };
                    (id.to_string(), key)
                })
                .collect(),
        ),
        ..Sidecar::default()
    };
    doc.write(&sidecar_path(data_dir)).expect("write sidecar");
}

/// The sidecar on disk.
pub fn sidecar_on_disk(data_dir: &Path) -> Option<Sidecar> {
    Sidecar::load(&sidecar_path(data_dir)).expect("load sidecar")
}

/// The sidecar's raw bytes, or `None` when absent.
pub fn sidecar_bytes(data_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(sidecar_path(data_dir)).ok()
}

/// One node: a data directory and a registry that survive restarts, and the
/// keyring and applier of the current process load.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub registry: Arc<MemoryRegistry>,
    pub keyring: Arc<Keyring>,
    pub applier: Applier,
}

impl Node {
    /// A fresh node with the test KEK and no sidecar.
    pub fn fresh() -> Node {
        Node::fresh_with_kek(NODE, KEK_BYTES)
    }

    /// A fresh node with id `id`, the test KEK and no sidecar.
    pub fn fresh_as(id: u64) -> Node {
        Node::fresh_with_kek(id, KEK_BYTES)
    }

    /// A fresh node with id `id`, the KEK `kek` and no sidecar.
    pub fn fresh_with_kek(id: u64, kek: [u8; 32]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        Node::load(dir, Arc::new(MemoryRegistry::new()), id, kek)
    }

    /// Opens the keyring of `id` in `dir` (a process load) and its applier.
    fn load(dir: tempfile::TempDir, registry: Arc<MemoryRegistry>, id: u64, kek: [u8; 32]) -> Node {
        let keyring = Arc::new(Keyring::open(dir.path(), id, provider(kek)).expect("open"));
        let applier = Applier::with_keyring(registry.clone(), keyring.clone());
        Node {
            dir,
            registry,
            keyring,
            applier,
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Drops the keyring and applier and opens them again, as a process restart.
    pub fn restart(self) -> Node {
        let id = self.keyring.node_id();
        let Node { dir, registry, .. } = self;
        Node::load(dir, registry, id, KEK_BYTES)
    }

    /// Applies the registrations the startup check asks for, as the node would after
    /// proposing them, so its active keys seal.
    pub fn register(&self) {
        for reg in self
            .keyring
            .check_registry(self.registry.as_ref())
            .expect("check registry")
        {
            self.applier
                .apply_registration(&reg)
                .expect("apply registration");
        }
    }
}

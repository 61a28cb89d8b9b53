//! sealkv's encryption layer: the writer registry and its applier, DEK envelopes,
//! the KEK, the key sidecar, and the keyring that holds a node's live keys.
//!
//! This crate knows nothing of RocksDB, Raft or the network: storage reaches it
//! through the [`WriterRegistryStore`] trait, which a higher layer implements.
//!
//! A node with encryption enabled opens a [`keyring::Keyring`] at startup (which
//! checks the sidecar and the KEK and raises its local epochs), checks it against
//! the registry, and shares it between an [`applier::Applier`] built with
//! [`applier::Applier::with_keyring`] (which installs keys from committed entries)
//! and the paths that seal and open values and Raft payloads.
//!
//! The whole path, from the KEK to a sealed value, with the in-memory registry of
//! the `testing` feature standing in for a durable one:
//!
//! ```
//! use std::sync::Arc;
//! use sealkv_encryption::applier::{Applied, Applier};
//! use sealkv_encryption::envelope::Dek;
//! use sealkv_encryption::kek::{EnvKekProvider, KekProvider, wrap_dek};
//! use sealkv_encryption::keyring::{Keyring, VALUE_HEADER_LEN};
//! use sealkv_encryption::testing::MemoryRegistry;
//! use sealkv_fsmwire::{BootstrapPayload, OP_BOOTSTRAP, RegistrationPayload};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let node = 7;
//! let kek = Arc::new(EnvKekProvider::from_base64(
//!     "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
//! )?);
//! // Startup: the keyring (no sidecar yet, so no keys) and the applier over the
//! // writer registry.
//! let keyring = Arc::new(Keyring::open(dir.path(), node, kek.clone())?);
//! let applier = Applier::with_keyring(Arc::new(MemoryRegistry::new()), Arc::clone(&keyring));
//!
//! // A bootstrap entry as a leader proposes it: two fresh DEKs wrapped under the
//! // KEK, and every member registered under both at epoch 1.
//! let wrapped = || -> Result<Vec<u8>, Box<dyn std::error::Error>> {
//!     Ok(wrap_dek(&kek.load()?, Dek::generate()?.as_bytes())?.to_vec())
//! };
//! let row = |dek_id| RegistrationPayload { dek_id, full_node_id: node, local_epoch: 1 };
//! let boot = BootstrapPayload {
//!     storage_dek_id: 1,
//!     wrapped_storage: wrapped()?,
//!     raft_dek_id: 2,
//!     wrapped_raft: wrapped()?,
//!     batch_registry: vec![row(1), row(2)],
//! };
//! // Applied at its Raft index: the keys are unwrapped, the sidecar written
//! // durably, the registry rows inserted.
//! let applied = applier.apply(1, OP_BOOTSTRAP, &boot.encode()?)?;
//! assert_eq!(applied, Applied::Bootstrapped { storage_key_id: 1, raft_key_id: 2 });
//!
//! // The new keys seal at once: a value bound to its header and logical key, and
//! // a Raft payload.
//! let header = [0u8; VALUE_HEADER_LEN];
//! let sealed = keyring.seal_storage(b"hello", &header, b"greeting")?;
//! assert_eq!(keyring.open_storage(&sealed, &header, b"greeting")?, b"hello");
//! assert!(keyring.open_storage(&sealed, &header, b"another key").is_err());
//! let entry = keyring.seal_raft(b"a kv entry")?;
//! assert_eq!(keyring.open_raft(&entry)?, b"a kv entry");
//! # Ok(()) }
//! ```

#![deny(clippy::indexing_slicing, clippy::panic)]

/// A fail point (tikv's fail-rs) named `$name`, compiled in only with the test-only
/// `failpoints` feature; in any other build it is nothing. `$on_return` is what the
/// `return` action makes the enclosing function return (an injected I/O error);
/// `panic` models a crash at that point.
macro_rules! fail_point {
    ($name:literal, $on_return:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $on_return);
    };
}

pub mod applier;
pub mod durable;
pub mod envelope;
pub mod kek;
pub mod keyring;
#[cfg(feature = "nonce-ledger")]
pub mod ledger;
pub mod registry;
pub mod retire;
pub mod sidecar;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::{RegistryStoreError, WriterRegistryStore};

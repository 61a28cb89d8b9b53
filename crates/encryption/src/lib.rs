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

#![deny(clippy::indexing_slicing, clippy::panic)]

pub mod applier;
pub mod durable;
pub mod envelope;
pub mod kek;
pub mod keyring;
#[cfg(feature = "nonce-ledger")]
pub mod ledger;
pub mod registry;
pub mod sidecar;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::{RegistryStoreError, WriterRegistryStore};

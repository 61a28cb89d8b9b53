//! sealkv's encryption layer: the writer registry and its applier, DEK envelopes,
//! the KEK, and the key sidecar.
//!
//! This crate knows nothing of RocksDB, Raft or the network: storage reaches it
//! through the [`WriterRegistryStore`] trait, which a higher layer implements.

#![deny(clippy::indexing_slicing, clippy::panic)]

pub mod applier;
pub mod durable;
pub mod envelope;
pub mod kek;
pub mod keyring;
pub mod registry;
pub mod sidecar;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::{RegistryStoreError, WriterRegistryStore};

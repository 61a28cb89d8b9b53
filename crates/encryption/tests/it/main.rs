//! Integration tests of sealkv-encryption: golden vectors and applier behaviour.

mod applier;
mod envelope;
mod install;
mod kek;
mod keyfixture;
mod keyring;
mod registry;
mod retire;
mod sidecar;
mod vectors;

//! Integration tests of sealkv-encryption: golden vectors and applier behaviour.

mod applier;
mod envelope;
mod kek;
mod registry;
mod sidecar;
mod vectors;

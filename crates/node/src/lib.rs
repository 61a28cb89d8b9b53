//! The library half of `sealkv-node`: the Raft driver and transport, the network
//! front ends a node runs and its startup sequence, kept apart from the binary so
//! integration tests can drive them directly.
//!
//! * [`startup`]: the startup sequence (store → registry glue → applier → state
//!   machine → Raft → listeners).
//! * [`consensus`]: the raft-rs driver and the peer transport.
//! * [`resp`]: the Redis-protocol (RESP2) data API, served against the
//!   [`resp::Backend`] seam; [`backend`] implements it over Raft.
//! * [`admin`]: the admin HTTP endpoint; [`admin_client`] is the CLI's client of it.
//! * [`metrics`]: the Prometheus metrics.
//! * [`tls`]: `--certs-dir`: the certificates `sealkv certs` makes, the node id a
//!   certificate binds, and the rustls configurations of the three ports.
//! * [`encryption`]: encryption configuration, the startup guards, and the control
//!   plane's proposals (bootstrap, rotation, registration, envelope switches).
//! * `failpoints` (test-only feature `failpoints`): fail points armed from
//!   `FAILPOINTS` and the admin endpoint, and raw proposals that skip admission.

pub mod admin;
pub mod admin_client;
pub mod backend;
pub mod consensus;
pub mod encryption;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod maintenance;
pub mod metrics;
pub mod resp;
pub mod startup;
pub mod tls;

pub use sealkv_kv::error_chain;

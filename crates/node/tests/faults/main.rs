//! Proof under fault: clusters of real `sealkv` processes on loopback, their Raft
//! links through proxies the tests cut, delay and heal, nodes killed, paused and
//! restarted, and clocks skewed, under clients that record every operation.
//!
//! * `kills`: no acknowledged write is lost across kill cycles of single nodes (the
//!   leader included) and of the whole cluster, with encryption on.
//! * `partitions`: histories of GET, SET, SET NX and INCR under leader kills,
//!   pauses, minority and majority partitions and one-way cuts are linearizable.
//! * `reads`: an old leader cut off by a partition never serves a stale
//!   linearizable read; `READONLY` reads may be stale.
//! * `skew`: expiry is decided by the proposer's clock, so replicas agree.
//!
//! The bounded versions run in `cargo xtask ci`; `cargo xtask faults` runs them
//! longer (`SEALKV_FAULTS_*` variables, see `scale.rs`) and prints one summary.

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

mod cluster;
mod kills;
mod partitions;
mod reads;
mod scale;
mod skew;

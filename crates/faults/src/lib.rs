//! Fault injection for tests of sealkv clusters made of real processes on loopback.
//!
//! * [`proxy`]: a TCP proxy per directed Raft link (node *i* dials *j* through its own
//!   proxy), which the test cuts, delays or heals. This kernel has no `tc netem`, so
//!   partitions and delay come from here.
//! * [`process`]: SIGKILL, SIGSTOP and SIGCONT of a node process, and per-node wall
//!   clock offsets through Debian's `libfaketime`.
//! * [`workload`]: Redis clients that record a Jepsen-style history of every
//!   operation (invoke, then ok, fail or unknown) for the linearizability checker in
//!   `sealkv-linearizability`.
//!
//! The crate knows nothing of how a node is started: the tests own the processes and
//! hand this crate their addresses and process ids.
//!
//! **Invariant:** a fault is always reversible (heal, resume) and the harness never
//! sleeps to wait for an effect: it changes the world and the tests wait on
//! conditions.

#![allow(clippy::expect_used)]

pub mod process;
pub mod proxy;
pub mod workload;

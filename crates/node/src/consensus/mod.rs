//! Consensus: the raft-rs driver that owns the Raft node and the state machine, and
//! the TCP transport that carries Raft messages between nodes. A peer's message
//! passes the transport's connection rules and the driver's checks
//! ([`DropReason`]) before raft-rs sees it.
//!
//! The driver runs on its own OS thread (RocksDB's synced writes block), takes
//! requests over a bounded channel and publishes its status; everything async talks
//! to it through a cloneable [`RaftHandle`].

mod context;
mod driver;
mod peers;
pub mod snapstream;
mod throttle;
pub mod transport;

pub use context::ProposalContext;
pub(crate) use driver::MAX_SIZE_PER_MSG;
pub use driver::{
    DriverConfig, DriverError, DropReason, NodeHalt, ProposeError, RaftHandle, RaftStatus,
    RaftTuning, Role, recover_pending_snapshot, single_change, spawn,
};
pub use peers::PeerBook;

use raft::prelude::Message;

/// Where the driver sends Raft messages: the transport, or a test double.
pub trait Outbox: Send + Sync + 'static {
    /// Queues messages for their destinations. Never blocks: a message that cannot be
    /// queued is dropped (Raft retransmits) and its peer reported unreachable.
    fn send(&self, messages: Vec<Message>);
    /// Sets (or, with `None`, forgets) the Raft address of a peer.
    fn set_peer(&self, id: u64, addr: Option<String>);
}

//! The sealkv state machine: applies committed Raft entries to a
//! [`KvStore`](sealkv_store::KvStore), with the encryption applier wired in.
//!
//! Build it from a store, install the encryption applier, and feed it committed
//! entries in order. It never opens a socket and knows nothing of the Raft library
//! that drives it:
//!
//! ```
//! use std::sync::Arc;
//! use sealkv_encryption::applier::Applier;
//! use sealkv_kv::{Command, Entry, KvFsm, KvRequest, Outcome, PutCondition, Reply, SizeLimits};
//! use sealkv_store::{RocksStore, RocksStoreOptions, RocksWriterRegistry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(RocksStore::open(dir.path(), RocksStoreOptions::default())?);
//! let registry = RocksWriterRegistry::from_store(&store)?;
//! let mut fsm = KvFsm::new(store)?.with_encryption(Applier::new(Arc::new(registry)));
//!
//! // A front end checks a request against its size limits, then proposes the
//! // entry; here it is "committed" at once.
//! let now = 1_700_000_000_000;
//! let put = |condition| Command::Put {
//!     key: b"greeting".to_vec(),
//!     value: b"hello".to_vec(),
//!     expire_at_ms: 0,
//!     condition,
//! };
//! let set = KvRequest { issued_at_ms: now, commands: vec![put(PutCondition::Always)] };
//! SizeLimits::default().check(&set)?;
//! let data = set.to_entry()?;
//! let out = fsm.apply(&[Entry { index: 1, data: &data }])?;
//! assert_eq!(out[0].outcome, Outcome::Kv(vec![Reply::Ok]));
//! assert_eq!(fsm.get(b"greeting", now)?, Some(b"hello".to_vec()));
//!
//! // SET NX on a live key does nothing: a reply, not an error.
//! let nx = KvRequest { issued_at_ms: now, commands: vec![put(PutCondition::IfAbsent)] };
//! let data = nx.to_entry()?;
//! let out = fsm.apply(&[Entry { index: 2, data: &data }])?;
//! assert_eq!(out[0].outcome, Outcome::Kv(vec![Reply::Nil]));
//!
//! // The empty entry a new Raft leader appends is a no-op that still counts.
//! let out = fsm.apply(&[Entry { index: 3, data: &[] }])?;
//! assert_eq!(out[0].outcome, Outcome::Noop);
//! assert_eq!(fsm.applied_index(), 3);
//! # Ok(()) }
//! ```
//!
//! A halt is not an error to log and move past: see [`Halt`].

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

mod command;
mod fsm;
pub mod usage;

pub use command::{
    COMMAND_VERSION, Command, CommandError, ENTRY_HEADROOM, KvRequest, MAX_ENTRY_BYTES,
    Maintenance, OP_KV, OP_KV_BATCH, OP_RESERVED_HLC, PutCondition, SizeError, SizeLimits,
    WRAP_OVERHEAD, WRAPPED, WrapError,
};
pub use fsm::{
    COMPACT_REQUEST_META_KEY, ENCRYPTION_META_KEY, Entry, EntryOutcome, GC_HORIZON_META_KEY, Halt,
    HaltCause, Halted, KvFsm, LiveValue, Outcome, REWRITE_REQUEST_META_KEY, ReadError, Reader,
    Refusal, Reply, ResealError, SnapshotData, UserError, envelope_key_id, error_chain, gc_horizon,
    meta_u64,
};
pub use usage::{VersionsByKey, versions_by_key};

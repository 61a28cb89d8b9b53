//! The sealkv state machine: applies committed Raft entries to a
//! [`KvStore`](sealkv_store::KvStore), with the encryption applier wired in.
//!
//! Build it from a store, install the encryption applier, and feed it committed
//! entries in order. It never opens a socket and knows nothing of the Raft library
//! that drives it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use sealkv_encryption::applier::Applier;
//! use sealkv_kv::{Command, Entry, KvFsm, KvRequest, PutCondition, Reply};
//! use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, RocksWriterRegistry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn KvStore> = Arc::new(RocksStore::open("/tmp/fsm", RocksStoreOptions::default())?);
//! let registry = RocksWriterRegistry::from_store(store.as_ref())?;
//! let mut fsm = KvFsm::new(store)?.with_encryption(Applier::new(Arc::new(registry)));
//!
//! let set = KvRequest {
//!     issued_at_ms: 1_700_000_000_000,
//!     commands: vec![Command::Put { key: b"k".to_vec(), value: b"v".to_vec(), expire_at_ms: 0, condition: PutCondition::Always }],
//! };
//! let data = set.to_entry()?;
//! let outcomes = fsm.apply(&[Entry { index: fsm.applied_index() + 1, data: &data }])?;
//! assert_eq!(fsm.get(b"k", 1_700_000_000_000)?, Some(b"v".to_vec()));
//! # let _ = (outcomes, Reply::Ok); Ok(()) }
//! ```
//!
//! A halt is not an error to log and move past: see [`Halt`].

#![deny(clippy::indexing_slicing, clippy::panic)]

mod command;
mod fsm;

pub use command::{
    COMMAND_VERSION, Command, CommandError, ENTRY_HEADROOM, KvRequest, MAX_ENTRY_BYTES, OP_KV,
    OP_KV_BATCH, OP_RESERVED_HLC, PutCondition, SizeError, SizeLimits, WRAP_OVERHEAD, WRAPPED,
    WrapError,
};
pub use fsm::{
    ENCRYPTION_META_KEY, ERR_NOT_WRAPPED, Entry, EntryOutcome, Halt, HaltCause, Halted, KvFsm,
    LiveValue, Outcome, ReadError, Reader, Refusal, Reply, error_chain,
};

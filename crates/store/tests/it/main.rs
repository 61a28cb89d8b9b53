//! Integration tests of sealkv-store: the KvStore and WriterRegistryStore conformance
//! suites over RocksDB (and in-memory), the registry glue, durability across a
//! reopen, and the Raft log storage with its state-machine snapshots.

mod gc;
mod glue;
mod mvcc;
mod raftlog;
mod stores;

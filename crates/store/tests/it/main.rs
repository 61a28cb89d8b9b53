//! Integration tests of sealkv-store: the KvStore and WriterRegistryStore conformance
//! suites over RocksDB (and in-memory), the registry glue, and durability across a
//! reopen.

mod glue;
mod mvcc;
mod stores;

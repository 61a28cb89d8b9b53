//! Integration tests of sealkv-kv: entry dispatch, replies, halts and the persisted
//! applied index, over RocksDB in a temporary directory.

mod commands;
mod dispatch;
mod encrypted;
mod maintenance;
mod sizes;
mod support;

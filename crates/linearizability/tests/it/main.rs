//! Integration tests of sealkv-linearizability: fixtures, the brute-force oracle,
//! the recorder, and generated histories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fixtures;
mod generated;
mod generic;
mod oracle;
mod recorder;
mod sim;
